"""Resumable checkpoints with Accelerate's ``save_state`` / ``load_state``.

Accelerate saves the prepared models and optimizers, the grad scaler, every process's RNG states
and whatever we register (our schedulers and :class:`TrainState`: step, epoch, position in the
epoch). We add atomicity — the state is written to a temp dir and renamed, so a run killed at any
moment leaves only complete checkpoints under ``step_<N>`` names — and keep the last K.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator

from gsv_ray.errors import GsvError

_NAME = re.compile(r"^step_(\d{8})$")


@dataclass
class TrainState:
    """Where training is: optimizer steps taken, epoch index, batches consumed in that epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, d: dict[str, int]) -> None:
        self.step, self.epoch, self.batch_in_epoch = int(d["step"]), int(d["epoch"]), int(d["batch_in_epoch"])


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)), key=lambda p: p.name)


def resolve_resume(resume: str | None, root: Path) -> Path | None:
    if resume is None:
        return None
    if resume == "latest":
        found = checkpoints(root)
        if not found:
            raise GsvError("no checkpoint to resume from", path=root, fix="drop --resume to start a new run")
        return found[-1]
    p = Path(resume)
    if p.is_dir() and (_NAME.match(p.name) or is_state_dir(p)):
        return p
    if p.is_dir() and checkpoints(p / "checkpoints"):  # a run directory
        return checkpoints(p / "checkpoints")[-1]
    if p.is_dir() and checkpoints(p):
        return checkpoints(p)[-1]
    raise GsvError("not a gsv-ray checkpoint or run directory", path=p,
                   fix="pass runs/<name> or runs/<name>/checkpoints/step_<N>")


def _delete(path: Path) -> None:
    """Take ``path`` out of the ``step_<N>`` namespace first (atomic rename), then delete it: a
    kill during the deletion leaves a hidden leftover, never a half-deleted checkpoint."""
    hidden = path.with_name(f".del_{path.name}")
    shutil.rmtree(hidden, ignore_errors=True)
    os.replace(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def is_state_dir(p: Path) -> bool:
    """A directory holding Accelerate state (e.g. a Ray Train checkpoint restored elsewhere)."""
    return (p / "model.safetensors").is_file() and any(p.glob("random_states_*.pkl"))


def save(accelerator: Accelerator, root: Path, step: int, keep_last: int) -> Path:
    """Every process calls this (Accelerate saves per-process RNG); the main process renames and prunes."""
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".*_step_*"):  # leftovers of a run killed mid-save or mid-prune
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            _delete(final)
        os.replace(tmp, final)
        for old in checkpoints(root)[:-keep_last]:
            _delete(old)
    accelerator.wait_for_everyone()
    return final
