"""ASHA that writes down the trials it stops, and stops them gracefully.

Tune ends a trial stopped by the scheduler and a trial of an interrupted search the same way
(TERMINATED, short of its budget), so a trial's fate (early-stopped or interrupted) needs a record
of the scheduler's own decisions: the id of every stopped trial is appended to a file in -o.

Tune stops a trial by killing its actor, and with it the trial's Ray Train workers; a W&B offline
run killed that way keeps nothing (its records reach disk only at ``finish()``: measured with
wandb 0.31, SIGKILL after 10 logged rows left 0 records). So our ASHA does not ask Tune to stop a
trial: it posts every decision on a ``StopBoard`` (a named Ray actor, ``gsv_ray.distributed.stopboard``), answers Tune
"continue", and the trial, which reads the decision right after each report, ends itself like a
finished one: it exports, logs its export as an artifact and finishes its W&B run (real runtime,
the same config keys, audio samples). ASHA's bookkeeping is unchanged: the decision is ASHA's own,
taken at the same rung; later results of a trial that is winding down are not fed to it.

Module-level classes: Tune pickles its scheduler with the experiment state (``Tuner.restore``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from gsv_ray.distributed import StopBoard, board_name, start_board

__all__ = ["RecordingASHA", "StopBoard", "board_name", "start_board", "stopped_trials"]


class RecordingASHA(AsyncHyperBandScheduler):
    """``AsyncHyperBandScheduler`` that appends the id of every trial it stops to ``record`` and,
    with a ``board`` (a :class:`StopBoard` name), lets the trial stop itself (see the module doc)."""

    def __init__(self, *args, record: str | Path, board: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.record = str(record)
        self.board = board
        self.winding_down: set[str] = set()

    def on_trial_result(self, tune_controller, trial, result):
        if trial.trial_id in self.winding_down:  # stopped already: its last reports are not ASHA's
            return TrialScheduler.CONTINUE
        decision = super().on_trial_result(tune_controller, trial, result)
        stop = decision == TrialScheduler.STOP
        if stop:
            with open(self.record, "a") as f:
                f.write(f"{trial.trial_id}\n")
        if self.board is None or "step" not in result:
            return decision
        self._board().decide.remote(trial.trial_id, int(result["step"]), stop)
        if stop:
            self.winding_down.add(trial.trial_id)
            return TrialScheduler.CONTINUE  # the trial ends itself after reading the decision
        return decision

    def _board(self) -> Any:
        import ray

        return ray.get_actor(self.board)


def stopped_trials(record: str | Path) -> set[str]:
    """The trial ids a :class:`RecordingASHA` stopped (none when it never stopped one)."""
    try:
        return set(Path(record).read_text().split())
    except OSError:
        return set()
