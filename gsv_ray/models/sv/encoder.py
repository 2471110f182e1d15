"""``SpeakerEncoder``: upstream's v2Pro speaker-verification checkpoint, read safely, as an API.

* :meth:`SpeakerEncoder.load` reads ``pretrained_eres2netv2w24s4ep4.ckpt`` (a ``torch.save``d
  ``state_dict``) with the project's weights-only loader; anything else is a one-line
  :class:`~gsv_ray.errors.GsvError` naming the file.
* :meth:`SpeakerEncoder.embed` -> the 192-d embedding (the model's plain ``forward``);
  :meth:`SpeakerEncoder.sv_vector` -> the 20480-d vector v2Pro's data preparation stores in
  ``7-sv_cn/<name>.pt`` (``forward3``). Both take a mono waveform at 32 kHz (resampled to 16 kHz as
  ``2-get-sv.py`` does) or 16 kHz (used as is), float in [-1, 1].
* :func:`spk_sim`: cosine similarity of two embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gsv_ray.errors import GsvError, shown_value
from gsv_ray.fbank import SV_SAMPLE_RATE, kaldi_fbank, resample_32k_to_16k
from gsv_ray.io.identify import is_tensor_mapping, strip_wrapper_prefixes
from gsv_ray.io.safeload import safe_load
from gsv_ray.models.sv.eres2netv2 import ERes2NetV2

__all__ = ["SpeakerEncoder", "SpeakerVectors", "spk_sim", "sv_state_dict_problem", "EMBEDDING_DIM", "SV_DIM"]

EMBEDDING_DIM = 192
SV_DIM = 20480
_FIX = "pass GPT-SoVITS's pretrained_models/sv/pretrained_eres2netv2w24s4ep4.ckpt"


def sv_state_dict_problem(model: ERes2NetV2, sd: dict[str, torch.Tensor]) -> str | None:
    """Why ``sd`` cannot be loaded strictly into ``model`` (missing/unexpected keys, shapes), or None."""
    want = model.state_dict()
    missing = [k for k in want if k not in sd]
    extra = [k for k in sd if k not in want]
    if missing or extra:

        def first(keys: list[str]) -> str:  # a hostile key may be huge: shown bounded
            return f", e.g. {shown_value(keys[0], 60)}" if keys else ""

        return (
            f"not an ERes2NetV2 speaker-verification state_dict ({len(missing)} keys missing{first(missing)}; "
            f"{len(extra)} unexpected{first(extra)})"
        )
    for k, t in want.items():
        if tuple(sd[k].shape) != tuple(t.shape):
            return f"ERes2NetV2 key {k} has shape {tuple(sd[k].shape)}, expected {tuple(t.shape)}"
        if t.is_floating_point() and not bool(torch.isfinite(sd[k].float()).all()):
            return f"ERes2NetV2 key {k} holds NaN or infinite values"
    return None


@dataclass(frozen=True)
class SpeakerVectors:
    """One clip's ``embedding`` ``[192]`` (``forward``) and v2Pro ``sv`` vector ``[20480]`` (``forward3``)."""

    embedding: torch.Tensor
    sv: torch.Tensor


@dataclass(frozen=True)
class SpeakerEncoder:
    """An eval-mode, float32 ERes2NetV2 and the front-end it expects."""

    model: ERes2NetV2

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], *, source: str | Path = "state_dict") -> "SpeakerEncoder":
        """Strictly load ``sd`` (upstream's keys); raises :class:`GsvError` naming ``source``."""
        model = ERes2NetV2()
        problem = sv_state_dict_problem(model, sd)
        if problem:
            raise GsvError(problem, path=source, fix=_FIX)
        model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in sd.items()})
        return cls(model.eval().requires_grad_(False))

    @classmethod
    def load(cls, path: str | Path) -> "SpeakerEncoder":
        """Read upstream's ``pretrained_eres2netv2w24s4ep4.ckpt`` safely (no code runs)."""
        obj = safe_load(path).obj
        if not is_tensor_mapping(obj):
            held = f" (its top level holds keys {shown_value(list(obj))})" if isinstance(obj, dict) else ""
            raise GsvError(
                f"not a speaker-verification model: expected a torch.save'd state_dict of tensors{held}",
                path=path,
                fix=_FIX,
            )
        keys, _ = strip_wrapper_prefixes(list(obj))
        return cls.from_state_dict(dict(zip(keys, obj.values())), source=path)

    @staticmethod
    def features(wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Mono ``[N]``/``[1, N]`` at 32 or 16 kHz -> the fbank batch ``[1, T, 80]`` the model takes."""
        wav = torch.as_tensor(wav, dtype=torch.float32)
        if wav.dim() == 2 and wav.shape[0] == 1:
            wav = wav[0]
        if wav.dim() != 1:
            raise ValueError(f"speaker embedding needs mono audio [N] or [1, N], got shape {tuple(wav.shape)}")
        if sample_rate == 2 * SV_SAMPLE_RATE:
            wav = resample_32k_to_16k(wav)
        elif sample_rate != SV_SAMPLE_RATE:
            raise ValueError(f"speaker embedding takes 32 or 16 kHz audio, got {sample_rate} Hz")
        feats = kaldi_fbank(wav)
        if feats.shape[0] < 8:  # the network downsamples time by 8
            raise ValueError(f"audio too short for a speaker embedding: {wav.numel()} samples at 16 kHz")
        return feats.unsqueeze(0)

    def vectors(self, wav: torch.Tensor, sample_rate: int) -> SpeakerVectors:
        """Both vectors from one pass of the network (what ``embed`` and ``sv_vector`` return)."""
        with torch.no_grad():
            fused = self.model.fused_map(self.features(wav, sample_rate).to(self._device()))
            stats = self.model.pool(fused)  # its first half is forward3's time mean
            return SpeakerVectors(embedding=self.model.seg_1(stats)[0], sv=stats[0, : stats.shape[1] // 2])

    def embed(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """The 192-d speaker embedding ``[192]`` (upstream's plain ``forward``)."""
        return self.vectors(wav, sample_rate).embedding

    def sv_vector(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """The v2Pro ``sv`` vector ``[20480]`` (``forward3``; what ``7-sv_cn/<name>.pt`` holds as ``[1, 20480]``)."""
        return self.vectors(wav, sample_rate).sv

    def to(self, device: torch.device | str) -> "SpeakerEncoder":
        """The same encoder with its model on ``device``."""
        return SpeakerEncoder(self.model.to(device))

    def _device(self) -> torch.device:
        return self.model.conv1.weight.device


def spk_sim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two speaker embeddings (any shape with 192 values each)."""
    return float(F.cosine_similarity(a.reshape(1, -1).double(), b.reshape(1, -1).double()).item())
