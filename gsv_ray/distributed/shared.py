"""Sharing one rebuilt state with every worker (and every Tune trial) without copies.

The driver puts the fp32 weights into the Ray object store once, as numpy arrays: workers on the
same node then map the same shared memory (``ray.get`` of numpy is zero-copy, read-only), and
``torch.from_numpy`` wraps it without copying (measured: 1-6 ms and no private memory
per consumer, vs ~0.9 s and a full copy for torch tensors through the object store). Models copy
the values into their own parameters on ``load_state_dict``; nobody writes to the shared arrays.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from gsv_ray.rebuild import RebuildReport, Rebuilt


@dataclass
class SharedRebuild:
    """What travels to workers: a reference to the weights plus the small metadata, by value."""

    weights_ref: Any  # ray.ObjectRef of {target: {key: np.ndarray}}
    stage: str
    version: str | None
    task: str
    kind: str
    config: dict[str, Any]
    report: dict[str, Any]


def share(rebuilt: Rebuilt) -> SharedRebuild:
    import ray

    arrays = {
        name: {k: v.detach().cpu().contiguous().numpy() for k, v in sd.items()} for name, sd in rebuilt.weights.items()
    }
    return SharedRebuild(
        weights_ref=ray.put(arrays),
        stage=rebuilt.stage,
        version=rebuilt.version,
        task=rebuilt.task,
        kind=rebuilt.kind,
        config=rebuilt.config,
        report=rebuilt.report.to_json(),
    )


def materialise(shared: SharedRebuild) -> Rebuilt:
    """Worker side: tensors that alias the object store's shared memory (read-only; never mutate)."""
    import ray

    arrays = ray.get(shared.weights_ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "non-writable array": intended, the values are only read
        weights = {name: {k: torch.from_numpy(a) for k, a in sd.items()} for name, sd in arrays.items()}
    return Rebuilt(
        stage=shared.stage,
        version=shared.version,
        task=shared.task,
        kind=shared.kind,
        weights=weights,
        config=shared.config,
        report=RebuildReport.from_json(shared.report),
    )


def nbytes(rebuilt: Rebuilt) -> int:
    return sum(t.numel() * t.element_size() for sd in rebuilt.weights.values() for t in sd.values())


__all__ = ["SharedRebuild", "materialise", "nbytes", "share"]
