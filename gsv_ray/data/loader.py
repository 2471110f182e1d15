"""The input pipeline: global batches, split per process and accumulation step, loaded by a DataLoader.

Data order depends on the *global* batch only (``batch_size x processes x grad_accum``): a bucket
sampler draws global batches; each is split into one micro-batch per (process, accumulation step).
So ``--grad-accum 2 --batch-size 2`` updates on exactly the utterances ``--batch-size 4`` does, and
N workers on exactly those one process does. Each micro-batch carries what its step needs to
weigh its loss against the whole global batch (:class:`MicroBatch`).

Loading runs in ``torch.utils.data.DataLoader`` worker processes (prefetch, pinned memory on CUDA,
persistent workers): each DataLoader item is one micro-batch, already collated. The order of
micro-batches is decided in the training process (the plan), so a resume mid-epoch feeds exactly
the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["MicroBatch", "StepPlan", "split_global_batch", "MicroBatchSource", "PlannedSampler", "make_loader",
           "default_loader_workers", "available_cpus"]


@dataclass(frozen=True)
class MicroBatch:
    """One process's share of one optimizer step.

    ``step_items``: utterances in the whole global batch; ``context``: what the stage needs from the
    global batch (GPT: padded lengths; SoVITS: its spectrogram frames), computed from metadata so no
    process has to talk to another.
    """

    indices: tuple[int, ...]
    step_items: int
    context: Any = None

    @property
    def share(self) -> float:
        """This micro-batch's fraction of the global batch's utterances."""
        return len(self.indices) / self.step_items


def split_global_batch(batch: Sequence[int], world: int, accum: int, rank: int) -> list[list[int]] | None:
    """This rank's ``accum`` micro-batches of a global batch: positions ``rank, rank + world, ...``,
    cut into ``accum`` near-equal runs. None when the batch is too small to give every process and
    accumulation step an utterance (the last, short batch of an epoch)."""
    if len(batch) < world * accum:
        return None
    mine = list(batch[rank::world])
    q, r = divmod(len(mine), accum)
    out, start = [], 0
    for i in range(accum):
        size = q + (1 if i < r else 0)
        out.append(mine[start:start + size])
        start += size
    return out


class StepPlan:
    """Optimizer steps of an epoch for one rank: ``steps(epoch)[k]`` is step k's micro-batches.

    ``sampler``: a batch sampler yielding *global* batches (``set_epoch`` aware);
    ``context(global_indices)``: the stage's per-step context (see :class:`MicroBatch`).
    """

    def __init__(self, sampler: Any, *, world: int, rank: int, accum: int,
                 context: Callable[[list[int]], Any] = lambda idx: None):
        self.sampler, self.world, self.rank, self.accum, self.context = sampler, world, rank, accum, context

    def steps(self, epoch: int) -> list[list[MicroBatch]]:
        self.sampler.set_epoch(epoch)
        out = []
        for batch in self.sampler:
            parts = split_global_batch(batch, self.world, self.accum, self.rank)
            if parts is None:
                continue
            ctx = self.context(list(batch))
            out.append([MicroBatch(tuple(p), len(batch), ctx) for p in parts])
        return out

    def steps_per_epoch(self) -> int:
        """Full optimizer steps per epoch (the schedule's epoch length); the same for every epoch."""
        return len(self.steps(0))


class MicroBatchSource(Dataset):
    """A map-style dataset whose keys are :class:`MicroBatch` es and whose items are collated
    batches: ``make_batch([dataset[i] for i in mb.indices], mb)``. Runs in loader workers."""

    def __init__(self, dataset: Dataset, make_batch: Callable[[list, MicroBatch], Any]):
        self.dataset, self.make_batch = dataset, make_batch

    def __getitem__(self, mb: MicroBatch) -> tuple[Any, MicroBatch]:
        return self.make_batch([self.dataset[i] for i in mb.indices], mb), mb

    def __len__(self) -> int:  # not used for sampling (PlannedSampler decides); DataLoader asks
        return len(self.dataset)


class PlannedSampler(Sampler[MicroBatch]):
    """Yields the plan's micro-batches epoch after epoch, from a start position, without end: one
    DataLoader iterator then serves the whole run, and its workers keep prefetching across epoch
    boundaries (re-creating the iterator each epoch stalled the first batches of every epoch).
    Iterated in the training process, lazily, as the workers ask for more."""

    def __init__(self, plan: StepPlan | None = None, *, epoch: int = 0, skip_steps: int = 0):
        self.plan, self.epoch, self.skip_steps = plan, epoch, skip_steps

    def start(self, plan: StepPlan, *, epoch: int, skip_steps: int = 0) -> None:
        """Where the next iterator begins: ``epoch``, after its first ``skip_steps`` steps (resume)."""
        self.plan, self.epoch, self.skip_steps = plan, epoch, skip_steps

    def __iter__(self) -> Iterator[MicroBatch]:
        plan, epoch, skip = self.plan, self.epoch, self.skip_steps
        if plan is None:
            return
        while True:
            for step in plan.steps(epoch)[skip:]:
                yield from step
            epoch, skip = epoch + 1, 0

def _passthrough(x: Any) -> Any:
    return x


def _seed_worker(worker_id: int) -> None:
    """Python's and numpy's RNGs from the seed torch gave this worker (deterministic per worker)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass


def make_loader(source: MicroBatchSource, sampler: PlannedSampler, *, num_workers: int, seed: int,
                pin_memory: bool = False, prefetch_factor: int = 2) -> DataLoader:
    """The DataLoader over planned micro-batches. Its own seeded generator: creating an iterator
    then never draws from the global RNG (which drives dropout), so resume stays bit-identical."""
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor, "worker_init_fn": _seed_worker}
    return DataLoader(source, sampler=sampler, batch_size=None, collate_fn=_passthrough, num_workers=num_workers,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed), **extra)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: what a cgroup/taskset/Ray gives it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_loader_workers(cpus: float, processes_on_node: int = 1) -> int:
    """Loader workers per training process: the CPUs that process has, minus one for itself, at most
    8; none with a single CPU (loading then runs in the training process, as before)."""
    per_process = int(cpus // max(1, processes_on_node))
    return max(0, min(8, per_process - 1))
