"""Prior (text) encoder ``enc_p``: semantic features + phonemes + timbre -> prior ``(m_p, logs_p)``.

Semantic features (768-wide codebook vectors at 50 Hz) go through ``ssl_proj`` and a transformer,
phonemes through an embedding and a transformer; MRTE lets the semantic stream attend to the
phonemes and adds the reference embedding; a last transformer and a 1x1 conv give the prior.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gsv_ray.models.sovits.attention import AttentionEncoder
from gsv_ray.models.sovits.commons import length_mask
from gsv_ray.models.sovits.mrte import MRTE


class TextEncoder(nn.Module):
    def __init__(
        self,
        out_channels: int,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float,
        n_symbols: int,
        ssl_dim: int = 768,
        mrte_hidden_channels: int = 512,
        mrte_heads: int = 4,
        window_size: int = 4,
    ):
        super().__init__()
        self.out_channels = out_channels
        self.ssl_proj = nn.Conv1d(ssl_dim, hidden_channels, 1)
        self.encoder_ssl = AttentionEncoder(
            hidden_channels, filter_channels, n_heads, n_layers // 2, kernel_size, p_dropout, window_size
        )
        self.encoder_text = AttentionEncoder(
            hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout, window_size
        )
        self.text_embedding = nn.Embedding(n_symbols, hidden_channels)
        self.mrte = MRTE(hidden_channels, mrte_hidden_channels, hidden_channels, mrte_heads)
        self.encoder2 = AttentionEncoder(
            hidden_channels, filter_channels, n_heads, n_layers // 2, kernel_size, p_dropout, window_size
        )
        self.proj = nn.Conv1d(hidden_channels, 2 * out_channels, 1)

    def forward(
        self,
        y: torch.Tensor,
        y_lengths: torch.Tensor,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        ge: torch.Tensor | None,
        speed: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``y`` [B, ssl_dim, T], ``text`` [B, L] ids, ``ge`` [B, mrte_hidden, 1] -> ``(x, m_p, logs_p, y_mask)``.

        ``speed != 1`` linearly resizes the encoded sequence to ``int(T / speed) + 1`` frames
        (inference only).
        """
        y_mask = length_mask(y_lengths, y.size(2), y.dtype)
        y = self.ssl_proj(y * y_mask) * y_mask
        y = self.encoder_ssl(y * y_mask, y_mask)

        text_mask = length_mask(text_lengths, text.size(1), y.dtype)
        t = self.text_embedding(text).transpose(1, 2)
        t = self.encoder_text(t * text_mask, text_mask)

        y = self.mrte(y, y_mask, t, text_mask, ge)
        y = self.encoder2(y * y_mask, y_mask)
        if speed != 1:
            y = F.interpolate(y, size=int(y.shape[-1] / speed) + 1, mode="linear")
            y_mask = F.interpolate(y_mask, size=y.shape[-1], mode="nearest")
        m, logs = (self.proj(y) * y_mask).split(self.out_channels, dim=1)
        return y, m, logs, y_mask
