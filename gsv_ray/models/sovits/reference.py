"""Reference (style) encoder: linear spectrogram of a reference clip -> one timbre vector ``ge``.

GPT-SoVITS's ``MelStyleEncoder``: two Mish-activated linear layers per frame, two gated 1-D convs
over time, one masked self-attention layer with a residual, a linear projection to
``gin_channels`` and a masked average over time. v1 feeds all 1025 bins, later versions the first
704 (the caller slices).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gsv_ray.models.dropout import KeyedDropout


class _Linear(nn.Module):
    """``nn.Linear`` one level down (upstream's ``LinearNorm``: keys ``<name>.fc.*``)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class _Mish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.mish(x)


class _ConvNorm(nn.Module):
    """ "Same"-padded ``nn.Conv1d`` one level down (keys ``<name>.conv.*``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _GatedConv(nn.Module):
    """Residual GLU conv: ``x + dropout(a * sigmoid(b))`` with ``a, b`` the conv's halves."""

    def __init__(self, channels: int, kernel_size: int, dropout: float):
        super().__init__()
        self.channels = channels
        self.conv1 = _ConvNorm(channels, 2 * channels, kernel_size)
        self.dropout = KeyedDropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.conv1(x).split(self.channels, dim=1)
        return x + self.dropout(a * torch.sigmoid(b))


class _StyleAttention(nn.Module):
    """Masked self-attention with a residual. Note the logit scale is ``1/sqrt(d_model)``,
    not ``1/sqrt(d_head)`` -- upstream's choice, kept for identical numerics."""

    def __init__(self, n_heads: int, d_model: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.temperature = math.sqrt(d_model)
        self.w_qs = nn.Linear(d_model, n_heads * self.d_head)
        self.w_ks = nn.Linear(d_model, n_heads * self.d_head)
        self.w_vs = nn.Linear(d_model, n_heads * self.d_head)
        self.attn_dropout = KeyedDropout(dropout)
        self.fc = nn.Linear(n_heads * self.d_head, d_model)
        self.dropout = KeyedDropout(dropout)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (
            w(x).view(b, t, self.n_heads, self.d_head).transpose(1, 2) for w in (self.w_qs, self.w_ks, self.w_vs)
        )
        scores = (q @ k.transpose(-2, -1)) / self.temperature  # [b, h, t, t]
        if key_padding is not None:
            scores = scores.masked_fill(key_padding[:, None, None, :], float("-inf"))
        out = self.attn_dropout(F.softmax(scores, dim=-1)) @ v
        out = self.fc(out.transpose(1, 2).reshape(b, t, self.n_heads * self.d_head))
        return self.dropout(out) + x


class MelStyleEncoder(nn.Module):
    def __init__(
        self,
        in_channels: int = 704,
        hidden_channels: int = 128,
        out_channels: int = 512,
        kernel_size: int = 5,
        n_heads: int = 2,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.spectral = nn.Sequential(
            _Linear(in_channels, hidden_channels),
            _Mish(),
            KeyedDropout(dropout),
            _Linear(hidden_channels, hidden_channels),
            _Mish(),
            KeyedDropout(dropout),
        )
        self.temporal = nn.Sequential(
            _GatedConv(hidden_channels, kernel_size, dropout),
            _GatedConv(hidden_channels, kernel_size, dropout),
        )
        self.slf_attn = _StyleAttention(n_heads, hidden_channels, dropout)
        self.fc = _Linear(hidden_channels, out_channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` [B, bins, T] (already multiplied by ``mask`` [B, 1, T]) -> ``ge`` [B, out, 1]."""
        padding = None if mask is None else (mask.int() == 0).squeeze(1)  # [B, T], True = padded
        x = self.spectral(x.transpose(1, 2))
        x = self.temporal(x.transpose(1, 2)).transpose(1, 2)
        if padding is not None:
            x = x.masked_fill(padding.unsqueeze(-1), 0)
        x = self.fc(self.slf_attn(x, padding))
        if padding is None:
            return x.mean(dim=1).unsqueeze(-1)
        # masked time average (divide first, then sum -- same rounding as upstream)
        valid = (~padding).sum(dim=1).view(-1, 1, 1)
        x = x.masked_fill(padding.unsqueeze(-1), 0)
        return (x.float() / valid).sum(dim=1).to(x.dtype).unsqueeze(-1)
