"""The input pipeline: DataLoader workers deliver exactly the planned micro-batches, in order, whatever
the worker count, and a plan resumed mid-epoch continues with the batches an uninterrupted run gets."""

from __future__ import annotations

import pytest
import torch

from gsv_ray.data.experiment import open_experiment
from gsv_ray.data.loader import (
    MicroBatchSource,
    PlannedSampler,
    StepPlan,
    default_loader_workers,
    make_loader,
    split_global_batch,
)
from gsv_ray.data.sovits import SoVITSBucketSampler, SoVITSDataset, SoVITSPadding, collate_sovits
from gsv_ray.data.synthetic import make_synthetic_experiment
from gsv_ray.train.sovits import SoVITSStep, sovits_micro_batch


@pytest.fixture(scope="module")
def sovits_ds(tmp_path_factory):
    root = make_synthetic_experiment(tmp_path_factory.mktemp("loader") / "exp", version="v2", num_utterances=12)
    return SoVITSDataset(open_experiment(root, "sovits", "v2"))


def _plan(ds, world=1, rank=0, accum=1, batch=4):
    frames = [u.num_samples // 640 for u in ds.utterances]
    return StepPlan(
        SoVITSBucketSampler(ds.lengths, batch, seed=3),
        world=world,
        rank=rank,
        accum=accum,
        context=lambda idx: SoVITSStep(
            sum(frames[i] for i in idx),
            SoVITSPadding(
                max(frames[i] for i in idx),
                max(ds.utterances[i].num_samples for i in idx),
                max(len(ds.utterances[i].phone_ids) for i in idx),
            ),
        ),
    )


def _consume(ds, plan, count, workers, *, epoch=0, skip_steps=0):
    """The first ``count`` loader items of a run starting at ``epoch`` after ``skip_steps`` steps."""
    planned = PlannedSampler()
    planned.start(plan, epoch=epoch, skip_steps=skip_steps)
    loader = make_loader(MicroBatchSource(ds, sovits_micro_batch), planned, num_workers=workers, seed=0)
    it = iter(loader)
    return [next(it) for _ in range(count)]


def test_workers_deliver_the_plan_in_order(sovits_ds):
    plan = _plan(sovits_ds)
    items = [mb for epoch in (0, 1) for step in plan.steps(epoch) for mb in step]  # across an epoch boundary
    rng_before = torch.get_rng_state()
    inline, forked = _consume(sovits_ds, plan, len(items), 0), _consume(sovits_ds, plan, len(items), 2)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the loader never draws from the global RNG
    assert [mb for _, mb in inline] == [mb for _, mb in forked] == items
    for (a, _), (b, _) in zip(inline, forked):
        assert a.names == b.names and all(torch.equal(x, y) for x, y in zip(a[:8], b[:8]))
    # each item is what collating the planned utterances gives, padded like its global batch
    first, mb = inline[0]
    ref = collate_sovits([sovits_ds[i] for i in mb.indices], pad_to=mb.context.padding)
    assert torch.equal(first.spec, ref.spec) and first.names == ref.names


def test_split_is_a_partition_of_the_global_batch(sovits_ds):
    plan1, world, accum = _plan(sovits_ds, batch=4), 2, 2
    for epoch in (0, 1):
        single = plan1.steps(epoch)
        parts = [_plan(sovits_ds, world=world, rank=r, accum=accum).steps(epoch) for r in range(world)]
        assert all(len(p) == len(single) for p in parts)
        for k, (one,) in enumerate(single):
            micro = [mb for p in parts for mb in p[k]]
            assert sorted(i for mb in micro for i in mb.indices) == sorted(one.indices)
            assert all(mb.context == one.context and mb.step_items == len(one.indices) for mb in micro)
            assert sum(mb.share for mb in micro) == pytest.approx(1.0)


def test_split_global_batch_rules():
    assert split_global_batch(list(range(8)), 2, 2, 0) == [[0, 2], [4, 6]]
    assert split_global_batch(list(range(8)), 2, 2, 1) == [[1, 3], [5, 7]]
    assert split_global_batch(list(range(5)), 2, 2, 1) == [[1], [3]]
    assert split_global_batch(list(range(3)), 2, 2, 0) is None  # too short for every micro-batch


def test_resumed_plan_continues_the_epoch(sovits_ds):
    plan = _plan(sovits_ds, batch=2, accum=2)
    per_epoch = len(plan.steps(0)) * 2
    done = 2
    full = _consume(sovits_ds, plan, 2 * per_epoch, 1)
    tail = _consume(sovits_ds, plan, 2 * per_epoch - 2 * done, 1, skip_steps=done)
    assert [b.names for b, _ in tail] == [b.names for b, _ in full[2 * done :]]
    next_epoch = _consume(sovits_ds, plan, per_epoch, 1, epoch=1)
    assert [b.names for b, _ in next_epoch] == [b.names for b, _ in full[per_epoch:]]


def test_default_worker_count():
    assert default_loader_workers(1) == 0 and default_loader_workers(2) == 1 and default_loader_workers(64) == 8
    assert default_loader_workers(8, processes_on_node=4) == 1


class _Batches:
    """A global-batch sampler with a known, epoch-dependent order: batch i of epoch e is ``[100 e + i]``."""

    def __init__(self, per_epoch: int):
        self.per_epoch, self.epoch = per_epoch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter([[100 * self.epoch + i] for i in range(self.per_epoch)])


def _upstream_gpt_steps(per_epoch: int, epochs: int) -> list[list[int]]:
    """What upstream's stage 1 sums into each optimizer step (``training_step``: a step after the
    batch with ``batch_idx > 0 and batch_idx % 4 == 0``; gradients kept across epoch ends)."""
    steps, pending = [], []
    for e in range(epochs):
        for i in range(per_epoch):
            pending.append(100 * e + i)
            if i > 0 and i % 4 == 0:
                steps.append(pending)
                pending = []
    return steps


@pytest.mark.parametrize("per_epoch", range(1, 15))
def test_gpt_cadence_sums_the_batches_upstream_sums(per_epoch):
    """5 batches for an epoch's first step, 4 after, leftovers carried into the next epoch's first
    step, no step at all with 4 batches or fewer per epoch (README section 10 observed 6 x 2 epochs)."""
    from gsv_ray.data.loader import UPSTREAM_GPT_CADENCE

    plan = StepPlan(_Batches(per_epoch), world=1, rank=0, accum=1, cadence=UPSTREAM_GPT_CADENCE)
    ours = [[mb.indices[0] for mb in step] for e in range(3) for step in plan.steps(e)]
    assert ours == _upstream_gpt_steps(per_epoch, 3)
    assert plan.steps_per_epoch() == max(0, (per_epoch - 1) // 4)
    if per_epoch == 6:
        assert ours[1] == [5, 100, 101, 102, 103, 104]
    for step in (s for e in range(3) for s in plan.steps(e)):  # the loop reads a step up to its last
        assert [mb.ends_step for mb in step] == [False] * (len(step) - 1) + [True]


@pytest.mark.parametrize("accum", [1, 2])
def test_gpt_cadence_resumes_where_it_stopped(accum):
    """After any number of steps, ``steps_done`` and a sampler started there give exactly the rest of
    an uninterrupted run's micro-batches (carried batches included), also with accumulation."""
    from gsv_ray.data.loader import UPSTREAM_GPT_CADENCE

    class Wide(_Batches):
        def __iter__(self):
            return iter([[100 * self.epoch + i, 1000 + 100 * self.epoch + i] for i in range(self.per_epoch)])

    plan = StepPlan(Wide(11), world=1, rank=0, accum=accum, cadence=UPSTREAM_GPT_CADENCE)
    straight = [mb for e in range(4) for step in plan.steps(e) for mb in step]
    for epoch in range(3):
        consumed = 0
        for done, step in enumerate(plan.steps(epoch)):
            assert plan.steps_done(epoch, consumed) == done
            sampler = PlannedSampler()
            sampler.start(plan, epoch=epoch, skip_steps=done)
            it = iter(sampler)
            rest = [next(it) for _ in range(8)]
            start = sum(len(s) for e in range(epoch) for s in plan.steps(e)) + consumed
            assert rest == straight[start : start + 8]
            consumed += len(step)
