"""v3/v4 SoVITS items and batches (upstream's ``TextAudioSpeakerLoaderV3/V4`` and their collates).

An item is ``(ssl, spec, mel, text)``: HuBERT features, the linear spectrogram of the 32 kHz wav
(what the reference encoder reads), the CFM's target mel at the version's rate and the phones. The
mel is ``log(clamp(mel_basis @ |STFT|, 1e-5))`` normalised to ``(x + 12) / 14 * 2 - 1``: v4 from the
32 kHz wav (n_fft = win 1280, hop 320), v3 from the wav resampled to 24 kHz (1024, 256).

v3's resampling: upstream decodes the file again with ffmpeg at 24 kHz (libswresample's default
filter). We resample with libsoxr (``soxr``, high quality), which agrees with ffmpeg's log-mel to
within 0.06 below ~10.5 kHz (but for the first and last two frames) and differs by up to ~1 in the
top three mel bands, where the two anti-aliasing filters cut off differently; 0.01 on average
(measured on the goldens; see docs/guide/train.md, "v3's 24 kHz mel").
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch

from gsv_ray.audio import AudioConfig, AudioFrontend
from gsv_ray.data.experiment import Experiment
from gsv_ray.data.sovits import SOVITS_BOUNDARIES_V3, SoVITSDataset, read_audio_and_features
from gsv_ray.models.sovits.v3 import MEL_FRONTENDS, MEL_NORM, MEL_SCALE

__all__ = [
    "CFM_BOUNDARIES",
    "CFMBatch",
    "CFMDataset",
    "CFMItem",
    "CFMPadding",
    "collate_cfm",
    "normalise_mel",
    "resample",
]

CFM_BOUNDARIES = SOVITS_BOUNDARIES_V3
WAV_RATE = 32000  # 5-wav32k


def normalise_mel(logmel: torch.Tensor) -> torch.Tensor:
    lo, hi = MEL_NORM
    return (logmel - lo) / (hi - lo) * 2 - 1


def resample(wav: torch.Tensor, rate_in: int, rate_out: int) -> torch.Tensor:
    """``[1, N]`` float waveform from ``rate_in`` to ``rate_out`` with libsoxr (high quality)."""
    if rate_in == rate_out:
        return wav
    import soxr

    out = soxr.resample(wav[0].numpy().astype(np.float32), rate_in, rate_out, quality="HQ")
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))[None]


class CFMItem(NamedTuple):
    ssl: torch.Tensor  # [1, 768, T]
    spec: torch.Tensor  # [1025, T]
    mel: torch.Tensor  # [100, T_mel] normalised
    text: torch.Tensor  # [L] int64
    name: str
    key: str = ""  # per-item draw key (a repeated copy's ``name#k``); "" = the name


class CFMBatch(NamedTuple):
    """Upstream's ``TextAudioSpeakerCollateV3/V4`` batch (rows sorted by spectrogram length)."""

    ssl: torch.Tensor
    spec: torch.Tensor
    mel: torch.Tensor
    ssl_lengths: torch.Tensor
    spec_lengths: torch.Tensor
    text: torch.Tensor
    text_lengths: torch.Tensor
    mel_lengths: torch.Tensor
    names: tuple[str, ...]
    keys: tuple[str, ...]  # per-row draw keys: the name, ``name#k`` for copy k of a repeated set

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CFMBatch:
        return CFMBatch(*[t.to(device, non_blocking=non_blocking) if isinstance(t, torch.Tensor) else t for t in self])


class CFMDataset(SoVITSDataset):
    """The v3/v4 items of the given utterances of a SoVITS-stage :class:`Experiment` (opened for
    v3 or v4): the utterances, lengths and spectrogram as every SoVITS version reads them, plus
    the version's mel target."""

    def __init__(
        self,
        experiment: Experiment,
        names: Sequence[str] | None = None,
        *,
        spec: AudioConfig | None = None,
        min_items: int | None = None,
    ) -> None:
        super().__init__(experiment, names, min_items=min_items, audio=spec)
        self.mel_config = MEL_FRONTENDS[self.version]
        self.mel_frontend = AudioFrontend.from_config(self.mel_config)

    def __getitem__(self, index: int) -> CFMItem:
        u = self.utterances[index]
        wav, spec, ssl = read_audio_and_features(u, self.frontend)
        with torch.no_grad():
            mel_wav = resample(wav, WAV_RATE, self.mel_config.sampling_rate)
            mel = normalise_mel(self.mel_frontend.mel(mel_wav)).squeeze(0)
        return CFMItem(ssl.float(), spec, mel, torch.tensor(u.phone_ids, dtype=torch.long), u.name, self.keys[index])


class CFMPadding(NamedTuple):
    """Lengths a batch is padded to at least (a micro-batch is padded as its global batch)."""

    frames: int  # spectrogram / ssl frames
    phones: int


def collate_cfm(items: Sequence[CFMItem], version: str, *, pad_to: CFMPadding | None = None) -> CFMBatch:
    """Sort by spectrogram length, zero-pad: ssl/spec to ``2 * (max // 2 + 1)``; mel to twice the
    padded spectrogram length (v4) or ``int(8 * (max_ssl // 8 + 1) * 1.875)`` (v3), as upstream."""
    if not items:
        raise ValueError("empty batch")
    order = sorted(range(len(items)), key=lambda i: -items[i].spec.shape[1])
    rows = [items[i] for i in order]
    b = len(rows)
    least = pad_to or CFMPadding(0, 0)
    raw_ssl = max(max(r.ssl.shape[2] for r in rows), least.frames)
    max_ssl = 2 * (raw_ssl // 2 + 1)
    max_spec = 2 * (max(max(r.spec.shape[1] for r in rows), least.frames) // 2 + 1)
    max_mel = int(8 * (raw_ssl // 8 + 1) * MEL_SCALE["v3"]) if version == "v3" else 2 * max_spec
    max_mel = max(max_mel, max(r.mel.shape[1] for r in rows))
    max_text = max(max(r.text.shape[0] for r in rows), least.phones)
    ssl = torch.zeros(b, rows[0].ssl.shape[1], max_ssl)
    spec = torch.zeros(b, rows[0].spec.shape[0], max_spec)
    mel = torch.zeros(b, rows[0].mel.shape[0], max_mel)
    text = torch.zeros(b, max_text, dtype=torch.long)
    lens = [torch.zeros(b, dtype=torch.long) for _ in range(4)]
    for i, r in enumerate(rows):
        ssl[i, :, : r.ssl.shape[2]] = r.ssl[0]
        spec[i, :, : r.spec.shape[1]] = r.spec
        mel[i, :, : r.mel.shape[1]] = r.mel
        text[i, : r.text.shape[0]] = r.text
        for t, n in zip(lens, (r.ssl.shape[2], r.spec.shape[1], r.text.shape[0], r.mel.shape[1])):
            t[i] = n
    ssl_len, spec_len, text_len, mel_len = lens
    return CFMBatch(
        ssl,
        spec,
        mel,
        ssl_len,
        spec_len,
        text,
        text_len,
        mel_len,
        tuple(r.name for r in rows),
        tuple(r.key or r.name for r in rows),
    )
