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
change that forgets to regenerate fails CI. Regenerate with :mod:`gsv_ray.rebuild.schemagen`::

    python -m gsv_ray.rebuild.schemagen          # rewrite gsv_ray/resources/schemas/
    python -m gsv_ray.rebuild.schemagen --check  # exit 1 if any file is stale, missing or extra

This module is the runtime lookup only (``targets`` reads schemas through it) and imports no model
code; the generator, which builds the targets, lives in ``schemagen`` (no import circle).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import torch

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
        text = (
            resources.files(PACKAGE)
            .joinpath(SUBDIR)
            .joinpath(shipped_name(name, fingerprint))
            .read_text(encoding="utf-8")
        )
        data = json.loads(text)
    except (OSError, ValueError):
        return None
    if data.get("fingerprint") != fingerprint:  # a digest collision, or a hand-edited file: never trust it
        return None
    return {k: torch.Size(v) for k, v in data["shapes"].items()}


def render(name: str, fingerprint: str, shapes: dict[str, torch.Size]) -> str:
    """A shipped file's exact text: one key per line, so a model change shows as a readable diff."""
    lines = [f"  {json.dumps(k)}: {json.dumps(list(v))}" for k, v in shapes.items()]
    return (
        f'{{\n "name": {json.dumps(name)},\n "fingerprint": {json.dumps(fingerprint)},\n "shapes": {{\n'
        + ",\n".join(lines)
        + "\n }\n}\n"
    )


def default_dir() -> Path:
    """The package's own folder of shipped schemas."""
    return Path(str(resources.files(PACKAGE).joinpath(SUBDIR)))
