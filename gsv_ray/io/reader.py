"""``read(path)``: one call that safely loads any GPT-SoVITS file and says what it is."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gsv_ray.errors import GsvError
from gsv_ray.io.identify import Identity, NotGsv, identify
from gsv_ray.io.safeload import Loaded, safe_load
from gsv_ray.io.writers import PAD_KEY
from gsv_ray.manifest import sha256_file

_STAGE_NAMES = {"sovits": "SoVITS (stage 2, .pth)", "gpt": "GPT (stage 1, .ckpt)"}


@dataclass
class GsvFile:
    """A GPT-SoVITS file, read safely.

    ``state_dict`` holds the model weights as stored (dtype and key names unchanged, except that
    a DDP/compile wrapper prefix shared by all keys is stripped); for plain zips the tensors are
    memory-mapped. ``config`` is plain Python (HParams converted to dicts).
    """

    path: Path
    kind: str
    stage: str
    versions: list[str]
    header: str
    state_dict: dict[str, torch.Tensor]
    config: dict | None
    config_type: str | None
    info: str | None
    epoch: int | None
    step: int | None
    lora_rank: int | None
    pickle_globals: list[str]
    evidence: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # other top-level entries (optimizer, ...)
    nonfinite: dict[str, int] = field(default_factory=dict)  # weight key -> how many NaN/inf values it holds

    @property
    def version(self) -> str | None:
        return self.versions[0] if len(self.versions) == 1 else None

    def sha256(self) -> str:
        return sha256_file(self.path)


def count_nonfinite(state_dict: dict[str, torch.Tensor]) -> dict[str, int]:
    """Floating tensors holding NaN or inf: key -> how many such values, in the file's order.

    One vectorised ``isfinite(...).all()`` per tensor (a full-size file: ~0.1-0.3 s, pages in the mmap
    that training reads anyway); counted only for the rare bad ones."""
    out: dict[str, int] = {}
    for k, t in state_dict.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            out[k] = int((~torch.isfinite(t)).sum())
    return out


#: How many keys a non-finite warning or error names (then "...").
_NAMED_KEYS = 3


def nonfinite_problem(f: GsvFile) -> str | None:
    """``"12 non-finite values in 3 tensors (NaN/inf): a, b, c, ..."``, or None when every weight is finite."""
    if not f.nonfinite:
        return None
    n, keys = sum(f.nonfinite.values()), list(f.nonfinite)
    named = ", ".join(keys[:_NAMED_KEYS]) + (", ..." if len(keys) > _NAMED_KEYS else "")
    return (
        f"{n} non-finite value{'s' if n != 1 else ''} in {len(keys)} tensor{'s' if len(keys) != 1 else ''} "
        f"(NaN/inf): {named}"
    )


def check_finite(f: GsvFile, role: str = "the file") -> None:
    """Refuse weights holding NaN/inf: training from them diverges at once (and blamed the learning rate)."""
    problem = nonfinite_problem(f)
    if problem is not None:
        raise GsvError(
            f"{problem}; training or using {role} would diverge",
            path=f.path,
            fix="use another export or an earlier checkpoint of this voice (the weights are damaged)",
        )


def parse_info(info: Any) -> tuple[int | None, int | None]:
    """(epoch, step) from upstream's info strings: "4epoch_40iteration" or "GPT-e15"."""
    if not isinstance(info, str):
        return None, None
    if m := re.fullmatch(r"(\d+)epoch_(\d+)iteration", info.strip()):
        return int(m.group(1)), int(m.group(2))
    if m := re.fullmatch(r"GPT-e(\d+)", info.strip()):
        return int(m.group(1)), None
    return None, None


def read(path: str | Path, *, expect_stage: str | None = None) -> GsvFile:
    """Safely load and identify a GPT-SoVITS file.

    ``expect_stage`` ("sovits" or "gpt") turns a file of the other stage into a clear error.
    Raises :class:`GsvError` (one line: file, problem, fix) on any bad input.
    """
    path = Path(path)
    loaded = safe_load(path)
    ident, sd = _identify(loaded, path, expect_stage)
    top = loaded.obj if isinstance(loaded.obj, dict) else {}
    config, info, epoch, step = _training_info(ident.kind, top)
    lora_rank = top.get("lora_rank")
    lora_rank = int(lora_rank) if isinstance(lora_rank, (int, str)) and str(lora_rank).isdigit() else None
    skip = {"weight", "model", "state_dict", "config", "info", "lora_rank", PAD_KEY}  # PAD_KEY: size padding
    extra = {k: v for k, v in top.items() if k not in skip}
    nonfinite = count_nonfinite(sd)
    warnings = list(ident.warnings)
    f = GsvFile(
        path=path,
        kind=ident.kind,
        stage=ident.stage,
        versions=ident.versions,
        header=loaded.header,
        state_dict=sd,
        config=config,
        config_type=loaded.config_type,
        info=info,
        epoch=epoch,
        step=step,
        lora_rank=lora_rank,
        pickle_globals=loaded.pickle_globals,
        evidence=ident.evidence,
        warnings=warnings,
        extra=extra,
        nonfinite=nonfinite,
    )
    if nonfinite:
        f.warnings.append(f"{nonfinite_problem(f)}: training from it diverges; gsv-ray refuses it as an input")
    return f


def _identify(loaded: Loaded, path: Path, expect_stage: str | None) -> tuple[Identity, dict[str, torch.Tensor]]:
    """What the loaded file is and its state dict; :class:`GsvError` when it is no GPT-SoVITS file or
    not of ``expect_stage``."""
    try:
        ident, sd = identify(loaded.obj, loaded.header)
    except NotGsv as e:
        raise GsvError(
            f"not a GPT-SoVITS weights file: {e}",
            path=path,
            fix="pass a SoVITS .pth or GPT .ckpt written by GPT-SoVITS or gsv-ray",
        ) from None
    if expect_stage and ident.stage != expect_stage:
        other = "gpt" if expect_stage == "sovits" else "sovits"
        raise GsvError(
            f"this is a {_STAGE_NAMES[ident.stage]} file ({ident.kind}), but a {_STAGE_NAMES[expect_stage]} "
            "file is expected here",
            path=path,
            fix=f"pass the {_STAGE_NAMES[expect_stage]} file instead, or use --stage {other}",
        )
    return ident, sd


def _training_info(kind: str, top: dict) -> tuple[dict | None, str | None, int | None, int | None]:
    """``(config, info, epoch, step)`` a file of ``kind`` records at its top level ``top``; each
    ``None`` when the file does not say."""
    config = top.get("config") if isinstance(top.get("config"), dict) else None
    if kind == "gpt-lightning" and isinstance(top.get("hyper_parameters"), dict):
        config = top["hyper_parameters"].get("config", config)
    info = top.get("info") if isinstance(top.get("info"), str) else None
    epoch, step = parse_info(info)
    if kind == "gpt-lightning":
        epoch = top.get("epoch") if isinstance(top.get("epoch"), int) else epoch
        step = top.get("global_step") if isinstance(top.get("global_step"), int) else step
    elif kind in ("sovits-train-g", "sovits-train-d") and isinstance(top.get("iteration"), int):
        epoch = top["iteration"]  # upstream stores the epoch under "iteration"
    return config, info, epoch, step
