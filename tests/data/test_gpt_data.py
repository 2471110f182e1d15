"""GPT dataset/collate/sampler: upstream's layout, a real forward pass, and learnability."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gsv_ray.data.experiment import SplitOptions, open_experiment, split_datasets
from gsv_ray.data.gpt import GPTBucketSampler, GPTDataset, collate_gpt, gpt_batch_size
from gsv_ray.models.gpt import T2SConfig, Text2SemanticDecoder
from gsv_ray.resources import symbols
from tests.data.conftest import N_UTTS


def test_items_and_collate(synth_root) -> None:
    ds = GPTDataset(open_experiment(synth_root("v2"), "gpt", "v2"))
    assert len(ds) == N_UTTS
    table = symbols("v2")
    items = [ds[i] for i in (0, 3, 7)]
    for it in items:
        u = ds.utterances[it.idx]
        assert [table[j] for j in it.phoneme_ids.tolist()] == list(u.phones)
        assert it.semantic_ids.tolist() == list(u.semantic_ids)
        assert it.bert_feature.shape == (1024, len(u.phones))
    b = collate_gpt(items)
    lp = [len(it.phoneme_ids) for it in items]
    ls = [len(it.semantic_ids) for it in items]
    assert b.ids == [0, 3, 7] and b.phoneme_ids_len.tolist() == lp and b.semantic_ids_len.tolist() == ls
    assert b.phoneme_ids.shape == (3, max(lp)) and b.phoneme_ids.dtype == torch.int64
    assert b.semantic_ids.shape == (3, max(ls)) and b.semantic_ids.dtype == torch.int64
    assert b.bert_feature.shape == (3, 1024, max(lp)) and b.bert_feature.dtype == torch.float32
    for i, it in enumerate(items):
        assert torch.equal(b.phoneme_ids[i, : lp[i]], it.phoneme_ids) and (b.phoneme_ids[i, lp[i] :] == 0).all()
        assert torch.equal(b.semantic_ids[i, : ls[i]], it.semantic_ids) and (b.semantic_ids[i, ls[i] :] == 1024).all()
        assert torch.equal(b.bert_feature[i, :, : lp[i]], it.bert_feature)
        assert not b.bert_feature[i, :, lp[i] :].any()
    assert set(b.upstream()) == {
        "ids",
        "phoneme_ids",
        "phoneme_ids_len",
        "semantic_ids",
        "semantic_ids_len",
        "bert_feature",
    }


def test_missing_bert_gives_zeros(mutable_exp) -> None:
    root = mutable_exp("v2")
    name = (root / "2-name2text.txt").read_text().split("\t", 1)[0]
    (root / "3-bert" / f"{name}.pt").unlink()
    ds = GPTDataset(open_experiment(root, "gpt", "v2"))
    i = ds.names.index(name)
    assert ds[i].bert_feature is None
    b = collate_gpt([ds[i], ds[(i + 1) % len(ds)]])
    assert not b.bert_feature[0].any() and b.bert_feature[1].any()


def test_batch_size_rule() -> None:
    assert gpt_batch_size(8, 100) == 8 and gpt_batch_size(8, 12) == 3 and gpt_batch_size(8, 2) == 1


def test_sampler_deterministic_bucketed_sharded() -> None:
    durations = [1.0, 5.5, 1.5, 0.7, 3.9, 2.1, 8.0, 1.9, 4.2, 2.5, 0.9]
    s = GPTBucketSampler(durations, batch_size=3, seed=0)
    # sorted by duration, bucket edge 2, 4, 6 ... moving by one width per new bucket
    assert s.buckets == [[3, 10, 0, 2, 7], [5, 9, 4], [8, 1], [6]]
    s.set_epoch(2)
    first = list(s)
    assert first == list(GPTBucketSampler(durations, batch_size=3, seed=2))  # seed + epoch
    s.set_epoch(3)
    assert list(s) != first
    assert sorted(i for bt in first for i in bt) == list(range(len(durations)))
    assert len(first) == len(s) == 4 and [len(bt) for bt in first].count(3) == 3
    ranks = [list(GPTBucketSampler(durations, 2, num_replicas=2, rank=r)) for r in (0, 1)]
    flat = [i for r in ranks for bt in r for i in bt]
    assert len(flat) == 12 and set(flat) == set(range(len(durations)))  # padded by wrap-around to 12
    assert sum(len(bt) for bt in ranks[0]) == sum(len(bt) for bt in ranks[1]) == 6


def test_split(synth_root, tmp_path: Path) -> None:
    root = synth_root("v2")
    names_file = tmp_path / "val.list"
    exp = open_experiment(root, "gpt", "v2")
    names_file.write_text("\n".join(exp.names[:2]) + "\n")
    train, val = split_datasets(GPTDataset, exp, split=SplitOptions(val_names_file=names_file))
    assert val.names == exp.names[:2] and train.names == exp.names[2:]
    train, val = split_datasets(GPTDataset, root, "v2")
    assert val is None and len(train) == N_UTTS


def _small_gpt(goldens_dir: Path) -> Text2SemanticDecoder:
    cfg = T2SConfig.from_s1_config(json.loads((goldens_dir / "gpt_t2s_small.config.json").read_text()))
    torch.manual_seed(0)
    return Text2SemanticDecoder(cfg)


def test_forward_gives_finite_loss(synth_root, goldens_dir: Path) -> None:
    ds = GPTDataset(open_experiment(synth_root("v2Pro"), "gpt", "v2Pro"))
    sampler = GPTBucketSampler(ds.durations, batch_size=gpt_batch_size(8, len(ds)))
    batch = ds.collate([ds[i] for i in next(iter(sampler))])
    out = _small_gpt(goldens_dir)(*batch.model_inputs())
    assert torch.isfinite(out.loss) and out.loss > 0
    assert out.logits.shape == (len(batch.ids), batch.semantic_ids.shape[1] + 1, 1025)


def _mean_token_loss(model: Text2SemanticDecoder, items) -> float:
    """Per-token CE over the items one at a time (no padding positions counted)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for it in items:
            out = model(*collate_gpt([it]).model_inputs())
            total += float(out.loss)
            count += out.targets.numel()
    model.train()
    return total / count


