"""The training runner's Protocols (gsv_ray/train/protocols.py) match what every launcher passes it:
each declared method exists on each implementation and accepts the same arguments, by the same
names and kinds (extra ones only with defaults)."""

from __future__ import annotations

import inspect

import pytest

from gsv_ray.console import ProgressDisplay
from gsv_ray.distributed.relay import RelayedProgress
from gsv_ray.distributed.worker import RayCheckpoints
from gsv_ray.train.checkpoint import LocalCheckpoints
from gsv_ray.train.loop import TrainingRun, _NoDisplay
from gsv_ray.train.protocols import CheckpointStore, Progress, RunTracking, ShowsValidation
from gsv_ray.train.tracking import Tracking


def _mismatches(protocol: type, impl: type) -> list[str]:
    """What in ``impl`` does not accept the calls ``protocol`` declares."""
    out = []
    for name, declared in vars(protocol).items():
        if name.startswith("_") or not callable(declared):
            continue
        method = getattr(impl, name, None)
        if method is None:
            out.append(f"{impl.__name__}.{name} is missing")
            continue
        want = list(inspect.signature(declared).parameters.values())[1:]
        have = dict(list(inspect.signature(method).parameters.items())[1:])
        for p in want:
            got = have.pop(p.name, None)
            positional = (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            if got is None or (got.kind != p.kind and not (p.kind in positional and got.kind in positional)):
                out.append(f"{impl.__name__}.{name}: parameter {p.name} ({p.kind.description}) not accepted")
            elif p.default is not p.empty and got.default is got.empty:
                out.append(f"{impl.__name__}.{name}: parameter {p.name} needs a default")
        out += [
            f"{impl.__name__}.{name}: extra parameter {q} has no default"
            for q, g in have.items()
            if g.default is g.empty and g.kind not in (g.VAR_POSITIONAL, g.VAR_KEYWORD)
        ]
    return out


@pytest.mark.parametrize(
    "protocol, impl",
    [
        (CheckpointStore, LocalCheckpoints),
        (CheckpointStore, RayCheckpoints),
        (RunTracking, Tracking),
        (Progress, ProgressDisplay),
        (Progress, RelayedProgress),
        (Progress, _NoDisplay),
        (ShowsValidation, RelayedProgress),
    ],
    ids=lambda x: x.__name__,
)
def test_each_launcher_object_matches_its_protocol(protocol, impl):
    assert _mismatches(protocol, impl) == []


def test_a_mismatch_is_seen():
    class Store:
        def save(self, accelerator, step, models, optimizers, state, metrics): ...

    found = _mismatches(CheckpointStore, Store)
    assert "Store.stop_requested is missing" in found
    assert "Store.save: parameter models (keyword-only) not accepted" in found


def test_the_runner_has_its_phases():
    """The phases the docs name (docs/design/architecture.md, "The training runner")."""
    for phase in ("setup", "resume", "announce", "train", "step", "validate", "checkpoint", "export", "finish"):
        assert callable(getattr(TrainingRun, phase)), phase
