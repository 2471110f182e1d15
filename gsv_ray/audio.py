"""Audio for everyone above it (data, models, training, tracking): 16-bit PCM WAV I/O, and the
front-end of SoVITS training (linear spectrogram, slaney mel filterbank, log-mel).

WAV files are what GPT-SoVITS's preprocessing writes (``5-wav32k/``: 16-bit PCM) and what we write
for W&B audio samples; the stdlib ``wave`` module reads and writes them (no soundfile/librosa).

Numerically this is GPT-SoVITS's ``module/mel_processing.py`` (``spectrogram_torch``,
``spec_to_mel_torch``, ``mel_spectrogram_torch``) with the s2 data config:

* the waveform is reflect-padded by ``(n_fft - hop) // 2`` on each side and framed with
  ``center=False``, so frame ``i`` is centred on sample ``i * hop + hop / 2`` and a clip of
  ``N`` samples gives ``N // hop`` frames -- the ``segment_size // hop`` slicing relies on that;
* periodic Hann window, magnitude ``sqrt(re^2 + im^2 + 1e-8)`` (the epsilon keeps the gradient of
  the sqrt finite at silent bins);
* mel = ``log(clamp(mel_basis @ magnitude, min=1e-5))``, natural log, no scaling;
* the filterbank equals ``librosa.filters.mel`` (slaney mel scale, slaney area normalisation,
  ``fmax=None`` -> ``sr / 2``), rebuilt here in numpy so librosa is not a dependency.

Upstream caches windows and filterbanks in module-level dicts; here :class:`AudioFrontend` holds
them as non-persistent buffers (they follow ``.to(device)`` and never enter a state_dict), and the
plain functions build what they need per call.
"""

from __future__ import annotations

import dataclasses
import math
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Mapping

import numpy as np
import torch
from torch import nn

from gsv_ray.atomic import atomic_write
from gsv_ray.errors import GsvError

__all__ = [
    "hz_to_mel_slaney",
    "mel_to_hz_slaney",
    "mel_filterbank",
    "linear_spectrogram",
    "spec_to_mel",
    "mel_spectrogram",
    "AudioFrontend",
    "read_wav_pcm16",
    "to_pcm16",
    "wav_info",
    "write_wav",
]

_MAG_EPS = 1e-8
_LOG_CLAMP = 1e-5

# Slaney ("auditory toolbox") mel scale: linear below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel_slaney(hz: np.ndarray | float) -> np.ndarray:
    """Frequency in Hz -> slaney mel (float64)."""
    hz = np.asarray(hz, dtype=np.float64)
    lin = hz / _F_SP
    log = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log, lin)


