"""ASHA that writes down the trials it stops.

Tune ends a trial stopped by the scheduler and a trial of an interrupted search the same way
(TERMINATED, short of its budget), so a trial's fate (early-stopped or interrupted) needs a record
of the scheduler's own decisions. A module-level class: Tune pickles its scheduler with the
experiment state (``Tuner.restore``).
"""

from __future__ import annotations

from pathlib import Path

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler


class RecordingASHA(AsyncHyperBandScheduler):
    """``AsyncHyperBandScheduler`` that appends the id of every trial it stops to ``record``."""

    def __init__(self, *args, record: str | Path, **kwargs):
        super().__init__(*args, **kwargs)
        self.record = str(record)

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP:
            with open(self.record, "a") as f:
                f.write(f"{trial.trial_id}\n")
        return decision


def stopped_trials(record: str | Path) -> set[str]:
    """The trial ids a :class:`RecordingASHA` stopped (none when it never stopped one)."""
    try:
        return set(Path(record).read_text().split())
    except OSError:
        return set()
