"""The speaker-verification front-end of GPT-SoVITS v2Pro (``2-get-sv.py`` / ``sv.py``), plain torch.

Two steps, numerically as upstream runs them (reference: PREPARE.md section 2 of the goldens):

* :func:`resample_32k_to_16k`: the windowed-sinc resampler of ``torchaudio.transforms.Resample(32000,
  16000)`` with its defaults (Hann window, ``lowpass_filter_width`` 6, ``rolloff`` 0.99). The rates
  reduce to 2 -> 1, so one kernel ``[1, 1, 28]`` (computed in float64, used in float32) is slid with
  stride 2 over the zero-padded signal; ``N`` samples give ``ceil(N / 2)``. This is *not* the soxr
  resampler of the HuBERT step.
* :func:`kaldi_fbank`: the Kaldi-compatible 80-bin log-mel filterbank (torchaudio's
  ``compliance.kaldi.fbank`` with ``dither=0`` and otherwise default settings): 400-sample frames
  every 160 samples, whole frames only; per-frame mean removal; pre-emphasis 0.97 (the first sample
  of a frame is its own predecessor); Povey window (symmetric Hann ** 0.85); zero padding to 512;
  power spectrum; triangular filters on the ``1127 ln(1 + f/700)`` scale from 20 Hz to Nyquist;
  natural log floored at float32 epsilon. All in float32, no torchaudio needed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "SV_SAMPLE_RATE",
    "resample_kernel",
    "resample_32k_to_16k",
    "povey_window",
    "kaldi_mel_banks",
    "kaldi_fbank",
]

SV_SAMPLE_RATE = 16000
_LOWPASS_WIDTH = 6
_ROLLOFF = 0.99
_FRAME = 400  # 25 ms at 16 kHz
_SHIFT = 160  # 10 ms
_NFFT = 512  # the frame rounded up to a power of two
_PREEMPH = 0.97
_LOW_HZ = 20.0


def resample_kernel(orig: int = 2, new: int = 1) -> tuple[torch.Tensor, int]:
    """The Hann-windowed sinc kernel ``[new, 1, K]`` (float32) and its half-width for rates already
    reduced by their gcd (``2 -> 1`` for 32 -> 16 kHz gives ``[1, 1, 28]``, width 13)."""
    base = min(orig, new) * _ROLLOFF
    width = math.ceil(_LOWPASS_WIDTH * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx
    t = (t * base).clamp(-_LOWPASS_WIDTH, _LOWPASS_WIDTH)
    window = torch.cos(t * math.pi / _LOWPASS_WIDTH / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), t.sin() / t) * window * (base / orig)
    return kernel.to(torch.float32), width


def resample_32k_to_16k(wav: torch.Tensor) -> torch.Tensor:
    """``[..., N]`` float32 at 32 kHz -> ``[..., ceil(N / 2)]`` at 16 kHz (torchaudio's Resample)."""
    kernel, width = resample_kernel(2, 1)
    shape = wav.shape
    flat = wav.reshape(-1, shape[-1]).to(torch.float32)
    padded = F.pad(flat, (width, width + 2))
    out = F.conv1d(padded[:, None], kernel.to(flat.device), stride=2).transpose(1, 2).reshape(flat.shape[0], -1)
    return out[..., : math.ceil(shape[-1] / 2)].reshape(*shape[:-1], -1)


def povey_window(n: int = _FRAME) -> torch.Tensor:
    """Kaldi's Povey window: a symmetric Hann window to the power 0.85, float32 ``[n]``."""
    return torch.hann_window(n, periodic=False, dtype=torch.float32).pow(0.85)


def _mel(freq: torch.Tensor | float) -> torch.Tensor | float:
    if isinstance(freq, torch.Tensor):
        return 1127.0 * torch.log(1.0 + freq / 700.0)
    return 1127.0 * math.log(1.0 + freq / 700.0)


def kaldi_mel_banks(num_bins: int = 80, sample_rate: int = SV_SAMPLE_RATE) -> torch.Tensor:
    """Kaldi's triangular mel filters ``[num_bins, 256]`` (float32) over the lower half of a 512-point
    FFT, equally spaced on the Kaldi mel scale between 20 Hz and Nyquist."""
    nbins_fft = _NFFT // 2
    mel_low, mel_high = _mel(_LOW_HZ), _mel(0.5 * sample_rate)
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = torch.arange(num_bins).unsqueeze(1)
    left = mel_low + b * delta
    center = mel_low + (b + 1.0) * delta
    right = mel_low + (b + 2.0) * delta
    mel = _mel((sample_rate / _NFFT) * torch.arange(nbins_fft)).unsqueeze(0)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    return torch.clamp(torch.minimum(up, down), min=0.0).to(torch.float32)


def kaldi_fbank(wav: torch.Tensor, num_bins: int = 80) -> torch.Tensor:
    """Log-mel fbank ``[T, num_bins]`` of a mono 16 kHz float32 signal ``[N]`` or ``[1, N]``, with
    ``T = 1 + (N - 400) // 160`` (no frame for ``N < 400``)."""
    x = wav.reshape(-1).to(torch.float32)
    if x.numel() < _FRAME:
        return x.new_zeros((0, num_bins))
    n_frames = 1 + (x.numel() - _FRAME) // _SHIFT
    frames = x.as_strided((n_frames, _FRAME), (_SHIFT, 1))
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = F.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)[:, :-1]
    frames = (frames - _PREEMPH * previous) * povey_window().to(x.device)
    frames = F.pad(frames, (0, _NFFT - _FRAME))
    power = torch.fft.rfft(frames).abs().pow(2.0)
    banks = F.pad(kaldi_mel_banks(num_bins).to(x.device), (0, 1))  # the Nyquist bin has weight 0
    energies = torch.mm(power, banks.T)
    return torch.clamp(energies, min=torch.finfo(torch.float32).eps).log()