def mel_to_hz_slaney(mel: np.ndarray | float) -> np.ndarray:
    """Slaney mel -> frequency in Hz (float64)."""
    mel = np.asarray(mel, dtype=np.float64)
    lin = _F_SP * mel
    log = _MIN_LOG_HZ * np.exp(_LOGSTEP * (np.maximum(mel, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log, lin)


def mel_filterbank(
    sampling_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """``[n_mels, n_fft // 2 + 1]`` float32 triangular filters, equal to ``librosa.filters.mel``
    with its defaults (slaney scale, slaney norm).

    The float32 rounding points match librosa's (each triangle is rounded to float32 before the
    float64 area normalisation, then rounded again), so the result is bitwise librosa's in practice.
    """
    if fmax is None:
        fmax = float(sampling_rate) / 2
    n_bins = 1 + n_fft // 2
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sampling_rate)
    # n_mels + 2 edges equally spaced on the mel scale: filter i spans edges i .. i + 2.
    edges = mel_to_hz_slaney(np.linspace(hz_to_mel_slaney(fmin), hz_to_mel_slaney(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    weights = np.zeros((n_mels, n_bins), dtype=np.float32)
    for i in range(n_mels):
        rising = -ramps[i] / widths[i]
        falling = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney normalisation: each triangle gets unit area in Hz (2 / bandwidth).
    weights *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, None]
    return weights


def _as_frames_input(y: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``[..., T]`` -> ``[N, T]`` plus the leading shape to restore."""
    if y.dim() == 0:
        raise ValueError("waveform must have a time axis")
    lead = tuple(y.shape[:-1])
    return y.reshape(-1, y.shape[-1]), lead


def linear_spectrogram(
    y: torch.Tensor,
    n_fft: int,
    hop_length: int,
    win_length: int,
    window: torch.Tensor | None = None,
) -> torch.Tensor:
    """Magnitude STFT ``[..., n_fft // 2 + 1, frames]`` of waveforms ``[..., T]``
    (GPT-SoVITS ``spectrogram_torch``; values beyond +-1 are not clipped)."""
    flat, lead = _as_frames_input(y)
    if window is None:
        window = torch.hann_window(win_length, dtype=y.dtype, device=y.device)
    pad = (n_fft - hop_length) // 2
    flat = torch.nn.functional.pad(flat.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(
        flat,
        n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=window,
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    spec = torch.view_as_real(spec)
    mag = torch.sqrt(spec.pow(2).sum(-1) + _MAG_EPS)
    return mag.reshape(*lead, *mag.shape[-2:])


def spec_to_mel(spec: torch.Tensor, mel_basis: torch.Tensor) -> torch.Tensor:
    """Linear magnitude ``[..., bins, frames]`` -> natural-log mel ``[..., n_mels, frames]``
    (GPT-SoVITS ``spec_to_mel_torch`` with its filterbank passed in)."""
    mel = torch.matmul(mel_basis.to(dtype=spec.dtype, device=spec.device), spec)
    return torch.log(torch.clamp(mel, min=_LOG_CLAMP))


def mel_spectrogram(
    y: torch.Tensor,
    n_fft: int,
    n_mels: int,
    sampling_rate: int,
    hop_length: int,
    win_length: int,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> torch.Tensor:
    """Log-mel ``[..., n_mels, frames]`` of waveforms ``[..., T]`` (argument order of
    GPT-SoVITS ``mel_spectrogram_torch``). Builds window and filterbank per call; use
    :class:`AudioFrontend` in loops."""
    basis = torch.from_numpy(mel_filterbank(sampling_rate, n_fft, n_mels, fmin, fmax))
    return spec_to_mel(linear_spectrogram(y, n_fft, hop_length, win_length), basis)


@dataclass(frozen=True)
class AudioConfig:
    """The audio side of an s2 json's ``data`` section, typed (what the datasets and the mel loss use).
    Defaults are upstream's v2 values."""

    sampling_rate: int = 32000
    n_fft: int = 2048  # data.filter_length
    hop_length: int = 640
    win_length: int = 2048
    n_mels: int = 128  # data.n_mel_channels
    fmin: float = 0.0
    fmax: float | None = None

    @classmethod
    def from_s2_data(cls, data: Mapping[str, Any]) -> AudioConfig:
        """From an s2 json ``"data"`` section (``filter_length``, ``hop_length``, ...)."""
        return cls(
            sampling_rate=int(data["sampling_rate"]),
            n_fft=int(data["filter_length"]),
            hop_length=int(data["hop_length"]),
            win_length=int(data["win_length"]),
            n_mels=int(data["n_mel_channels"]),
            fmin=float(data.get("mel_fmin", 0.0) or 0.0),
            fmax=None if data.get("mel_fmax") is None else float(data["mel_fmax"]),
        )


class AudioFrontend(nn.Module):
    """Spectrogram / mel front-end with its Hann window and filterbank as non-persistent buffers.

    Defaults are GPT-SoVITS's s2 data config (32 kHz, n_fft 2048, hop 640, 128 mels, fmin 0,
    fmax None).
    """

    window: torch.Tensor
    mel_basis: torch.Tensor

    def __init__(
        self,
        sampling_rate: int = 32000,
        n_fft: int = 2048,
        hop_length: int = 640,
        win_length: int = 2048,
        n_mels: int = 128,
        fmin: float = 0.0,
        fmax: float | None = None,
    ):
        super().__init__()
        self.sampling_rate = sampling_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length
        self.n_mels = n_mels
        self.fmin = fmin
        self.fmax = fmax
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        self.register_buffer(
            "mel_basis",
            torch.from_numpy(mel_filterbank(sampling_rate, n_fft, n_mels, fmin, fmax)),
            persistent=False,
        )

    @classmethod
    def from_config(cls, cfg: AudioConfig) -> AudioFrontend:
        return cls(**dataclasses.asdict(cfg))

    @classmethod
    def from_data_config(cls, data: Mapping[str, Any]) -> AudioFrontend:
        """Build from an s2 json ``"data"`` section (``filter_length``, ``hop_length``, ...)."""
        return cls.from_config(AudioConfig.from_s2_data(data))

    def spectrogram(self, y: torch.Tensor) -> torch.Tensor:
        """Waveform ``[..., T]`` -> linear magnitude ``[..., n_fft // 2 + 1, T // hop]``."""
        return linear_spectrogram(y, self.n_fft, self.hop_length, self.win_length, self.window.to(dtype=y.dtype))

    def spec_to_mel(self, spec: torch.Tensor) -> torch.Tensor:
        """Linear magnitude -> log-mel ``[..., n_mels, frames]``."""
        return spec_to_mel(spec, self.mel_basis)

    def mel(self, y: torch.Tensor) -> torch.Tensor:
        """Waveform ``[..., T]`` -> log-mel ``[..., n_mels, frames]``."""
        return self.spec_to_mel(self.spectrogram(y))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.mel(y)

    def extra_repr(self) -> str:
        return (
            f"sampling_rate={self.sampling_rate}, n_fft={self.n_fft}, hop_length={self.hop_length}, "
            f"win_length={self.win_length}, n_mels={self.n_mels}, fmin={self.fmin}, fmax={self.fmax}"
        )


# ----------------------------------------------------------------------------- WAV I/O
def wav_info(path: str | Path) -> tuple[int, int, int, int]:
    """(channels, sample width in bytes, rate, frames) from a WAV header."""
    with wave.open(str(path), "rb") as w:
        return w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()


def read_wav_pcm16(path: str | Path) -> torch.Tensor:
    """A 16-bit PCM WAV as float32 ``[channels, N]`` in [-1, 1) (``x / 32768``, what upstream's
    ffmpeg decode to float gives for a 32 kHz mono file)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise GsvError(
                f"{w.getsampwidth() * 8}-bit WAV, expected 16-bit PCM",
                path=path,
                fix="re-run GPT-SoVITS preprocessing step 1Ab",
            )
        channels = w.getnchannels()
        raw = w.readframes(w.getnframes())
    data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    return torch.from_numpy(data.reshape(-1, channels).T.copy())


def to_pcm16(waveform: Any) -> np.ndarray:
    """A mono waveform ``[T]`` (or ``[1, T]``; numpy or torch; float in [-1, 1] or int16) as int16."""
    if hasattr(waveform, "detach"):
        waveform = waveform.detach().to("cpu").float().numpy()
    a = np.asarray(waveform)
    a = a.reshape(-1) if a.ndim == 2 and 1 in a.shape else a
    if a.ndim != 1:
        raise ValueError(f"audio must be mono [T] (or [1, T]), got shape {tuple(a.shape)}")
    if a.dtype == np.int16:
        return a
    a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.round(np.clip(a, -1.0, 1.0) * 32767.0).astype("<i2")


def write_wav(path: str | Path, waveform: Any, sample_rate: int, *, overwrite: bool = True) -> Path:
    """Write a 16-bit mono PCM WAV (atomically)."""
    pcm = to_pcm16(waveform)

    def write(f: BinaryIO) -> None:
        with wave.open(f, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(int(sample_rate))
            w.writeframes(pcm.astype("<i2").tobytes())

    return atomic_write(path, write, overwrite=overwrite)
