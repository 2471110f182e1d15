"""Configuration of the SoVITS generator (GPT-SoVITS ``SynthesizerTrn``, v1/v2/v2Pro/v2ProPlus).

Upstream builds its generator from an s2 json's ``model`` section plus two derived values
(``filter_length // 2 + 1`` spectrogram bins and ``segment_size // hop_length`` frames), and
hard-codes many widths in its classes. Every such width is a field here, defaulting to upstream's
value, so that narrowed models (e.g. the small fixture files) can be built with the same code.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gsv_ray.resources import CODEBOOK_SIZE, PRO_VERSIONS, SSL_DIM, VITS_VERSIONS, s2_config  # noqa: F401 -- the versions re-exported for the models

# Keys of an s2 json ``model`` section that map 1:1 onto config fields.
_MODEL_KEYS = (
    "inter_channels",
    "hidden_channels",
    "filter_channels",
    "n_heads",
    "n_layers",
    "kernel_size",
    "p_dropout",
    "resblock",
    "resblock_kernel_sizes",
    "resblock_dilation_sizes",
    "upsample_rates",
    "upsample_initial_channel",
    "upsample_kernel_sizes",
    "n_layers_q",
    "use_spectral_norm",
    "gin_channels",
    "semantic_frame_rate",
    "freeze_quantizer",
)


def _tuple(x: Any) -> tuple:
    return tuple(_tuple(v) if isinstance(v, (list, tuple)) else v for v in x)


@dataclass
class SoVITSConfig:
    """Every width and constant of the VITS-style SoVITS generator.

    The first block mirrors the s2 json ``model`` section; the rest are values upstream hard-codes.
    ``None`` for ``n_symbols`` / ``ref_in_channels`` means "upstream's value for ``version``".
    """

    version: str = "v2"
    # derived from the s2 json's data/train sections
    spec_channels: int = 1025  # data.filter_length // 2 + 1
    segment_frames: int = 32  # train.segment_size // data.hop_length
    # the s2 json model section
    inter_channels: int = 192
    hidden_channels: int = 192
    filter_channels: int = 768
    n_heads: int = 2
    n_layers: int = 6
    kernel_size: int = 3
    p_dropout: float = 0.1
    resblock: str = "1"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    upsample_rates: tuple[int, ...] = (10, 8, 2, 2, 2)
    upsample_initial_channel: int = 512
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 8, 2, 2)
    gin_channels: int = 512
    semantic_frame_rate: str = "25hz"
    freeze_quantizer: bool = True
    n_layers_q: int = 3  # present in the json, unused by the model
    use_spectral_norm: bool = False  # present in the json, unused by the generator
    n_speakers: int = 300  # passed by the trainer, unused by the model
    # widths upstream hard-codes
    n_symbols: int | None = None  # text embedding rows: 322 (v1) / 732 (later)
    ssl_dim: int = SSL_DIM  # HuBERT feature width
    codebook_size: int = CODEBOOK_SIZE
    n_codebooks: int = 1
    attn_window_size: int = 4  # relative-position window of the text-encoder attention
    mrte_hidden_channels: int = 512  # MRTE(192 in, 512 hidden, 192 out)
    mrte_heads: int = 4
    ref_in_channels: int | None = None  # reference-encoder input bins: spec_channels (v1) / 704
    ref_hidden_channels: int = 128  # MelStyleEncoder style_hidden
    ref_heads: int = 2
    ref_kernel_size: int = 5
    ref_dropout: float = 0.1
    sv_emb_channels: int = 20480  # speaker-verification embedding width (Pro)
    ge_text_channels: int = 512  # ge_to512 output width (Pro); must equal mrte_hidden_channels
    posterior_kernel_size: int = 5
    posterior_dilation_rate: int = 1
    posterior_layers: int = 16
    flow_kernel_size: int = 5
    flow_dilation_rate: int = 1
    flow_layers: int = 4  # WaveNet layers per coupling layer
    n_flows: int = 4  # coupling layers (each followed by a channel flip)
    kmeans_iters: int = 50
    vq_decay: float = 0.99
    vq_epsilon: float = 1e-5
    vq_dead_code_threshold: int = 2
    # model-section keys we do not know, kept so a config round-trips
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.version not in VITS_VERSIONS:
            raise ValueError(f"SoVITS generator version must be one of {VITS_VERSIONS}, got {self.version!r}")
        if self.semantic_frame_rate not in ("25hz", "50hz"):
            raise ValueError(f"semantic_frame_rate must be '25hz' or '50hz', got {self.semantic_frame_rate!r}")
        for name in ("resblock_kernel_sizes", "resblock_dilation_sizes", "upsample_rates", "upsample_kernel_sizes"):
            setattr(self, name, _tuple(getattr(self, name)))
        if self.n_symbols is None:
            self.n_symbols = 322 if self.version == "v1" else 732
        if self.ref_in_channels is None:
            self.ref_in_channels = self.spec_channels if self.version == "v1" else 704

    @property
    def is_pro(self) -> bool:
        return self.version in PRO_VERSIONS

    @property
    def text_ge_channels(self) -> int:
        """Width of the reference embedding the text encoder's MRTE receives."""
        return self.ge_text_channels if self.is_pro else self.gin_channels

    @classmethod
    def from_s2_config(cls, cfg: dict[str, Any], version: str | None = None, **overrides: Any) -> SoVITSConfig:
        """Build from a whole s2 json (``train``/``data``/``model``) or a bare ``model`` section.

        ``version`` wins over ``model.version`` / top-level ``version``; ``overrides`` set any field
        (e.g. narrowed hard-coded widths).
        """
        model = dict(cfg.get("model", cfg))
        data = cfg.get("data", {}) or {}
        train = cfg.get("train", {}) or {}
        version = version or model.get("version") or cfg.get("version") or "v2"
        kwargs: dict[str, Any] = {"version": version}
        if "filter_length" in data:
            kwargs["spec_channels"] = int(data["filter_length"]) // 2 + 1
        if "segment_size" in train and "hop_length" in data:
            kwargs["segment_frames"] = int(train["segment_size"]) // int(data["hop_length"])
        if "n_speakers" in data:
            kwargs["n_speakers"] = int(data["n_speakers"])
        extra = {}
        for key, value in model.items():
            if key in _MODEL_KEYS:
                kwargs[key] = value
            elif key != "version":
                extra[key] = value
        kwargs["extra"] = extra
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def default(cls, version: str, **overrides: Any) -> SoVITSConfig:
        """Upstream's real-size config for ``version`` (the packaged ``gsv_ray/resources/s2_<ver>.json``)."""
        return cls.from_s2_config(load_s2_config(version), version, **overrides)

    def model_section(self) -> dict[str, Any]:
        """The s2 json ``model`` section this config corresponds to (lists, like the json)."""
        out: dict[str, Any] = {}
        for key in _MODEL_KEYS:
            value = getattr(self, key)
            out[key] = json.loads(json.dumps(value))  # tuples -> lists
        out.update(self.extra)
        out["version"] = self.version
        return out

    def replace(self, **changes: Any) -> SoVITSConfig:
        return dataclasses.replace(self, **changes)


