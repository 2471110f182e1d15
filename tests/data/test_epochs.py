"""Upstream's epochs (#25 item 2): a training set of n < 100 utterances is repeated
``max(2, int(100 / n))`` times per epoch, as GPT-SoVITS's SoVITS and GPT loaders do; the samplers
see each copy as an ordinary item, and copies of one utterance never share their random draws."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gsv_ray.data import GPTBucketSampler, GPTDataset, SoVITSBucketSampler, SoVITSDataset, collate_sovits
from gsv_ray.data.experiment import (
    UPSTREAM_MIN_ITEMS,
    DataReport,
    Experiment,
    ExperimentOptions,
    Utterance,
    open_experiment,
    upstream_repeats,
)
from gsv_ray.data.loader import StepPlan

#: n -> upstream's items per epoch (the issue's table)
UPSTREAM_ITEMS = {20: 100, 34: 68, 99: 198, 100: 100, 250: 250}


@pytest.mark.parametrize(
    "n, copies", [(1, 100), (20, 5), (33, 3), (34, 2), (50, 2), (99, 2), (100, 1), (250, 1), (0, 1)]
)
def test_upstream_repeats_is_upstreams_rule(n, copies):
    assert upstream_repeats(n) == copies


def _experiment(stage: str, n: int) -> Experiment:
    """``n`` utterances' metadata (what the datasets and samplers read; no file is opened): lengths
    spread over several SoVITS buckets and GPT duration buckets."""
    utts = [
        Utterance(
            name=f"u{i:03d}.wav",
            phones=("a",) * 10,
            phone_ids=(1,) * 10,
            word2ph="None",
            norm_text="a",
            wav_path=Path(f"/nonexistent/u{i:03d}.wav"),
            wav_bytes=44 + 2 * 640 * (40 + 37 * (i % 11)),
            num_samples=640 * (40 + 37 * (i % 11)),
            semantic_ids=(5,) * (20 + 9 * (i % 13)),
        )
        for i in range(n)
    ]
    return Experiment(
        Path("/nonexistent"), stage, "v2", utts, DataReport(Path("/nonexistent"), stage, "v2"), ExperimentOptions()
    )


def _epoch(stage: str, n: int, batch: int) -> tuple[object, StepPlan]:
    exp = _experiment(stage, n)
    if stage == "gpt":
        ds = GPTDataset(exp, exp.names, min_items=UPSTREAM_MIN_ITEMS)
        sampler = GPTBucketSampler(ds.durations, batch, seed=3)
    else:
        ds = SoVITSDataset(exp, exp.names, min_items=UPSTREAM_MIN_ITEMS)
        sampler = SoVITSBucketSampler(ds.lengths, batch, seed=3)
    return ds, StepPlan(sampler, world=1, rank=0, accum=1)


@pytest.mark.parametrize("stage", ["sovits", "gpt"])
@pytest.mark.parametrize("n", list(UPSTREAM_ITEMS))
def test_an_epoch_has_upstreams_number_of_items(stage, n):
    """Items per epoch as upstream's loaders hold them; each copy an item of its own with its own draw
    key (copy 0 keyed by the bare name) and the real name; the plan draws every item once per epoch
    (batch 1) and its steps per epoch follow from the items (GPT batch 4: ceil(items / 4))."""
    ds, plan = _epoch(stage, n, 1)
    items = UPSTREAM_ITEMS[n]
    assert len(ds) == items and ds.copies == items // n
    assert len(set(ds.keys)) == items and set(ds.names) == {f"u{i:03d}.wav" for i in range(n)}
    assert ds.keys[:n] == ds.names[:n] and all(
        k == f"{u}#{k_}" for k_ in range(1, ds.copies) for k, u in zip(ds.keys[k_ * n : (k_ + 1) * n], ds.names[:n])
    )
    drawn = sorted(i for step in plan.steps(0) for mb in step for i in mb.indices)
    assert drawn == list(range(items)) and plan.steps_per_epoch() == items
    if stage == "gpt":
        assert _epoch(stage, n, 4)[1].steps_per_epoch() == math.ceil(items / 4)


def test_validation_sets_are_not_repeated():
    """Without min_items (validation) a dataset is one pass, keyed by the names."""
    exp = _experiment("sovits", 20)
    ds = SoVITSDataset(exp, exp.names)
    assert len(ds) == 20 and ds.copies == 1 and ds.keys == ds.names


def test_copies_of_one_utterance_draw_their_own_noise(synth_root):
    """Two copies of an utterance in one batch get different posterior noise and windows; copy 0
    draws exactly what the bare name drew before repetition existed (runs stay comparable)."""
    from gsv_ray.train.common import keyed_generator
    from gsv_ray.train.sovits import utterance_noise

    ds = SoVITSDataset(open_experiment(synth_root("v2"), "sovits", "v2"), min_items=UPSTREAM_MIN_ITEMS)
    n = len(ds) // ds.copies
    batch = collate_sovits([ds[0], ds[n]])
    assert batch.names[0] == batch.names[1] and set(batch.keys) == {ds.names[0], ds.names[0] + "#1"}
    eps, u = utterance_noise(batch, 4, seed=7, step=3)
    assert not torch.equal(eps[0], eps[1]) and u[0] != u[1]
    row = batch.keys.index(ds.names[0])
    gen = keyed_generator(7, 3, ds.names[0])
    length = int(batch.spec_lengths[row])
    assert torch.equal(eps[row, :, :length], torch.randn(4, length, generator=gen))


def test_cfm_copies_draw_their_own_times_and_noise(synth_root):
    from gsv_ray.data.cfm import CFMDataset, collate_cfm
    from gsv_ray.train.cfm import batch_draws

    ds = CFMDataset(open_experiment(synth_root("v2"), "sovits", "v4"), min_items=UPSTREAM_MIN_ITEMS)
    n = len(ds) // ds.copies
    batch = collate_cfm([ds[1], ds[1 + n]], "v4")
    prompt_u, draws = batch_draws(batch, seed=7, step=3)
    assert batch.names[0] == batch.names[1] and prompt_u[0] != prompt_u[1] and draws.t[0] != draws.t[1]
    assert not torch.equal(draws.x0[0], draws.x0[1])
