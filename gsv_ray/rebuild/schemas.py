"""Model key/shape schemas shipped with the package, for upstream's own default configs.

A rebuild needs each target model's key -> shape schema. Computing one means building the model on
the meta device, which costs ~1-2 s of lazy imports and first meta ops in a fresh process — most
of a first ``gsv-ray rebuild``. So the schemas of the models real files resolve to (SoVITS G of
v1/v2/v2Pro/v2ProPlus at upstream's widths, their discriminators, GPT v1/v2, the semantic
extractor) ship as ``gsv_ray/resources/schemas/<name>-<digest>.json``; only unusual widths or
configs fall back to the meta build and the per-machine cache.

``digest`` is :func:`shipped_digest` of the target's fingerprint. It does not include the package
version (a release need not regenerate them); instead ``tests/rebuild/test_schemas_shipped.py``
rebuilds every shipped schema from the model code and requires byte-identical files, so a model
change that forgets to regenerate fails CI. Regenerate with::

    python -m gsv_ray.rebuild.schemas          # rewrite gsv_ray/resources/schemas/
    python -m gsv_ray.rebuild.schemas --check  # exit 1 if any file is stale, missing or extra

This module imports no model code at import time: ``targets`` looks schemas up through it.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from gsv_ray.resources import S1_VERSIONS, VITS_VERSIONS

if TYPE_CHECKING:
    from gsv_ray.rebuild.targets import Target

PACKAGE = "gsv_ray.resources"
SUBDIR = "schemas"


def shipped_digest(fingerprint: str) -> str:
    """The shipped file's digest: sha256 of the fingerprint alone (not the package version)."""
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:24]


def shipped_name(name: str, fingerprint: str) -> str:
    return f"{name}-{shipped_digest(fingerprint)}.json"


def shipped_shapes(name: str, fingerprint: str) -> dict[str, torch.Size] | None:
    """The shipped schema for this target, or None when none ships for its fingerprint."""
    try:
        text = resources.files(PACKAGE).joinpath(SUBDIR).joinpath(shipped_name(name, fingerprint)).read_text(
            encoding="utf-8")
        data = json.loads(text)
    except (OSError, ValueError):
        return None
    if data.get("fingerprint") != fingerprint:  # a digest collision, or a hand-edited file: never trust it
        return None
    return {k: torch.Size(v) for k, v in data["shapes"].items()}


def render(name: str, fingerprint: str, shapes: dict[str, torch.Size]) -> str:
    """A shipped file's exact text: one key per line, so a model change shows as a readable diff."""
    lines = [f"  {json.dumps(k)}: {json.dumps(list(v))}" for k, v in shapes.items()]
    return (f'{{\n "name": {json.dumps(name)},\n "fingerprint": {json.dumps(fingerprint)},\n "shapes": {{\n'
            + ",\n".join(lines) + "\n }\n}\n")


def shipped_targets() -> list[Target]:
    """The targets whose schemas ship: what full-size files at upstream's defaults resolve to.

    Goes through the same code paths as ``core.rebuild`` — the packaged default configs
    (``sovits_s2_config`` / ``gpt_s1_config``), widths read off full-size tensors with
    ``inferred_widths`` (here the default model's own state dict, shapes only, on meta) — so the
    fingerprints are the ones real files produce.
    """
    from gsv_ray.models.sovits import SoVITSGenerator
    from gsv_ray.rebuild import targets as T

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


def default_dir() -> Path:
    return Path(str(resources.files(PACKAGE).joinpath(SUBDIR)))


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
    problems += [f"stale (the model code gives other keys/shapes): {n}" for n in sorted(present & set(files))
                 if (directory / n).read_text(encoding="utf-8") != files[n]]
    return problems


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m gsv_ray.rebuild.schemas",
                                 description="Regenerate the model key/shape schemas shipped in gsv_ray/resources/schemas.")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: the package's own folder)")
    ap.add_argument("--check", action="store_true", help="only check; exit 1 when anything is out of date")
    args = ap.parse_args(argv)
    if args.check:
        problems = check(args.dir)
        for p in problems:
            print(p)
        print("shipped schemas are current" if not problems else f"{len(problems)} problem(s): regenerate with "
              "'python -m gsv_ray.rebuild.schemas'")
        return 1 if problems else 0
    n, written = write(args.dir)
    print(f"{n} schemas in {args.dir or default_dir()}; {len(written)} (re)written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
