"""The speaker-verification front-end (gsv_ray/fbank.py) against GPT-SoVITS's SV-step goldens
(goldens PREPARE.md sections 2.2-2.3; checks as section 4 suggests).

The resampler is fed the HuBERT step's ``wav32k`` (what ``2-get-sv.py`` reads from ``5-wav32k``), the
fbank the goldens' own ``wav16k``, so each stage is checked on its own inputs.
"""

from __future__ import annotations

import pytest
import torch

from gsv_ray.fbank import kaldi_fbank, kaldi_mel_banks, povey_window, resample_32k_to_16k, resample_kernel
from tests.support.goldens import SV_CLIPS, load_io


@pytest.fixture(scope="module")
def sv_io(goldens_dir):
    return load_io(goldens_dir / "prepare_sv.io.safetensors")


@pytest.fixture(scope="module")
def audio_io(goldens_dir):
    return load_io(goldens_dir / "prepare_audio.io.safetensors")


def test_resample_kernel(sv_io):
    kernel, width = resample_kernel(2, 1)
    want = sv_io["out.resample_kernel"]
    assert width == 13 and kernel.shape == want.shape == (1, 1, 28)
    assert (kernel - want).abs().max().item() <= 1e-7  # measured: bitwise equal


def test_povey_window_and_mel_banks(sv_io):
    assert (povey_window() - sv_io["out.fbank.povey_window"]).abs().max().item() <= 1e-7  # measured 3.7e-9
    banks, want = kaldi_mel_banks(80), sv_io["out.fbank.mel_banks"]
    assert banks.shape == want.shape == (80, 256)
    assert (banks - want).abs().max().item() <= 2e-5  # measured 7.1e-6 (weights <= 1)


@pytest.mark.parametrize("clip", SV_CLIPS)
def test_wav16k_and_fbank(clip, sv_io, audio_io):
    wav32k = audio_io[f"out.{clip}.wav32k"].to(torch.float32).reshape(1, -1) / 32768.0  # int16, as upstream reads it
    want16 = sv_io[f"out.{clip}.wav16k"]
    got16 = resample_32k_to_16k(wav32k)
    assert got16.shape == want16.shape
    assert (got16 - want16).abs().max().item() <= 1e-5 * want16.abs().max().item()  # measured <= 3.1e-7 rel

    want = sv_io[f"out.{clip}.fbank"]
    got = kaldi_fbank(want16)[None]
    assert got.shape == want.shape  # T = 1 + (N16 - 400) // 160
    err = (got - want).abs()
    assert err.max().item() <= 1e-2  # measured <= 6.5e-4 (largest near the log floor, -15.9)
    assert err[want > -10].max().item() <= 1e-3  # measured <= 1.7e-4


def test_fbank_of_short_input_has_no_frames():
    assert kaldi_fbank(torch.zeros(399)).shape == (0, 80)
    assert kaldi_fbank(torch.zeros(400)).shape == (1, 80)
