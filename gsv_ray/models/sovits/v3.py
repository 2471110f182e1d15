"""The v3/v4 SoVITS generator (GPT-SoVITS ``SynthesizerTrnV3``): a flow-matching mel decoder.

Shared with v2: the frozen semantic front end (``ssl_proj`` + ``quantizer``), the text encoder
``enc_p`` and the reference encoder ``ref_enc``. New: ``bridge`` (1x1 conv + LeakyReLU to 512
channels), upsampled to the mel rate (nearest, x1.875 for v3's 24 kHz/hop-256 mel, x2 for v4's
32 kHz/hop-320), ``wns1`` (a WaveNet encoder conditioned on the detached ``ge``), and the CFM with
its DiT estimator. ``linear_mel`` is built (it is in every file) but never used.

Training (:meth:`forward`) returns the CFM loss. With ``freeze_quantizer`` (every upstream config)
``ssl_proj``, ``quantizer`` and ``enc_p`` run in eval mode without gradient, so they never change;
``ref_enc`` gets no gradient either (its output reaches the loss only through those and through
``wns1``'s detached conditioning). What trains: ``bridge``, ``wns1`` and the CFM (its LoRA adapters
when fine-tuned as upstream does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from gsv_ray.audio import AudioConfig
from gsv_ray.models.lora import PeftWrapper, add_lora
from gsv_ray.models.sovits.cfm import CFM, CFMDraws
from gsv_ray.models.sovits.commons import length_mask
from gsv_ray.models.sovits.config import SoVITSConfig
from gsv_ray.models.sovits.dit import DiT, DiTConfig
from gsv_ray.models.sovits.reference import MelStyleEncoder
from gsv_ray.models.sovits.semantic import build_quantizer, build_ssl_proj
from gsv_ray.models.sovits.text_encoder import TextEncoder
from gsv_ray.models.sovits.wavenet import WaveNet

__all__ = [
    "NEVER_TRAINED",
    "lora_export_state_dict",
    "CFM_VERSIONS",
    "DEFAULT_LORA_RANK",
    "LORA_TARGETS",
    "MEL_FRONTENDS",
    "MEL_NORM",
    "MEL_SCALE",
    "SoVITSV3Config",
    "SoVITSV3Generator",
]

CFM_VERSIONS = ("v3", "v4")
#: Mel frames per 50 Hz feature frame: v3's mel is 24 kHz / hop 256 (93.75 Hz), v4's 32 kHz / hop 320.
MEL_SCALE = {"v3": 1.875, "v4": 2.0}
#: The mel the CFM learns (upstream's ``TextAudioSpeakerLoaderV3/V4``): v3 from the wav resampled to
#: 24 kHz, v4 from the 32 kHz wav; 100 slaney mels, fmin 0, no fmax; then normalised by MEL_NORM.
MEL_FRONTENDS = {
    "v3": AudioConfig(sampling_rate=24000, n_fft=1024, hop_length=256, win_length=1024, n_mels=100),
    "v4": AudioConfig(sampling_rate=32000, n_fft=1280, hop_length=320, win_length=1280, n_mels=100),
}
#: ``(spec_min, spec_max)``: log-mel -> ``(x - spec_min) / (spec_max - spec_min) * 2 - 1``.
MEL_NORM = (-12.0, 2.0)
#: Fresh LoRA rank when neither the file nor the user says (the WebUI's default).
DEFAULT_LORA_RANK = 32
#: What upstream's LoRA adapts (``s2_train_v3_lora.py``).
LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")


_V2 = SoVITSConfig  # its defaults are upstream's v2 values


@dataclass(frozen=True)
class SoVITSV3Config:
    """Every width of ``SynthesizerTrnV3``: the s2 json ``model`` section's, then those upstream
    hard-codes (its values by default, so narrow test models can be built with the same code)."""

    version: str = "v4"
    # the s2 json model section and the text/reference encoders' widths: v2's (stated once, there)
    inter_channels: int = _V2.inter_channels
    hidden_channels: int = _V2.hidden_channels
    filter_channels: int = _V2.filter_channels
    n_heads: int = _V2.n_heads
    n_layers: int = _V2.n_layers
    kernel_size: int = _V2.kernel_size
    p_dropout: float = _V2.p_dropout
    gin_channels: int = _V2.gin_channels
    semantic_frame_rate: str = _V2.semantic_frame_rate
    freeze_quantizer: bool = _V2.freeze_quantizer
    n_symbols: int = 732  # v2's symbol table
    ssl_dim: int = _V2.ssl_dim
    codebook_size: int = _V2.codebook_size
    mrte_hidden_channels: int = _V2.mrte_hidden_channels
    mrte_heads: int = _V2.mrte_heads
    attn_window_size: int = _V2.attn_window_size
    ref_in_channels: int = 704  # upstream builds MelStyleEncoder(704, ...) for v3/v4
    ref_hidden_channels: int = _V2.ref_hidden_channels
    ref_heads: int = _V2.ref_heads
    ref_kernel_size: int = _V2.ref_kernel_size
    ref_dropout: float = _V2.ref_dropout
    # new in v3/v4
    bridge_channels: int = 512  # = the DiT's text_dim
    wns1_layers: int = 8
    wns1_kernel_size: int = 5
    mel_channels: int = 100
    dit: DiTConfig = DiTConfig()

    def __post_init__(self) -> None:
        if self.version not in CFM_VERSIONS:
            raise ValueError(f"SynthesizerTrnV3 version must be one of {CFM_VERSIONS}, got {self.version!r}")
        if self.dit.text_dim != self.bridge_channels or self.dit.mel_dim != self.mel_channels:
            raise ValueError("the DiT's text_dim / mel_dim must equal bridge_channels / mel_channels")

    @property
    def mel_scale(self) -> float:
        return MEL_SCALE[self.version]

    @classmethod
    def from_s2_config(cls, s2: Mapping[str, Any], version: str | None = None, **overrides: Any) -> SoVITSV3Config:
        """From an s2 json (its ``model`` section; the rest is hard-coded upstream) and overrides."""
        model = s2.get("model", s2)
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in model.items() if k in fields}
        kwargs["version"] = version or model.get("version") or "v4"
        if isinstance(overrides.get("dit"), Mapping):
            overrides = {**overrides, "dit": DiTConfig(**overrides["dit"])}
        return cls(**{**kwargs, **overrides})

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SoVITSV3Config:
        return cls(**{**d, "dit": DiTConfig(**d["dit"])})


class Wns1(nn.Module):
    """``wns1``: 1x1 conv, WaveNet conditioned on the *detached* ``g``, 1x1 conv, masked."""

    def __init__(self, channels: int, kernel_size: int, n_layers: int, gin_channels: int):
        super().__init__()
        self.pre = nn.Conv1d(channels, channels, 1)
        self.enc = WaveNet(channels, kernel_size, 1, n_layers, gin_channels=gin_channels)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = length_mask(lengths, x.size(2), x.dtype)
        x = self.pre(x) * mask
        x = self.enc(x, mask, g=g.detach())
        return self.proj(x) * mask, mask


class SoVITSV3Generator(nn.Module):
    def __init__(self, config: SoVITSV3Config = SoVITSV3Config()):
        super().__init__()
        c = config
        self.config = c
        self.version = c.version
        self.freeze_quantizer = bool(c.freeze_quantizer)
        self.enc_p = TextEncoder(
            c.inter_channels,
            c.hidden_channels,
            c.filter_channels,
            c.n_heads,
            c.n_layers,
            c.kernel_size,
            c.p_dropout,
            n_symbols=c.n_symbols,
            ssl_dim=c.ssl_dim,
            mrte_hidden_channels=c.mrte_hidden_channels,
            mrte_heads=c.mrte_heads,
            window_size=c.attn_window_size,
        )
        self.ref_enc = MelStyleEncoder(
            c.ref_in_channels, c.ref_hidden_channels, c.gin_channels, c.ref_kernel_size, c.ref_heads, c.ref_dropout
        )
        self.ssl_proj = build_ssl_proj(c.ssl_dim, c.semantic_frame_rate)
        self.quantizer = build_quantizer(c.ssl_dim, c.codebook_size)
        self.bridge = nn.Sequential(nn.Conv1d(c.inter_channels, c.bridge_channels, 1), nn.LeakyReLU(0.01))
        self.wns1 = Wns1(c.bridge_channels, c.wns1_kernel_size, c.wns1_layers, c.gin_channels)
        self.linear_mel = nn.Conv1d(c.bridge_channels, c.mel_channels, 1)  # in every file; never used
        self.cfm: CFM | PeftWrapper = CFM(c.mel_channels, DiT(c.dit))
        for m in self.frozen_front_end():  # never trained: upstream freezes them with the quantizer
            m.requires_grad_(False)

    # ------------------------------------------------------------------ LoRA
    def add_lora(self, rank: int) -> SoVITSV3Generator:
        """Fine-tune as upstream does: LoRA (``r = alpha = rank``) on the CFM's attention
        projections; the CFM's own weights frozen, the rest of the model as it was."""
        self.cfm = add_lora(self.cfm, LORA_TARGETS, rank)
        return self

    @property
    def flow(self) -> CFM:
        """The CFM itself, with or without its LoRA wrapper."""
        return self.cfm.inner if isinstance(self.cfm, PeftWrapper) else self.cfm  # type: ignore[return-value]

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> SoVITSV3Generator:
        """With ``freeze_quantizer`` the frozen front end (``ssl_proj``, ``quantizer``, ``enc_p``)
        stays in eval mode, as upstream's forward forces it."""
        super().train(mode)
        for m in self.frozen_front_end():
            m.eval()
        return self

    def frozen_front_end(self) -> tuple[nn.Module, ...]:
        return (self.ssl_proj, self.quantizer, self.enc_p) if self.freeze_quantizer else ()

    # ------------------------------------------------------------- inference
    @torch.no_grad()
    def reference_embedding(self, refer: torch.Tensor) -> torch.Tensor:
        """``ge`` ``[1, gin, 1]`` of one unpadded reference spectrogram ``[1, 1025, T]`` (upstream's
        ``decode_encp`` with ``ge=None``)."""
        mask = torch.ones(refer.size(0), 1, refer.size(2), dtype=refer.dtype, device=refer.device)
        return self.ref_enc(refer[:, : self.config.ref_in_channels] * mask, mask)

    @torch.no_grad()
    def decode_encp(self, ssl: torch.Tensor, text: torch.Tensor, ge: torch.Tensor) -> torch.Tensor:
        """The CFM's condition ``[1, 512, T_mel]`` as upstream's ``decode_encp`` (speed 1) makes it
        at inference: the semantic codes of HuBERT features ``ssl`` ``[1, 768, T50]``
        (``extract_latent``), decoded by the quantizer, with phones ``text`` ``[1, L]`` and the
        reference's ``ge``; no padding (one utterance)."""
        codes = self.quantizer(self.ssl_proj(ssl))[1]  # [n_q, 1, T25]
        quantized = F.interpolate(self.quantizer.decode(codes), scale_factor=2, mode="nearest")
        lengths = torch.tensor([quantized.size(2)], device=ssl.device)
        text_lengths = torch.tensor([text.size(1)], device=ssl.device)
        x = self.enc_p(quantized, lengths, text, text_lengths, ge)[0]
        fea = F.interpolate(self.bridge(x), scale_factor=self.config.mel_scale, mode="nearest")
        # upstream's wns1 length is codes x 3.875 (v3) / 4 (v4): never shorter than fea, so no mask
        return self.wns1(fea, torch.tensor([fea.size(2)], device=ssl.device), ge)[0]

    # -------------------------------------------------------------- training
    def features(
        self,
        ssl: torch.Tensor,
        spec: torch.Tensor,
        spec_lengths: torch.Tensor,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        mel_lengths: torch.Tensor,
        trace: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The CFM's condition ``mu`` ``[B, 512, T_mel']`` (``T_mel'`` = the spectrogram frames x the
        version's mel scale, floor)."""
        y_mask = length_mask(spec_lengths, spec.size(2), spec.dtype)
        ge = self.ref_enc(spec[:, : self.config.ref_in_channels] * y_mask, y_mask)
        with (
            torch.autocast(device_type=ssl.device.type, enabled=False),
            torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_quantizer),
        ):
            for m in self.frozen_front_end():
                m.eval()
            proj = self.ssl_proj(ssl)
            quantized, codes, commit_loss, _ = self.quantizer(proj, layers=[0])
            up = F.interpolate(quantized, scale_factor=2, mode="nearest")
            x, m_p, logs_p, enc_mask = self.enc_p(up, spec_lengths, text, text_lengths, ge)
        fea = self.bridge(x)
        fea_up = F.interpolate(fea, scale_factor=self.config.mel_scale, mode="nearest")
        mu, wns_mask = self.wns1(fea_up, mel_lengths, ge)
        if trace is not None:
            trace.update(
                {
                    "ge": ge,
                    "ssl_proj": proj,
                    "quantized": quantized,
                    "codes": codes,
                    "commit_loss": commit_loss,
                    "enc_p.x": x,
                    "enc_p.m_p": m_p,
                    "enc_p.logs_p": logs_p,
                    "enc_p.y_mask": enc_mask,
                    "bridge": fea,
                    "bridge_interp": fea_up,
                    "wns1.fea": mu,
                    "wns1.mask": wns_mask,
                }
            )
        return mu

    def forward(
        self,
        ssl: torch.Tensor,
        spec: torch.Tensor,
        mel: torch.Tensor,
        spec_lengths: torch.Tensor,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        mel_lengths: torch.Tensor,
        *,
        prompt_u: torch.Tensor | None = None,
        draws: CFMDraws = CFMDraws(),
        trace: dict[str, torch.Tensor] | None = None,
        on_call: Callable[[str, dict[str, torch.Tensor]], None] | None = None,
    ) -> torch.Tensor:
        """The CFM loss of a batch (upstream's ``SynthesizerTrnV3.forward``). ``mel`` ``[B, 100, T]`` is
        the normalised target; ``prompt_u`` ``[B]`` replaces the uniform draw of the prompt lengths
        (``floor(u * mel_lengths * 2/3)``), ``draws`` the CFM's."""
        mu = self.features(ssl, spec, spec_lengths, text, text_lengths, mel_lengths, trace)
        b = ssl.size(0)
        u = prompt_u if prompt_u is not None else torch.rand([b], device=mu.device)
        prompt_len = (u * (mel_lengths * 2 / 3)).floor().to(torch.long)
        n = min(mel.size(-1), mu.size(-1))
        x1, mu = mel[:, :, :n], mu[:, :, :n]
        if draws.x0 is not None and draws.x0.size(-1) != n:  # noise drawn for the padded mel: crop as x1
            draws = dataclasses.replace(draws, x0=draws.x0[..., :n])
        if trace is not None:
            trace.update({"prompt_len": prompt_len, "cfm_in.x1": x1})
        return self.cfm(x1, mel_lengths, prompt_len, mu, draws, on_call)


#: Trainable upstream, but never given a gradient (9.7 of tests/reference/gpt_sovits/goldens/README.md):
#: ``ref_enc``'s output reaches the loss only through the no-grad front end and wns1's detached
#: condition; ``linear_mel``
#: is unused. Freezing them changes no number (AdamW skips gradient-less parameters) and spares DDP
#: an unused-parameter search every step.
NEVER_TRAINED = ("ref_enc.", "linear_mel.")


def lora_export_state_dict(model: SoVITSV3Generator) -> dict[str, torch.Tensor]:
    """What upstream's LoRA trainer exports: every state_dict entry that is not a parameter upstream
    freezes (``ssl_proj``, ``enc_p``, the CFM's own weights) — so the adapters, ``ref_enc``,
    ``bridge``, ``wns1``, ``linear_mel`` and every buffer."""
    params = dict(model.named_parameters())
    frozen_upstream = {
        n for n in params if n.startswith(("ssl_proj.", "enc_p.")) or (n.startswith("cfm.") and ".lora_" not in n)
    }
    return {k: v for k, v in model.state_dict().items() if k not in frozen_upstream}
