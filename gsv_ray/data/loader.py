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

import dataclasses
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = [
    "MicroBatch",
    "StepPlan",
    "Cadence",
    "UPSTREAM_GPT_CADENCE",
    "split_global_batch",
    "MicroBatchSource",
    "PlannedSampler",
    "make_loader",
    "default_loader_workers",
    "available_cpus",
]


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
    ends_step: bool = True  # the last micro-batch of its optimizer step (the loop reads up to it)

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
        out.append(mine[start : start + size])
        start += size
    return out


@dataclass(frozen=True)
class Cadence:
    """Several global batches per optimizer step, their gradients summed, counted as upstream's GPT
    counts them: a step follows the batch whose in-epoch index ``i`` (0-based) has ``i > 0`` and
    ``i % every == 0`` (so an epoch's first step takes ``every + 1`` batches, later ones ``every``);
    the counter restarts every epoch and batches after an epoch's last step are carried into the next
    epoch's first step (nothing clears them)."""

    every: int = 4

    def group(self, batches: list[list[MicroBatch]]) -> tuple[list[list[MicroBatch]], list[MicroBatch]]:
        """(the epoch's steps, the micro-batches left after its last step)."""
        steps: list[list[MicroBatch]] = []
        pending: list[MicroBatch] = []
        for i, parts in enumerate(batches):
            pending += parts
            if i > 0 and i % self.every == 0:
                steps.append(pending)
                pending = []
        return steps, pending


#: Upstream's stage 1 (``t2s_lightning_module.training_step``): one step per 4 batches, 5 for the first.
UPSTREAM_GPT_CADENCE = Cadence(every=4)


class StepPlan:
    """Optimizer steps of an epoch for one rank: ``steps(epoch)[k]`` is step k's micro-batches.

    ``sampler``: a batch sampler yielding *global* batches (``set_epoch`` aware);
    ``context(global_indices)``: the stage's per-step context (see :class:`MicroBatch`);
    ``cadence``: None for one global batch per step, else how several are summed into one step.
    """

    def __init__(
        self,
        sampler: Any,
        *,
        world: int,
        rank: int,
        accum: int,
        context: Callable[[list[int]], Any] = lambda idx: None,
        cadence: Cadence | None = None,
    ):
        self.sampler, self.world, self.rank, self.accum, self.context = sampler, world, rank, accum, context
        self.cadence = cadence

    def batches(self, epoch: int) -> list[list[MicroBatch]]:
        """This rank's micro-batches of each global batch of ``epoch`` (``accum`` per batch)."""
        self.sampler.set_epoch(epoch)
        out = []
        for batch in self.sampler:
            parts = split_global_batch(batch, self.world, self.accum, self.rank)
            if parts is None:
                continue
            ctx = self.context(list(batch))
            out.append([MicroBatch(tuple(p), len(batch), ctx) for p in parts])
        return out

    def steps(self, epoch: int) -> list[list[MicroBatch]]:
        if self.cadence is None:
            steps = self.batches(epoch)
        else:
            steps, _ = self.cadence.group(self.batches(epoch))
            if epoch > 0 and steps:  # what the previous epoch left after its last step
                _, carried = self.cadence.group(self.batches(epoch - 1))
                steps[0] = carried + steps[0]
        return [[dataclasses.replace(mb, ends_step=j == len(step) - 1) for j, mb in enumerate(step)] for step in steps]

    def steps_per_epoch(self) -> int:
        """Full optimizer steps per epoch (the schedule's epoch length); the same for every epoch."""
        return len(self.steps(0))

    def steps_done(self, epoch: int, micro_batches: int) -> int:
        """How many of ``epoch``'s steps ``micro_batches`` consumed micro-batches complete (resume)."""
        if self.cadence is None:
            return micro_batches // self.accum
        done = used = 0
        for step in self.steps(epoch):
            used += len(step)
            if used > micro_batches:
                break
            done += 1
        return done


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


def make_loader(
    source: MicroBatchSource,
    sampler: PlannedSampler,
    *,
    num_workers: int,
    seed: int,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
) -> DataLoader:
    """The DataLoader over planned micro-batches. Its own seeded generator: creating an iterator
    then never draws from the global RNG (which drives dropout), so resume stays bit-identical."""
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor, "worker_init_fn": _seed_worker}
    return DataLoader(
        source,
        sampler=sampler,
        batch_size=None,
        collate_fn=_passthrough,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )


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
