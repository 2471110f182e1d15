"""Audio front-end and stage-2 losses against GPT-SoVITS goldens (``goldens/README.md`` 4 and 5).

One test per golden output. The loss goldens take the discriminator outputs stored in
``sovits_D_v2.io.safetensors`` as inputs, so they do not depend on our discriminator.
"""

from __future__ import annotations

import json

import pytest
import torch

from gsv_ray.audio import (
    AudioFrontend,
    linear_spectrogram,
    mel_filterbank,
    mel_spectrogram,
    spec_to_mel,
)
from gsv_ray.models.sovits.losses import (
    C_KL,
    C_MEL,
    discriminator_loss,
    feature_loss,
    generator_loss,
    generator_total_loss,
    kl_loss,
    mel_l1_loss,
)
from tests.support.goldens import assert_close_golden, load_io

FRONTEND_OUTPUTS = [
    "out.spectrogram",
    "out.spec_to_mel",
    "out.mel_spectrogram",
    "out.mel_basis",
    "out.spectrogram_int16_scaled",
]
LOSS_OUTPUTS = [
    "out.discriminator_loss",
    "out.generator_loss",
    "out.feature_loss",
    "out.mel.mel",
    "out.mel.y_mel",
    "out.mel.y_hat_mel",
    "out.mel.l1",
    "out.mel.loss_mel",
    "out.kl.loss_kl",
    "out.loss_gen_all",
]
SEGMENT_FRAMES = 32  # segment_size 20480 // hop 640


@pytest.fixture(scope="module")
def s2_data_config(schemas_dir) -> dict:
    return json.loads((schemas_dir / "config_s2_v2.json").read_text())["config"]["data"]


@pytest.fixture(scope="module")
def frontend(s2_data_config) -> AudioFrontend:
    return AudioFrontend.from_data_config(s2_data_config)


# --------------------------------------------------------------------------- front-end


@pytest.fixture(scope="module")
def frontend_io(goldens_dir):
    return load_io(goldens_dir / "audio_frontend.io.safetensors")


@pytest.fixture(scope="module")
def frontend_outputs(frontend, frontend_io) -> dict[str, torch.Tensor]:
    wav = frontend_io["in.wav"]
    return {
        "out.spectrogram": frontend.spectrogram(wav),
        # Fed upstream's own spectrogram, so this isolates the filterbank + log step.
        "out.spec_to_mel": frontend.spec_to_mel(frontend_io["out.spectrogram"]),
        "out.mel_spectrogram": frontend.mel(wav),
        "out.mel_basis": frontend.mel_basis,
        "out.spectrogram_int16_scaled": frontend.spectrogram(frontend_io["in.wav_int16_scaled"]),
    }


def test_frontend_output_list_is_complete(frontend_io):
    assert sorted(k for k in frontend_io if k.startswith("out.")) == sorted(FRONTEND_OUTPUTS)


@pytest.mark.parametrize("name", FRONTEND_OUTPUTS, ids=FRONTEND_OUTPUTS)
def test_golden_audio_frontend(name, frontend_outputs, frontend_io):
    assert_close_golden(name, frontend_outputs[name], frontend_io[name])


def test_frontend_config_buffers_and_functions(frontend, frontend_io):
    assert (frontend.sampling_rate, frontend.n_fft, frontend.hop_length, frontend.win_length) == (
        32000,
        2048,
        640,
        2048,
    )
    assert (frontend.n_mels, frontend.fmin, frontend.fmax) == (128, 0.0, None)
    # Window and filterbank follow .to() but never enter a checkpoint.
    assert dict(frontend.named_buffers()).keys() == {"window", "mel_basis"}
    assert frontend.state_dict() == {}
    wav = frontend_io["in.wav"]
    # The plain functions agree with the module, and leading batch axes are kept.
    spec = linear_spectrogram(wav, 2048, 640, 2048)
    assert torch.equal(spec, frontend.spectrogram(wav))
    assert torch.equal(mel_spectrogram(wav, 2048, 128, 32000, 640, 2048, 0.0, None), frontend.mel(wav))
    basis = torch.from_numpy(mel_filterbank(32000, 2048, 128, 0.0, None))
    assert torch.equal(spec_to_mel(spec, basis), frontend.spec_to_mel(spec))
    assert linear_spectrogram(wav[0], 2048, 640, 2048).shape == (1025, 25)
    assert frontend.spectrogram(torch.stack([wav, wav])).shape == (2, 1, 1025, 25)
    assert frontend(wav).shape == (1, 128, 25)  # 16000 samples // hop 640 = 25 frames


def test_frontend_float64(frontend, frontend_io):
    got = frontend.mel(frontend_io["in.wav"].double())
    assert got.dtype == torch.float64
    assert_close_golden("mel float64", got, frontend_io["out.mel_spectrogram"])


# --------------------------------------------------------------------------- losses


@pytest.fixture(scope="module")
def loss_io(goldens_dir):
    return load_io(goldens_dir / "sovits_losses.io.safetensors")


@pytest.fixture(scope="module")
def d_outputs(goldens_dir):
    """(y_d_rs, y_d_gs, fmap_rs, fmap_gs) as stored by the D v2 golden, ordered by index."""
    io = load_io(goldens_dir / "sovits_D_v2.io.safetensors")
    n = 6
    y_d_rs = [io[f"out.y_d_rs.{i}"] for i in range(n)]
    y_d_gs = [io[f"out.y_d_gs.{i}"] for i in range(n)]

    def fmaps(side):
        return [[io[f"out.{side}.{i}.{j}"] for j in range(7 if i == 0 else 6)] for i in range(n)]

    return y_d_rs, y_d_gs, fmaps("fmap_rs"), fmaps("fmap_gs")


