"""The input pipeline: DataLoader workers deliver exactly the planned micro-batches, in order, whatever
the worker count, and a plan resumed mid-epoch continues with the batches an uninterrupted run gets."""

from __future__ import annotations

import pytest
import torch

from gsv_ray.data.experiment import open_experiment
from gsv_ray.data.loader import (MicroBatchSource, PlannedSampler, StepPlan, default_loader_workers, make_loader,
                                 split_global_batch)
from gsv_ray.data.sovits import SoVITSBucketSampler, SoVITSDataset, SoVITSPadding, collate_sovits
from gsv_ray.data.synthetic import make_synthetic_experiment
from gsv_ray.train.sovits import SoVITSStep, sovits_micro_batch


@pytest.fixture(scope="module")
def sovits_ds(tmp_path_factory):
    root = make_synthetic_experiment(tmp_path_factory.mktemp("loader") / "exp", version="v2", num_utterances=12)
    return SoVITSDataset(open_experiment(root, "sovits", "v2"))


def _plan(ds, world=1, rank=0, accum=1, batch=4):
    frames = [u.num_samples // 640 for u in ds.utterances]
    return StepPlan(SoVITSBucketSampler(ds.lengths, batch, seed=3), world=world, rank=rank, accum=accum,
                    context=lambda idx: SoVITSStep(sum(frames[i] for i in idx), SoVITSPadding(
                        max(frames[i] for i in idx), max(ds.utterances[i].num_samples for i in idx),
                        max(len(ds.utterances[i].phone_ids) for i in idx))))


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
    assert [b.names for b, _ in tail] == [b.names for b, _ in full[2 * done:]]
    next_epoch = _consume(sovits_ds, plan, per_epoch, 1, epoch=1)
    assert [b.names for b, _ in next_epoch] == [b.names for b, _ in full[per_epoch:]]


def test_default_worker_count():
    assert default_loader_workers(1) == 0 and default_loader_workers(2) == 1 and default_loader_workers(64) == 8
    assert default_loader_workers(8, processes_on_node=4) == 1
