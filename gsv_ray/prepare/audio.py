"""The audio half of GPT-SoVITS's ``2-get-hubert-wav32k.py``, numerically as upstream computes it
(goldens ``PREPARE.md`` section 1, in the repository's ``tests/reference/gpt_sovits/goldens/``):

1. :func:`decode_32k`: decode any FFmpeg-readable file to 32 kHz mono float32. Upstream pipes the
   ``ffmpeg`` CLI (``-f f32le -ac 1 -ar 32000``); we call the same libraries through PyAV (it ships its
   own FFmpeg, so no CLI has to be installed, and no subprocess per clip). Its ``AudioResampler`` is
   libswresample with the CLI's defaults (Kaiser-windowed sinc, filter_size 32, phase_shift 10, cutoff
   0.97; stereo mixed as ``(L + R) / sqrt 2``, no normalisation): PyAV 18.1 (FFmpeg 8, libswresample
   6.3) reproduces the goldens' ffmpeg 5.1.9 output bitwise for all eight clips (WAV s16/float, 16/32/
   44.1/48 kHz, stereo, FLAC, MP3).
2. :func:`check_peak`: a clip whose peak exceeds 2.2 is dropped (upstream prints ``<name>-filtered``).
3. :func:`loudness_mix`: half a peak-normalised copy at 0.95 of full scale plus half the original, in
   float32 with float32-rounded constants, scaled by 32768 (the WAV) or 1145.14 (HuBERT's input).
4. :func:`wav32k_int16`: the WAV samples, truncated toward zero. Out-of-range values (peak above about
   1.05) wrap modulo 65536 on x86 in upstream (numpy's C cast, undefined behaviour elsewhere); here the
   wrap is explicit integer arithmetic, so it is the same on every platform, and counted.
5. :func:`wav16k`: HuBERT's input, libsoxr HQ 32 -> 16 kHz (librosa 0.10's default), ``ceil(N / 2)``.

A clip that cannot be used raises a :class:`ClipProblem` naming the file, the reason and the fix.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from gsv_ray.atomic import atomic_write
from gsv_ray.audio import write_wav
from gsv_ray.errors import ConfigError, GsvError
from gsv_ray.models.hubert import Hubert, hubert_frames

__all__ = [
    "SR_32K",
    "SR_16K",
    "PEAK_LIMIT",
    "WAV_SCALE",
    "HUBERT_SCALE",
    "ClipProblem",
    "UnreadableClip",
    "SilentClip",
    "TooLoudClip",
    "TooShortClip",
    "Int16Overflow",
    "NonFiniteFeatures",
    "PreparedAudio",
    "decode_32k",
    "check_peak",
    "loudness_mix",
    "wav32k_int16",
    "wav16k",
    "prepare_clip",
    "write_wav32k",
    "cnhubert",
    "write_cnhubert",
]

SR_32K = 32000
SR_16K = 16000
PEAK_LIMIT = 2.2  # upstream drops a clip whose decoded peak is above this
_MAXX = 0.95
_ALPHA = 0.5
WAV_SCALE = 32768.0
HUBERT_SCALE = 1145.14

Overflow = Literal["wrap", "clip", "error"]
_EXTRA_FIX = "install the prepare extra: pip install 'gsv-ray[prepare]'"


class ClipProblem(GsvError):
    """A clip upstream would not turn into training data; :attr:`reason` is a short tag for reports."""

    reason = "problem"


class UnreadableClip(ClipProblem):
    reason = "unreadable"


class SilentClip(ClipProblem):
    reason = "silent"


class TooLoudClip(ClipProblem):
    reason = "too_loud"


class TooShortClip(ClipProblem):
    reason = "too_short"


class Int16Overflow(ClipProblem):
    reason = "int16_overflow"


class NonFiniteFeatures(ClipProblem):
    reason = "nan_features"  # upstream: "nan filtered:<name>"


@dataclass(frozen=True)
class PreparedAudio:
    """One clip's audio outputs: ``wav32k`` (int16, for ``5-wav32k/``), ``wav16k`` (float32, HuBERT's
    input), the decoded ``peak`` and ``out_of_range``, the number of int16 samples that wrapped/clipped."""

    peak: float
    wav32k: np.ndarray
    wav16k: np.ndarray
    out_of_range: int


def decode_32k(path: str | Path) -> np.ndarray:
    """Decode ``path`` (any format FFmpeg reads) to 32 kHz mono float32, as upstream's ffmpeg CLI call.

    Raises :class:`UnreadableClip` for a missing/undecodable file or one without audio."""
    try:
        import av  # PyAV: FFmpeg's libraries, bundled (the ``prepare`` extra)
    except ImportError as e:
        raise ConfigError("decoding audio needs PyAV, which is not installed", fix=_EXTRA_FIX) from e
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise UnreadableClip("no audio stream", path=path, fix="give an audio file")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SR_32K)
            parts = []
            for frame in container.decode(container.streams.audio[0]):
                parts.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
            parts.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))  # flush the filter
    except (av.FFmpegError, OSError, ValueError) as e:
        raise UnreadableClip(
            f"cannot decode audio ({type(e).__name__}: {e})",
            path=path,
            fix="check the file: convert it to WAV or FLAC, or remove it from the list",
        ) from e
    if not parts:
        raise SilentClip("no audio samples", path=path, fix="remove the clip from the list")
    return np.concatenate(parts).astype(np.float32, copy=False)


def check_peak(audio: np.ndarray, *, path: str | Path | None = None) -> float:
    """The clip's peak ``max |x|``; raises :class:`TooLoudClip` above 2.2 (upstream's filter) and
    :class:`SilentClip` for an all-zero clip (upstream divides 0 by 0 and fails on NaN)."""
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if not math.isfinite(peak):
        raise UnreadableClip("decoded samples are not finite", path=path, fix="re-export the recording")
    if peak > PEAK_LIMIT:
        raise TooLoudClip(
            f"peak {peak:.4g} above {PEAK_LIMIT} (upstream drops it)",
            path=path,
            fix="re-export the recording at a lower level, or remove it from the list",
        )
    if peak == 0.0:
        raise SilentClip("all samples are zero", path=path, fix="remove the clip from the list")
    return peak


def loudness_mix(audio: np.ndarray, peak: float, scale: float) -> np.ndarray:
    """``(x / peak) * (0.95 * 0.5 * scale) + (0.5 * scale) * x`` in float32, constants rounded to
    float32 first, evaluated in upstream's order (bitwise what numpy 1.26 computes there)."""
    x = np.asarray(audio, dtype=np.float32)
    c_norm = np.float32(_MAXX * _ALPHA * scale)
    c_orig = np.float32((1 - _ALPHA) * scale)
    return (x / np.float32(peak)) * c_norm + c_orig * x