def _slice_frames(x: torch.Tensor, starts: torch.Tensor, size: int) -> torch.Tensor:
    """Per-example time window ``x[b, :, starts[b] : starts[b] + size]`` (upstream ``slice_segments``)."""
    return torch.stack([x[b, :, int(s) : int(s) + size] for b, s in enumerate(starts)])


@pytest.fixture(scope="module")
def loss_outputs(frontend, loss_io, d_outputs) -> dict[str, torch.Tensor]:
    y_d_rs, y_d_gs, fmap_rs, fmap_gs = d_outputs
    mel = frontend.spec_to_mel(frontend.spectrogram(loss_io["in.mel.y_full"].squeeze(1)))
    y_mel = _slice_frames(mel, loss_io["in.mel.ids_slice"], SEGMENT_FRAMES)
    y_hat_mel = frontend.mel(loss_io["in.mel.y_hat"].squeeze(1))
    kl_args = [loss_io[f"in.kl.{k}"] for k in ("z_p", "logs_q", "m_p", "logs_p", "z_mask")]
    total = generator_total_loss(y_d_gs, fmap_rs, fmap_gs, y_mel, y_hat_mel, *kl_args, kl_ssl=0.0)
    l1 = mel_l1_loss(y_mel, y_hat_mel)
    return {
        "out.discriminator_loss": discriminator_loss(y_d_rs, y_d_gs)[0],
        "out.generator_loss": generator_loss(y_d_gs)[0],
        "out.feature_loss": feature_loss(fmap_rs, fmap_gs),
        "out.mel.mel": mel,
        "out.mel.y_mel": y_mel,
        "out.mel.y_hat_mel": y_hat_mel,
        "out.mel.l1": l1,
        "out.mel.loss_mel": total.mel,
        "out.kl.loss_kl": kl_loss(*kl_args),
        "out.loss_gen_all": total.total,
    }


def test_loss_output_list_is_complete(loss_io):
    assert sorted(k for k in loss_io if k.startswith("out.")) == sorted(LOSS_OUTPUTS)


@pytest.mark.parametrize("name", LOSS_OUTPUTS, ids=LOSS_OUTPUTS)
def test_golden_sovits_losses(name, loss_outputs, loss_io):
    got = loss_outputs[name]
    want = loss_io[name]
    if got.dim() == 0:
        got = got.reshape(1)  # goldens store scalars as [1]
    assert_close_golden(name, got, want)


def test_loss_terms_match_index_values(goldens_dir, d_outputs, loss_outputs):
    values = json.loads((goldens_dir / "INDEX.json").read_text())["values"]["sovits_losses"]
    y_d_rs, y_d_gs, fmap_rs, fmap_gs = d_outputs
    _, r_terms, g_terms = discriminator_loss(y_d_rs, y_d_gs)
    _, gen_terms = generator_loss(y_d_gs)
    for got, want in (
        (r_terms, "discriminator_r_losses"),
        (g_terms, "discriminator_g_losses"),
        (gen_terms, "generator_losses"),
    ):
        assert [float(t) for t in got] == pytest.approx(values[want], rel=1e-6, abs=1e-7), want
    assert float(loss_outputs["out.mel.loss_mel"]) == pytest.approx(values["loss_mel_x_c_mel"], rel=1e-6)
    assert float(loss_outputs["out.loss_gen_all"]) == pytest.approx(values["loss_gen_all"], rel=1e-6)
    assert (C_MEL, C_KL) == (45.0, 1.0)


def test_generator_total_is_the_upstream_sum(loss_io, d_outputs, loss_outputs):
    y_d_rs, y_d_gs, fmap_rs, fmap_gs = d_outputs
    kl_args = [loss_io[f"in.kl.{k}"] for k in ("z_p", "logs_q", "m_p", "logs_p", "z_mask")]
    y_mel, y_hat_mel = loss_outputs["out.mel.y_mel"], loss_outputs["out.mel.y_hat_mel"]
    parts = generator_total_loss(
        y_d_gs, fmap_rs, fmap_gs, y_mel, y_hat_mel, *kl_args, kl_ssl=torch.tensor(0.5), c_mel=2.0, c_kl=3.0
    )
    assert torch.equal(parts.mel, mel_l1_loss(y_mel, y_hat_mel) * 2.0)
    assert torch.equal(parts.kl, kl_loss(*kl_args) * 3.0)
    assert torch.equal(parts.total, parts.gen + parts.fm + parts.mel + 0.5 + parts.kl)
    assert len(parts.gen_terms) == 6


def test_losses_backpropagate_as_upstream(d_outputs):
    """Feature matching and the GAN terms must not push gradients into the real side."""
    y_d_rs, y_d_gs, fmap_rs, fmap_gs = d_outputs
    fr = [[t.clone().requires_grad_() for t in d] for d in fmap_rs]
    fg = [[t.clone().requires_grad_() for t in d] for d in fmap_gs]
    feature_loss(fr, fg).backward()
    assert all(t.grad is None for d in fr for t in d)
    assert all(t.grad is not None for d in fg for t in d)
    dr = [t.clone().requires_grad_() for t in y_d_rs]
    dg = [t.clone().requires_grad_() for t in y_d_gs]
    total, r_terms, _ = discriminator_loss(dr, dg)
    total.backward()
    assert all(t.grad is not None for t in dr + dg)
    assert all(not t.requires_grad for t in r_terms)
    # Half-precision inputs are upcast like upstream's .float() calls.
    half = generator_loss([t.half() for t in y_d_gs])[0]
    assert half.dtype == torch.float32