@pytest.mark.slow
def test_learnability_30_adamw_steps(synth_root, goldens_dir: Path) -> None:
    """The synthetic set is learnable: 30 AdamW steps of the small GPT cut the per-token loss by far
    more than 20%, to below the entropy of the token distribution (so it uses the phones)."""
    import math
    from collections import Counter

    ds = GPTDataset(open_experiment(synth_root("v2"), "gpt", "v2"))
    items = [ds[i] for i in range(len(ds))]
    counts = Counter(t for it in items for t in it.semantic_ids.tolist() + [1024])
    n = sum(counts.values())
    unigram_entropy = -sum(c / n * math.log(c / n) for c in counts.values())

    model = _small_gpt(goldens_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sampler = GPTBucketSampler(ds.durations, batch_size=4)
    before = _mean_token_loss(model, items)
    step, epoch = 0, 0
    while step < 30:
        sampler.set_epoch(epoch)
        epoch += 1
        for idx in sampler:
            out = model(*collate_gpt([items[i] for i in idx]).model_inputs())
            loss = out.loss / out.targets.numel()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            if step == 30:
                break
    after = _mean_token_loss(model, items)
    print(f"GPT mean token CE: {before:.3f} -> {after:.3f} (unigram entropy {unigram_entropy:.3f})")
    assert after < 0.8 * before
    assert after < unigram_entropy


@pytest.mark.parametrize("version", ["v1"])
def test_v1_ids_fit_the_v1_gpt(version: str, synth_root) -> None:
    ds = GPTDataset(open_experiment(synth_root(version), "gpt", version))
    assert max(max(u.phone_ids) for u in ds.utterances) < T2SConfig.default("v1").phoneme_vocab_size


def test_dataloader_with_batch_sampler(synth_root) -> None:
    from torch.utils.data import DataLoader

    ds = GPTDataset(open_experiment(synth_root("v2"), "gpt", "v2"))
    sampler = GPTBucketSampler(ds.durations, batch_size=gpt_batch_size(8, len(ds)))
    batches = list(DataLoader(ds, batch_sampler=sampler, collate_fn=ds.collate, num_workers=1))
    assert len(batches) == len(sampler) == 4 and sorted(i for b in batches for i in b.ids) == list(range(len(ds)))