def wav32k_int16(
    audio: np.ndarray, peak: float, *, overflow: Overflow = "wrap", path: str | Path | None = None
) -> tuple[np.ndarray, int]:
    """``5-wav32k`` samples: ``loudness_mix(x, peak, 32768)`` truncated toward zero to int16, and the
    count of samples outside the int16 range. Those ``overflow="wrap"`` like upstream on x86 (modulo
    65536: the goldens), ``"clip"`` saturate, ``"error"`` raises :class:`Int16Overflow`."""
    t = np.trunc(loudness_mix(audio, peak, WAV_SCALE)).astype(np.int64)
    bad = int(np.count_nonzero((t < -32768) | (t > 32767)))
    if bad and overflow == "error":
        raise Int16Overflow(
            f"{bad} samples beyond 16-bit range after the loudness mix (peak {peak:.4g})",
            path=path,
            fix="re-export the recording with a peak at or below 1.0",
        )
    if overflow == "clip":
        t = np.clip(t, -32768, 32767)
    elif overflow == "wrap":
        t = (t + 32768) % 65536 - 32768
    elif overflow != "error":
        raise ConfigError(f"unknown overflow policy {overflow!r}", fix="use wrap, clip or error")
    return t.astype(np.int16), bad


def wav16k(audio: np.ndarray, peak: float) -> np.ndarray:
    """HuBERT's input: ``loudness_mix(x, peak, 1145.14)`` resampled 32 -> 16 kHz by libsoxr HQ (what
    librosa 0.10's default gives), padded/trimmed to ``ceil(N / 2)``; float32."""
    try:
        import soxr  # python-soxr (the ``prepare`` extra)
    except ImportError as e:
        raise ConfigError("resampling needs python-soxr, which is not installed", fix=_EXTRA_FIX) from e
    mixed = loudness_mix(audio, peak, HUBERT_SCALE)
    out = np.asarray(soxr.resample(mixed, SR_32K, SR_16K, quality="HQ"), dtype=np.float32)
    n = -(-len(mixed) // 2)
    return out[:n] if len(out) >= n else np.pad(out, (0, n - len(out)))


def prepare_clip(path: str | Path, *, overflow: Overflow = "wrap") -> PreparedAudio:
    """Decode, filter and mix one clip: everything upstream writes except HuBERT's features.
    Raises a :class:`ClipProblem` (the file named) for a clip upstream would not keep."""
    audio = decode_32k(path)
    peak = check_peak(audio, path=path)
    pcm, bad = wav32k_int16(audio, peak, overflow=overflow, path=path)
    return PreparedAudio(peak=peak, wav32k=pcm, wav16k=wav16k(audio, peak), out_of_range=bad)


def write_wav32k(path: str | Path, pcm: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write ``5-wav32k/<name>`` atomically: 16-bit mono PCM WAV at 32 kHz (upstream's 44-byte header)."""
    if pcm.dtype != np.int16:
        raise TypeError(f"wav32k samples must be int16, got {pcm.dtype}")
    return write_wav(path, pcm, SR_32K, overwrite=overwrite)


def cnhubert(model: Hubert, wav16k: np.ndarray, *, path: str | Path | None = None) -> torch.Tensor:
    """``4-cnhubert`` features: ``model`` run on ``wav16k`` as one [1, N] batch (no feature-extractor
    normalisation, as upstream), the last hidden state as a contiguous float32 [1, 768, T] on the CPU.
    One clip per forward: the GroupNorm over time makes padded batches give other numbers."""
    if hubert_frames(len(wav16k), model.config) < 1:
        raise TooShortClip(
            f"{len(wav16k) / SR_16K:.3f} s is too short for HuBERT", path=path, fix="remove the clip from the list"
        )
    param = next(model.parameters())
    with torch.inference_mode():
        hidden = model(torch.from_numpy(np.ascontiguousarray(wav16k, dtype=np.float32))[None].to(param.device))
    feats = hidden.transpose(1, 2).float().cpu().contiguous()
    if not bool(torch.isfinite(feats).all()):
        raise NonFiniteFeatures(
            "HuBERT features are not finite (upstream: nan filtered)",
            path=path,
            fix="check the recording; remove the clip from the list",
        )
    return feats


def write_cnhubert(path: str | Path, feats: torch.Tensor, *, overwrite: bool = False) -> Path:
    """Write ``4-cnhubert/<name>.pt`` atomically: ``torch.save`` of a float32 [1, 768, T] tensor that
    ``torch.load(weights_only=True)`` reads (upstream saves a transposed view with requires_grad; the
    values are the same, ours is contiguous and detached)."""
    if feats.dtype != torch.float32 or feats.dim() != 3 or feats.shape[0] != 1:
        raise ValueError(f"cnhubert features must be float32 [1, C, T], got {feats.dtype} {tuple(feats.shape)}")
    buf = io.BytesIO()
    torch.save(feats.detach().cpu().contiguous().clone(), buf)
    return atomic_write(path, lambda f: f.write(buf.getvalue()), overwrite=overwrite)
