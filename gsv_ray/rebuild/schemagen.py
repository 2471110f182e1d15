"""Regenerate (or check) the model key/shape schemas shipped in ``gsv_ray/resources/schemas``
(see :mod:`gsv_ray.rebuild.schemas`, the runtime lookup)::

    python -m gsv_ray.rebuild.schemagen          # rewrite gsv_ray/resources/schemas/
    python -m gsv_ray.rebuild.schemagen --check  # exit 1 if any file is stale, missing or extra

Apart from the lookup so that the lookup imports no targets and no model code: ``targets`` ->
``schemas`` only, ``schemagen`` -> both.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gsv_ray.models.sovits import SoVITSGenerator
from gsv_ray.rebuild import targets as T
from gsv_ray.rebuild.schemas import default_dir, render, shipped_name
from gsv_ray.rebuild.targets import Target
from gsv_ray.resources import S1_VERSIONS, VITS_VERSIONS


def shipped_targets() -> list[Target]:
    """The targets whose schemas ship: what full-size files at upstream's defaults resolve to.

    Goes through the same code paths as ``core.rebuild`` — the packaged default configs
    (``sovits_s2_config`` / ``gpt_s1_config``), widths read off full-size tensors with
    ``inferred_widths`` (here the default model's own state dict, shapes only, on meta) — so the
    fingerprints are the ones real files produce.
    """
    out: list[Target] = []
    for version in VITS_VERSIONS:
        cfg = T.sovits_s2_config(version)
        with torch.device("meta"):
            full_size = SoVITSGenerator(T.sovits_model_config(cfg, {})).state_dict()
        out.append(T.generator_target(T.sovits_model_config(cfg, T.inferred_widths(full_size)), 0))
        out.append(T.discriminator_target(version, 1, 0))  # v1/v2: 6 sub-discriminators, Pro: 8
    out.append(T.semantic_target())
    for version in S1_VERSIONS:
        out.append(T.gpt_target(T.gpt_s1_config(version), 0))
    return out


def expected_files() -> dict[str, str]:
    """File name -> exact text of every shipped schema, computed from the model code now."""
    files: dict[str, str] = {}
    for t in shipped_targets():
        files[shipped_name(t.name, t.fingerprint)] = render(t.name, t.fingerprint, t.meta_shapes())
    return files


def write(directory: Path | None = None) -> tuple[int, list[Path]]:
    """(Re)write every shipped schema into ``directory`` and delete stale ones there.

    Returns how many schemas ship and the files that changed."""
    directory = Path(directory) if directory is not None else default_dir()
    directory.mkdir(parents=True, exist_ok=True)
    files = expected_files()
    for old in directory.glob("*.json"):
        if old.name not in files:
            old.unlink()
    written = []
    for fname, text in files.items():
        p = directory / fname
        if not p.is_file() or p.read_text(encoding="utf-8") != text:
            p.write_text(text, encoding="utf-8")
            written.append(p)
    return len(files), written


def check(directory: Path | None = None) -> list[str]:
    """Problems with the shipped schemas (stale, missing, extra); empty when all are current."""
    directory = Path(directory) if directory is not None else default_dir()
    files = expected_files()
    present = {p.name for p in directory.glob("*.json")} if directory.is_dir() else set()
    problems = [f"missing: {n}" for n in sorted(set(files) - present)]
    problems += [f"extra (no default target has this fingerprint): {n}" for n in sorted(present - set(files))]
    problems += [
        f"stale (the model code gives other keys/shapes): {n}"
        for n in sorted(present & set(files))
        if (directory / n).read_text(encoding="utf-8") != files[n]
    ]
    return problems


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m gsv_ray.rebuild.schemagen",
        description="Regenerate the model key/shape schemas shipped in gsv_ray/resources/schemas.",
    )
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: the package's own folder)")
    ap.add_argument("--check", action="store_true", help="only check; exit 1 when anything is out of date")
    args = ap.parse_args(argv)
    if args.check:
        problems = check(args.dir)
        for p in problems:
            print(p)
        print(
            "shipped schemas are current"
            if not problems
            else f"{len(problems)} problem(s): regenerate with 'python -m gsv_ray.rebuild.schemagen'"
        )
        return 1 if problems else 0
    n, written = write(args.dir)
    print(f"{n} schemas in {args.dir or default_dir()}; {len(written)} (re)written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
