"""SoVITS dataset/collate/sampler: upstream's item and batch layout, and a real forward pass."""

from __future__ import annotations

import pytest
import torch

from gsv_ray.audio import AudioFrontend, linear_spectrogram, read_wav_pcm16
from gsv_ray.data.experiment import SplitOptions, open_experiment, split_datasets
from gsv_ray.data.sovits import (
    SOVITS_BOUNDARIES,
    SoVITSBucketSampler,
    SoVITSDataset,
    collate_sovits,
)
from gsv_ray.models.sovits import SoVITSConfig, SoVITSGenerator
from gsv_ray.models.sovits.commons import slice_segments
from gsv_ray.models.sovits.losses import kl_loss, mel_l1_loss
from gsv_ray.resources import s2_config, symbols
from tests.data.conftest import N_UTTS


def test_boundaries_are_upstreams() -> None:
    assert SOVITS_BOUNDARIES == (
        32,
        300,
        400,
        500,
        600,
        700,
        800,
        900,
        1000,
        1100,
        1200,
        1300,
        1400,
        1500,
        1600,
        1700,
        1800,
        1900,
    )


@pytest.mark.parametrize("version", ["v1", "v2Pro"])
def test_items(version: str, synth_root) -> None:
    exp = open_experiment(synth_root(version), "sovits", version)
    ds = SoVITSDataset(exp)
    assert len(ds) == N_UTTS
    table = symbols("v1" if version == "v1" else "v2")
    for i in range(len(ds)):
        it = ds[i]
        u = ds.utterances[i]
        n = it.wav.shape[1]
        assert it.wav.shape == (1, u.num_samples) and it.wav.dtype == torch.float32
        assert it.spec.shape == (1025, n // 640) and it.spec.dtype == torch.float32
        assert it.ssl.shape == (1, 768, n // 640)  # after the one-frame fix-up
        assert it.text.dtype == torch.int64 and [table[j] for j in it.text.tolist()] == list(u.phones)
        assert (it.sv_emb is not None) == (version == "v2Pro")
        if it.sv_emb is not None:
            assert it.sv_emb.shape == (1, 20480)
        assert len(it.upstream()) == (5 if version == "v2Pro" else 4)
        assert ds.lengths[i] == u.wav_bytes // 1280


def test_hubert_fixup_and_spectrogram(synth_root) -> None:
    exp = open_experiment(synth_root("v2"), "sovits", "v2")
    ds = SoVITSDataset(exp)
    fixed = 0
    for i, u in enumerate(ds.utterances):
        raw = torch.load(u.hubert_path, weights_only=True)
        it = ds[i]
        if raw.shape[-1] != it.spec.shape[-1]:
            fixed += 1
            assert torch.equal(it.ssl[..., :-1], raw) and torch.equal(it.ssl[..., -1], raw[..., -1])
        else:
            assert torch.equal(it.ssl, raw)
        wav = read_wav_pcm16(u.wav_path)
        assert torch.allclose(it.spec, linear_spectrogram(wav, 2048, 640, 2048)[0])
    assert 0 < fixed < len(ds)


@pytest.mark.parametrize("version", ["v2", "v2Pro"])
def test_collate_layout(version: str, synth_root) -> None:
    ds = SoVITSDataset(open_experiment(synth_root(version), "sovits", version))
    items = [ds[i] for i in range(5)]
    b = collate_sovits(items)
    spec_lens = sorted((it.spec.shape[1] for it in items), reverse=True)
    assert b.spec_lengths.tolist() == spec_lens  # sorted longest first
    max_spec = spec_lens[0]
    assert b.spec.shape == (5, 1025, 2 * (max_spec // 2 + 1))
    assert b.ssl.shape == (5, 768, 2 * (max(it.ssl.shape[2] for it in items) // 2 + 1))
    assert b.wav.shape == (5, 1, max(it.wav.shape[1] for it in items))
    assert b.text.shape == (5, max(len(it.text) for it in items)) and b.text.dtype == torch.int64
    for t in (b.ssl_lengths, b.spec_lengths, b.wav_lengths, b.text_lengths):
        assert t.dtype == torch.int64
    by_name = {it.name: it for it in items}
    for i, name in enumerate(b.names):
        it = by_name[name]
        n_spec, n_wav, n_txt = it.spec.shape[1], it.wav.shape[1], len(it.text)
        assert torch.equal(b.spec[i, :, :n_spec], it.spec) and not b.spec[i, :, n_spec:].any()
        assert torch.equal(b.ssl[i, :, :n_spec], it.ssl[0]) and not b.ssl[i, :, n_spec:].any()
        assert torch.equal(b.wav[i, :, :n_wav], it.wav) and not b.wav[i, :, n_wav:].any()
        assert torch.equal(b.text[i, :n_txt], it.text) and not b.text[i, n_txt:].any()
    if version == "v2Pro":
        assert b.sv_emb.shape == (5, 20480) and len(b.upstream()) == 9
        assert torch.equal(b.sv_emb[0], by_name[b.names[0]].sv_emb[0])
    else:
        assert b.sv_emb is None and len(b.upstream()) == 8


def test_sampler_deterministic_sharded_bucketed() -> None:
    lengths = [50, 120, 310, 305, 20, 2000, 90, 350, 60, 299, 301, 1000, 1001, 80]
    s = SoVITSBucketSampler(lengths, batch_size=2, seed=3)
    assert sorted(s.dropped) == [4, 5]  # <= 32 and > 1900 frames are never drawn
    s.set_epoch(1)
    first = s.batches()
    twin = SoVITSBucketSampler(lengths, batch_size=2, seed=4)  # epoch 0, seed 4 == seed 3, epoch 1
    assert twin.batches() == first
    s.set_epoch(2)
    assert s.batches() != first
    assert len(first) == len(s) and all(len(bt) == 2 for bt in first)
    bucket_of = {i: k for k, bk in enumerate(s.buckets) for i in bk}
    for bt in first:
        assert len({bucket_of[i] for i in bt}) == 1  # a batch never mixes buckets
    covered = {i for bt in first for i in bt}
    assert covered == set(range(len(lengths))) - {4, 5}
    # two ranks: same number of batches, together they cover every kept index
    r0 = SoVITSBucketSampler(lengths, 2, num_replicas=2, rank=0).batches()
    r1 = SoVITSBucketSampler(lengths, 2, num_replicas=2, rank=1).batches()
    assert len(r0) == len(r1) and {i for bt in r0 + r1 for i in bt} == covered
    with pytest.raises(ValueError):
        SoVITSBucketSampler(lengths, 2, num_replicas=2, rank=2)


def test_split_and_min_items(synth_root) -> None:
    train, val = split_datasets(SoVITSDataset, synth_root("v2"), "v2", split=SplitOptions(val_fraction=0.25))
    assert len(train) == N_UTTS - 3 and len(val) == 3 and not set(train.names) & set(val.names)
    rep, none = split_datasets(SoVITSDataset, synth_root("v2"), "v2", min_items=100)
    assert none is None and len(rep) == N_UTTS * 8  # upstream: max(2, int(100 / 12)) copies


def _small_config(version: str) -> SoVITSConfig:
    """A narrow generator (fast on CPU). gin must equal the MRTE width for v1/v2 (ge feeds MRTE
    directly); the k-means init of the fresh quantizer is cut to one iteration."""
    return SoVITSConfig.default(
        version,
        inter_channels=32,
        hidden_channels=64,
        filter_channels=128,
        n_layers=2,
        gin_channels=64,
        mrte_hidden_channels=64,
        ge_text_channels=64,
        upsample_initial_channel=32,
        posterior_layers=4,
        kmeans_iters=1,
    )


@pytest.mark.parametrize("version", ["v1", "v2", "v2Pro"])
def test_forward_on_a_batch_gives_finite_losses(version: str, synth_root) -> None:
    ds = SoVITSDataset(open_experiment(synth_root(version), "sovits", version))
    sampler = SoVITSBucketSampler(ds.lengths, batch_size=3)
    batch = collate_sovits([ds[i] for i in next(iter(sampler))])
    torch.manual_seed(0)
    cfg = _small_config(version)
    model = SoVITSGenerator(cfg).train()
    out = model(batch.ssl, batch.spec, batch.spec_lengths, batch.text, batch.text_lengths, batch.sv_emb)
    z, z_p, m_p, logs_p, m_q, logs_q = out.stats
    frontend = AudioFrontend.from_data_config(s2_config(version)["data"])
    y_mel = slice_segments(frontend.spec_to_mel(batch.spec), out.ids_slice, cfg.segment_frames)
    y_hat_mel = frontend.mel(out.y_hat.squeeze(1))
    kl = kl_loss(z_p, logs_q, m_p, logs_p, out.z_mask)
    mel = mel_l1_loss(y_mel, y_hat_mel)
    assert out.y_hat.shape == (3, 1, cfg.segment_frames * 640)
    assert torch.isfinite(kl) and torch.isfinite(mel) and mel > 0
    (kl + 45 * mel).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_dataloader_with_batch_sampler(synth_root) -> None:
    """How training loops use it: DataLoader(batch_sampler=..., collate_fn=...), one worker."""
    from torch.utils.data import DataLoader

    ds = SoVITSDataset(open_experiment(synth_root("v2Pro"), "sovits", "v2Pro"))
    sampler = SoVITSBucketSampler(ds.lengths, batch_size=4)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_sovits, num_workers=1)
    batches = list(loader)
    assert len(batches) == len(sampler) and all(b.ssl.shape[0] == 4 for b in batches)
    assert batches[0].sv_emb.shape == (4, 20480)


def test_dataset_uses_the_models_data_config(synth_root) -> None:
    """The recipe hands the dataset the rebuilt model's ``data`` section: its spectrograms come from
    that front-end, not from the packaged default (they used to, whatever the file's config said)."""
    from gsv_ray.audio import AudioConfig
    from gsv_ray.resources import s2_config

    exp = open_experiment(synth_root("v2"), "sovits", "v2")
    audio = AudioConfig.from_s2_data({**s2_config("v2")["data"], "filter_length": 1024, "win_length": 1024})
    default, own = SoVITSDataset(exp)[0], SoVITSDataset(exp, audio=audio)[0]
    assert default.spec.shape[0] == 1025 and own.spec.shape[0] == 513
    assert own.spec.shape[1] == default.spec.shape[1]  # same hop: same frames
