"""What the training loop (:class:`gsv_ray.train.loop.TrainingRun`) asks of the objects its
launcher hands it: a checkpoint store, a tracker and a progress display.

Each launcher passes its own: a local run ``LocalCheckpoints`` (:mod:`gsv_ray.train.checkpoint`),
``Tracking`` (:mod:`gsv_ray.train.tracking`) and ``console.ProgressDisplay``; a Ray worker
``RayCheckpoints`` (Ray Train's report) and ``distributed.relay.RelayedProgress`` (lines to the driver's
console). Only the methods the loop calls are declared; the loop never closes the tracker (its
launcher does, with the run's exit code).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

    from gsv_ray.rebuild import Rebuilt


@runtime_checkable
class CheckpointStore(Protocol):
    """Writes a resumable checkpoint of the run's state at a step; says whether whoever runs the
    training asked it to end there (a Tune scheduler stopping a trial)."""

    def save(
        self,
        accelerator: Accelerator,
        step: int,
        *,
        models: Sequence[torch.nn.Module],
        optimizers: Sequence[torch.optim.Optimizer],
        state: dict[str, Any],
        metrics: dict[str, float],
    ) -> Path:
        """Every process calls it at the same step; returns where the checkpoint is (a path or URI)."""
        ...

    def stop_requested(self) -> bool:
        """Whether the run should export and finish after the checkpoint just saved."""
        ...


@runtime_checkable
class RunTracking(Protocol):
    """metrics.jsonl and the W&B run, on the main process only."""

    def begin(self, config: dict[str, Any], rebuilt: Rebuilt, *, resume_step: int = 0) -> None:
        """Open the run with its full resolved config; rows past ``resume_step`` are another attempt's."""
        ...

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """``train/...`` and ``val/...`` metrics at an optimizer step."""
        ...

    def log_audio(self, step: int, items: list) -> None:
        """Validation samples: ``(name, waveform, rate)`` or ``(name, mel)``."""
        ...

    def log_exports(self, paths: list[Path], *, stage: str, version: str | None, step: int) -> None:
        """The run's exported files."""
        ...

    def set_summary(self, values: dict[str, Any]) -> None:
        """The run's final values (its fate, its steps)."""
        ...


@runtime_checkable
class Progress(Protocol):
    """The progress display of the main process."""

    def start(self, total: int, done: int = 0) -> None:
        """``total`` optimizer steps, ``done`` of them already (a resumed run)."""
        ...

    def update(self, step: int, metrics: dict[str, float]) -> None:
        """After each optimizer step."""
        ...

    def close(self) -> None:
        """At the end of training, also when it fails."""
        ...


@runtime_checkable
class ShowsValidation(Protocol):
    """A :class:`Progress` that also shows each validation's loss (optional: the loop checks)."""

    def validated(self, step: int, loss: float | None) -> None:
        """After a validation at ``step``."""
        ...