def load_s2_config(version: str) -> dict[str, Any]:
    """The packaged upstream s2 json for ``version`` (``v1``..``v4``)."""
    return s2_config(version)


#: Upstream's s2.json ``train`` constants the SoVITS step uses (its values when a config has none).
C_MEL, C_KL = 45.0, 1.0


@dataclass(frozen=True)
class SoVITSTrainConstants:
    """The s2 json ``train`` section's constants of the SoVITS step, typed."""

    c_mel: float = C_MEL  # mel L1 weight
    c_kl: float = C_KL  # KL weight
    betas: tuple[float, float] = (0.8, 0.99)  # AdamW
    eps: float = 1e-9
    text_low_lr_rate: float = 0.4  # the text side's LR, as a fraction of the peak

    @classmethod
    def from_s2(cls, s2: Mapping[str, Any]) -> SoVITSTrainConstants:
        train = s2.get("train") or {}
        d = cls()
        return cls(
            c_mel=float(train.get("c_mel", d.c_mel)),
            c_kl=float(train.get("c_kl", d.c_kl)),
            betas=tuple(float(b) for b in train.get("betas", d.betas)),  # type: ignore[arg-type]
            eps=float(train.get("eps", d.eps)),
            text_low_lr_rate=float(train.get("text_low_lr_rate", d.text_low_lr_rate)),
        )
