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


def _cmd_rebuild(args: argparse.Namespace) -> int:
    from rich.console import Console

    from gsv_ray.rebuild import export_result, rebuild_cached

    result = rebuild_cached(args.init, base_g=args.base, base_d=args.base_d, stage=args.stage, version=args.version,
                            task=args.task, cache_root=args.cache)
    out = export_result(result, args.output) if args.output else result.path
    if args.json:
        print(json.dumps({"path": str(out), "cache_hit": result.cache_hit, **result.report.to_json()}, indent=1))
        return 0
    console = Console()
    console.print(result.report.render())
    console.print(f"{'reused' if result.cache_hit else 'wrote'} {out}")
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

    rb = sub.add_parser(
        "rebuild", help="rebuild complete fp32 weights from any GPT-SoVITS file, with every key's fate reported",
        description="Rebuild complete, training-ready weights from OLD (an export, a base, a checkpoint). "
                    "Results are content-addressed under the cache (GSV_RAY_CACHE, default ~/.cache/gsv-ray): "
                    "the same inputs are rebuilt once.")
    rb.add_argument("init", metavar="OLD", help="the SoVITS .pth or GPT .ckpt to continue from")
    rb.add_argument("--base", metavar="G", help="same-version base generator (or GPT) to fill what OLD lacks")
    rb.add_argument("--base-d", metavar="D", help="same-version discriminator (SoVITS train task)")
    rb.add_argument("--stage", choices=["sovits", "gpt"], help="fail unless OLD is of this stage")
    rb.add_argument("--version", help="pin the version when the file allows several (v3/v4)")
    rb.add_argument("--task", choices=["train", "semantic", "infer"], default="train",
                    help="what the weights are for; decides which missing keys matter (default: train)")
    rb.add_argument("-o", "--output", metavar="DIR", help="also place the result at DIR (a new directory)")
    rb.add_argument("--cache", metavar="DIR", help="cache root (default: $GSV_RAY_CACHE or ~/.cache/gsv-ray)")
    rb.add_argument("--json", action="store_true", help="print report.json (plus path, cache_hit) instead of tables")
    rb.set_defaults(func=_cmd_rebuild)
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
