"""What a search varies per trial, typed: the one home of the keys of a trial's Tune config."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: the keys of a trial's Tune config (each the name of the TrainConfig field it sets)
LR_SCALE = "lr_scale"
WARMUP_STEPS = "warmup_steps"


@dataclass(frozen=True)
class TrialParams:
    """A trial's point in the search space: the TrainConfig fields it sets (:meth:`as_dict`)."""

    lr_scale: float
    warmup_steps: int

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> TrialParams:
        """Read from a trial's Tune config (KeyError when a key is missing)."""
        return cls(lr_scale=float(config[LR_SCALE]), warmup_steps=int(config[WARMUP_STEPS]))

    def as_dict(self) -> dict[str, Any]:
        """``{"lr_scale": ..., "warmup_steps": ...}``: what ``dataclasses.replace(train_config, **...)`` takes."""
        return dataclasses.asdict(self)


#: the TrainConfig fields a trial sets
PARAM_FIELDS = tuple(f.name for f in dataclasses.fields(TrialParams))
assert PARAM_FIELDS == (LR_SCALE, WARMUP_STEPS)
