"""The ``gsv-ray`` command. Thin by design: parse arguments, call library functions, print.

Every user error is a :class:`gsv_ray.errors.GsvError`: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence

from gsv_ray import __version__
from gsv_ray.errors import GsvError


def _cmd_inspect(args: argparse.Namespace) -> int:
    from gsv_ray.io.inspect import describe, render

    results = [describe(p, expect_stage=args.stage) for p in args.files]
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
    else:
        from rich.console import Console

        console = Console()
        for d in results:
            console.print(render(d))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gsv-ray",
        description="Continue training GPT-SoVITS voices from exported weights.",
    )
    p.add_argument("--version", action="version", version=f"gsv-ray {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ins = sub.add_parser("inspect", help="identify GPT-SoVITS files: kind, version and evidence, info, sha256")
    ins.add_argument("files", nargs="+", metavar="FILE", help="SoVITS .pth or GPT .ckpt files")
    ins.add_argument("--json", action="store_true", help="one JSON object per file (a list for several)")
    ins.add_argument("--stage", choices=["sovits", "gpt"], help="fail unless every file is of this stage")
    ins.set_defaults(func=_cmd_inspect)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # library deprecation chatter is not for users
            return args.func(args)
    except GsvError as e:
        print(f"gsv-ray: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gsv-ray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
