"""HuBERT (``chinese-hubert-base``) in plain PyTorch: the ``transformers.HubertModel`` architecture that
GPT-SoVITS's ``2-get-hubert-wav32k.py`` runs (goldens ``PREPARE.md`` section 1.6), without transformers.

* feature encoder: 7 bias-free convs (kernels 10,3,3,3,3,2,2; strides 5,2,...), a per-channel GroupNorm
  after the first only, GELU after each;
* feature projection: LayerNorm(512) then Linear 512 -> 768;
* encoder: a grouped positional conv (kernel 128, padding 64, 16 groups, weight norm over the kernel
  axis; its last frame dropped; GELU) added to the input, LayerNorm, then post-norm layers (attention,
  residual, LayerNorm, FFN with GELU, residual, LayerNorm).

Module and parameter names equal transformers', so a Hugging Face folder's state_dict loads strictly.
The weight-normed positional conv uses PyTorch's public ``parametrizations.weight_norm`` (keys
``...parametrizations.weight.original0/1``); older checkpoints' ``weight_g``/``weight_v`` are renamed.
Weights are read safely (safetensors, or ``torch.load(weights_only=True)``) and kept in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from gsv_ray.models.hf_folder import load_strict, read_config, read_state_dict, refuse_variants

__all__ = ["HubertConfig", "Hubert", "hubert_frames"]

_OLD_KEYS = {
    "encoder.pos_conv_embed.conv.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    "encoder.pos_conv_embed.conv.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
}


@dataclass(frozen=True)
class HubertConfig:
    """The ``config.json`` fields this architecture uses (defaults: chinese-hubert-base)."""

    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"
    feat_proj_layer_norm: bool = True
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    layer_norm_eps: float = 1e-5
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False
    conv_pos_batch_norm: bool = False
    hidden_act: str = "gelu"
    feat_extract_activation: str = "gelu"

    @classmethod
    def from_json(cls, path: Path) -> "HubertConfig":
        """Read a Hugging Face ``config.json``; refuses variants this implementation does not compute."""
        fix = "give the chinese-hubert-base folder (config.json + weights)"
        cfg, raw = read_config(path, cls, what="HuBERT", fix=fix)
        checks = (
            ("model_type", raw.get("model_type", "hubert"), "hubert"),
            ("feat_extract_norm", cfg.feat_extract_norm, "group"),
            ("do_stable_layer_norm", cfg.do_stable_layer_norm, False),
            ("conv_pos_batch_norm", cfg.conv_pos_batch_norm, False),
            ("hidden_act", cfg.hidden_act, "gelu"),
            ("feat_extract_activation", cfg.feat_extract_activation, "gelu"),
        )
        refuse_variants(checks, what="HuBERT", path=path, fix="use GPT-SoVITS's chinese-hubert-base folder")
        return cfg


def hubert_frames(num_samples: int, config: HubertConfig = HubertConfig()) -> int:
    """Output frames for ``num_samples`` 16 kHz samples (``<= 0``: too short for the conv stack)."""
    n = num_samples
    for k, s in zip(config.conv_kernel, config.conv_stride):
        n = (n - k) // s + 1 if n >= k else 0
    return n


class _Conv(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int, s: int, bias: bool, norm: bool):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, k, stride=s, bias=bias)
        self.layer_norm = nn.GroupNorm(c_out, c_out, affine=True) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.gelu(self.layer_norm(x) if self.layer_norm is not None else x)


class _FeatureEncoder(nn.Module):
    def __init__(self, c: HubertConfig):
        super().__init__()
        dims = (1,) + tuple(c.conv_dim)
        self.conv_layers = nn.ModuleList(
            _Conv(dims[i], dims[i + 1], c.conv_kernel[i], c.conv_stride[i], c.conv_bias, norm=i == 0)
            for i in range(len(c.conv_dim))
        )

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = wav[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class _FeatureProjection(nn.Module):
    def __init__(self, c: HubertConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(c.conv_dim[-1], eps=c.layer_norm_eps) if c.feat_proj_layer_norm else None
        self.projection = nn.Linear(c.conv_dim[-1], c.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(x) if self.layer_norm is not None else x)


class _PositionalConv(nn.Module):
    def __init__(self, c: HubertConfig):
        super().__init__()
        k = c.num_conv_pos_embeddings
        conv = nn.Conv1d(c.hidden_size, c.hidden_size, k, padding=k // 2, groups=c.num_conv_pos_embedding_groups)
        self.conv = weight_norm(conv, name="weight", dim=2)
        self.drop_last = k % 2 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.transpose(1, 2))
        y = y[:, :, :-1] if self.drop_last else y
        return F.gelu(y).transpose(1, 2)


class _Attention(nn.Module):
    def __init__(self, c: HubertConfig):
        super().__init__()
        d = c.hidden_size
        self.heads = c.num_attention_heads
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            p(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        y = F.scaled_dot_product_attention(q, k, v, scale=(d // self.heads) ** -0.5)  # transformers' SDPA path
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class _FeedForward(nn.Module):
    def __init__(self, c: HubertConfig):
        super().__init__()
        self.intermediate_dense = nn.Linear(c.hidden_size, c.intermediate_size)
        self.output_dense = nn.Linear(c.intermediate_size, c.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class _Layer(nn.Module):
    def __init__(self, c: HubertConfig):
        super().__init__()
        self.attention = _Attention(c)
        self.layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.feed_forward = _FeedForward(c)
        self.final_layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(x + self.attention(x))
        return self.final_layer_norm(x + self.feed_forward(x))


class _Encoder(nn.Module):
    def __init__(self, c: HubertConfig):
        super().__init__()
        self.pos_conv_embed = _PositionalConv(c)
        self.layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.layers = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class Hubert(nn.Module):
    """``HubertModel`` in eval mode: ``forward(wav [B, N] at 16 kHz) -> last hidden state [B, T, 768]``."""

    def __init__(self, config: HubertConfig = HubertConfig()):
        super().__init__()
        self.config = config
        self.masked_spec_embed = nn.Parameter(torch.zeros(config.hidden_size))  # training-time masking only
        self.feature_extractor = _FeatureEncoder(config)
        self.feature_projection = _FeatureProjection(config)
        self.encoder = _Encoder(config)
        self.eval()

    def forward(self, wav: torch.Tensor, *, intermediates: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Fill ``intermediates`` (if given) with ``conv_features`` [B,512,T], ``feature_projection``,
        ``pos_conv`` and ``hidden_states.<i>`` [B,T,768] (0 = after the encoder's LayerNorm)."""
        keep = intermediates if intermediates is not None else {}
        conv = self.feature_extractor(wav)
        proj = self.feature_projection(conv.transpose(1, 2))
        pos = self.encoder.pos_conv_embed(proj)
        h = self.encoder.layer_norm(proj + pos)
        keep.update({"conv_features": conv, "feature_projection": proj, "pos_conv": pos, "hidden_states.0": h})
        for i, layer in enumerate(self.encoder.layers):
            h = layer(h)
            keep[f"hidden_states.{i + 1}"] = h
        return h

    @classmethod
    def from_folder(cls, folder: str | Path) -> "Hubert":
        """Load a Hugging Face HuBERT folder (``config.json`` + ``model.safetensors`` or
        ``pytorch_model.bin``), safely, strictly, in float32 and eval mode."""
        folder = Path(folder)
        model = cls(HubertConfig.from_json(folder / "config.json"))
        sd = _read_state_dict(folder)
        sd = {_OLD_KEYS.get(k, k): v for k, v in sd.items()}
        sd.setdefault("masked_spec_embed", model.masked_spec_embed.detach().clone())
        return load_strict(model, sd, what="HuBERT", folder=folder)


def _read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """The folder's tensors; a ``hubert.`` prefix (checkpoints of models built around HuBERT) is dropped."""
    sd = read_state_dict(
        folder, what="HuBERT", fix="give the chinese-hubert-base folder from GPT-SoVITS's pretrained_models"
    )
    return {k.removeprefix("hubert."): v for k, v in sd.items()}
