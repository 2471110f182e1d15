"""Transformer pieces of the text encoder: channel-first LayerNorm, relative-position
multi-head attention (window 4, shared across heads), conv FFN, and the post-norm encoder stack.

All tensors are channel-first ``[B, C, T]`` with ``[B, 1, T]`` float masks, as upstream.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gsv_ray.models.dropout import KeyedDropout


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a ``[B, C, T]`` tensor (params ``gamma``/``beta``)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.transpose(1, -1), (self.channels,), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


def _relative_index(length: int, device: torch.device) -> torch.Tensor:
    """``[L, L]`` index of key ``j`` relative to query ``i`` in a ``2L-1`` relative axis."""
    pos = torch.arange(length, device=device)
    return pos.view(1, -1) - pos.view(-1, 1) + (length - 1)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with 1x1-conv projections (``conv_q/k/v/o``).

    With ``window_size`` set, adds learned relative-position terms to both the logits
    (``emb_rel_k``) and the values (``emb_rel_v``), for offsets in ``[-window, window]``; this
    is only defined for self-attention.
    """

    def __init__(
        self,
        channels: int,
        out_channels: int,
        n_heads: int,
        p_dropout: float = 0.0,
        window_size: int | None = None,
    ):
        super().__init__()
        if channels % n_heads:
            raise ValueError(f"channels {channels} not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window_size = window_size
        if window_size is not None:
            std = self.k_channels**-0.5
            self.emb_rel_k = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.k_channels) * std)
            self.emb_rel_v = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.k_channels) * std)
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, out_channels, 1)
        self.drop = KeyedDropout(p_dropout)
        for conv in (self.conv_q, self.conv_k, self.conv_v):
            nn.init.xavier_uniform_(conv.weight)

    def _relative_embeddings(self, emb: torch.Tensor, length: int) -> torch.Tensor:
        """Offsets ``-(L-1) .. L-1`` of ``emb`` (zero beyond the window) -> ``[1, 2L-1, d]``."""
        w = self.window_size
        pad = max(length - (w + 1), 0)
        start = max((w + 1) - length, 0)
        if pad:
            emb = F.pad(emb, (0, 0, pad, pad))
        return emb[:, start : start + 2 * length - 1]

    def forward(self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, channels, t_q = x.shape
        t_k = c.size(2)
        q = self.conv_q(x).view(b, self.n_heads, self.k_channels, t_q).transpose(2, 3)
        k = self.conv_k(c).view(b, self.n_heads, self.k_channels, t_k).transpose(2, 3)
        v = self.conv_v(c).view(b, self.n_heads, self.k_channels, t_k).transpose(2, 3)

        q = q / math.sqrt(self.k_channels)
        scores = q @ k.transpose(-2, -1)
        if self.window_size is not None:
            if t_q != t_k:
                raise ValueError("relative attention needs self-attention (equal query/key lengths)")
            index = _relative_index(t_k, x.device).expand(b, self.n_heads, t_k, t_k)
            rel_k = self._relative_embeddings(self.emb_rel_k, t_k)
            rel_logits = q @ rel_k.unsqueeze(0).transpose(-2, -1)  # [b, h, L, 2L-1]
            scores = scores + rel_logits.gather(-1, index)
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask == 0, -1e4)
        p_attn = self.drop(F.softmax(scores, dim=-1))
        out = p_attn @ v
        if self.window_size is not None:
            rel_weights = p_attn.new_zeros(b, self.n_heads, t_k, 2 * t_k - 1).scatter(-1, index, p_attn)
            rel_v = self._relative_embeddings(self.emb_rel_v, t_k)
            out = out + rel_weights @ rel_v.unsqueeze(0)
        out = out.transpose(2, 3).reshape(b, channels, t_q)
        return self.conv_o(out)


class FFN(nn.Module):
    """Two "same"-padded convolutions with a ReLU between, masked before each conv."""

    def __init__(
        self, in_channels: int, out_channels: int, filter_channels: int, kernel_size: int, p_dropout: float = 0.0
    ):
        super().__init__()
        self.pad = ((kernel_size - 1) // 2, kernel_size // 2)
        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, out_channels, kernel_size)
        self.drop = KeyedDropout(p_dropout)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv_1(F.pad(x * x_mask, self.pad)))
        x = self.drop(x)
        x = self.conv_2(F.pad(x * x_mask, self.pad))
        return x * x_mask


class AttentionEncoder(nn.Module):
    """Post-norm transformer encoder: ``x = norm(x + attn(x))``, ``x = norm(x + ffn(x))``."""

    def __init__(
        self,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int = 1,
        p_dropout: float = 0.0,
        window_size: int | None = 4,
    ):
        super().__init__()
        self.n_layers = n_layers
        self.drop = KeyedDropout(p_dropout)
        self.attn_layers = nn.ModuleList(
            MultiHeadAttention(hidden_channels, hidden_channels, n_heads, p_dropout, window_size)
            for _ in range(n_layers)
        )
        self.norm_layers_1 = nn.ModuleList(ChannelLayerNorm(hidden_channels) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(
            FFN(hidden_channels, hidden_channels, filter_channels, kernel_size, p_dropout) for _ in range(n_layers)
        )
        self.norm_layers_2 = nn.ModuleList(ChannelLayerNorm(hidden_channels) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)
        x = x * x_mask
        for attn, norm_1, ffn, norm_2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2):
            x = norm_1(x + self.drop(attn(x, x, attn_mask)))
            x = norm_2(x + self.drop(ffn(x, x_mask)))
        return x * x_mask
