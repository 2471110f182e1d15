"""Resumable checkpoints: our own state format (:mod:`gsv_ray.train.state`), written atomically.

A checkpoint holds the models, optimizers, schedulers, loss scaler, every process's RNG states and
the position in training (step, epoch, batch in the epoch), plus a manifest of sizes and checksums.
It is written into a temp dir and renamed, so a run killed at any moment leaves only complete
checkpoints under ``step_<N>`` names; the last K are kept. On resume a checkpoint is verified
against its manifest before anything is loaded, and ``latest`` falls back to the newest one that
verifies, saying which were skipped and why.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from gsv_ray.atomic import commit_dir, remove_dir
from gsv_ray.errors import GsvError
from gsv_ray.train import state as state_io

_NAME = re.compile(r"^step_(\d{8})$")


def step_of(name: str) -> int | None:
    """The step of a ``step_<N>`` checkpoint folder name (None for any other name)."""
    m = _NAME.match(name)
    return int(m.group(1)) if m else None


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


@dataclass(frozen=True)
class Resume:
    """The checkpoint to resume from and the newer ones skipped (path, why)."""

    path: Path
    skipped: tuple[tuple[Path, str], ...] = ()


def checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders under ``root`` (complete by name; verified on use), oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)), key=lambda p: p.name)


def _newest_good(candidates: list[Path], where: Path) -> Resume:
    skipped = []
    for p in reversed(candidates):
        why = state_io.problem(p)
        if why is None:
            return Resume(p, tuple(skipped))
        skipped.append((p, why))
    detail = "; ".join(f"{p.name}: {why}" for p, why in skipped)
    raise GsvError(
        f"no usable checkpoint to resume from ({detail})", path=where, fix="drop --resume to start a new run"
    )


def resolve_resume(resume: str | None, root: Path) -> Resume | None:
    if resume is None:
        return None
    if resume == "latest":
        found = checkpoints(root)
        if not found:
            raise GsvError("no checkpoint to resume from", path=root, fix="drop --resume to start a new run")
        return _newest_good(found, root)
    p = Path(resume)
    if p.is_dir() and (_NAME.match(p.name) or state_io.is_state_dir(p)):
        why = state_io.problem(p)
        if why is not None:
            raise GsvError(
                f"not a usable checkpoint: {why}",
                path=p,
                fix="pass the run directory to resume from its newest complete checkpoint",
            )
        return Resume(p)
    for candidate in (p / "checkpoints", p):  # a run directory, or its checkpoints folder
        if p.is_dir() and checkpoints(candidate):
            return _newest_good(checkpoints(candidate), candidate)
    raise GsvError(
        "not a gsv-ray checkpoint or run directory", path=p, fix="pass runs/<name> or runs/<name>/checkpoints/step_<N>"
    )


def is_state_dir(p: Path) -> bool:
    """A directory holding a checkpoint's state (e.g. a Ray Train checkpoint restored elsewhere)."""
    return state_io.is_state_dir(p)


def save(accelerator, root: Path, step: int, keep_last: int, *, models, optimizers, state: dict) -> Path:
    """Every process calls this (each saves its RNG states); the main process renames and prunes."""
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".*_step_*"):  # leftovers of a run killed mid-save or mid-prune
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        state_io.save(accelerator, tmp, models=models, optimizers=optimizers, state=state)
    except BaseException:  # a full disk, say: leave no partial checkpoint behind, keep the complete ones
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        commit_dir(tmp, final, replace=True)
        for old in checkpoints(root)[:-keep_last]:
            remove_dir(old)
    accelerator.wait_for_everyone()
    return final


class LocalCheckpoints:
    """Where a local run keeps its checkpoints: ``<run>/checkpoints/step_<N>``, the last
    ``keep_last`` kept. (On Ray Train the worker hands each checkpoint to Ray instead:
    :class:`gsv_ray.distributed.worker.RayCheckpoints`, same ``save`` signature.)"""

    def __init__(self, root: Path, keep_last: int):
        self.root, self.keep_last = Path(root), keep_last

    def save(self, accelerator, step: int, *, models, optimizers, state: dict, metrics: dict) -> Path:
        return save(accelerator, self.root, step, self.keep_last, models=models, optimizers=optimizers, state=state)

    def stop_requested(self) -> bool:
        """Whoever runs the training may end it after a checkpoint (a tune scheduler does); not here."""
        return False
