"""MRTE (multi-reference timbre encoder): the content stream attends to the text stream.

Both streams are lifted to ``hidden_channels`` (512 upstream), the reference embedding ``ge`` is
added there, and the result is projected back to the content width. Because ``ge`` is added to the
hidden state, v1/v2 need ``gin_channels == hidden_channels`` (v2Pro/ProPlus project ``ge`` first).
"""

from __future__ import annotations

import torch
from torch import nn

from gsv_ray.models.sovits.attention import MultiHeadAttention


class MRTE(nn.Module):
    def __init__(
        self, content_channels: int = 192, hidden_channels: int = 512, out_channels: int = 192, n_heads: int = 4
    ):
        super().__init__()
        self.cross_attention = MultiHeadAttention(hidden_channels, hidden_channels, n_heads)
        self.c_pre = nn.Conv1d(content_channels, hidden_channels, 1)
        self.text_pre = nn.Conv1d(content_channels, hidden_channels, 1)
        self.c_post = nn.Conv1d(hidden_channels, out_channels, 1)

    def forward(
        self,
        ssl_enc: torch.Tensor,
        ssl_mask: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        ge: torch.Tensor | None,
    ) -> torch.Tensor:
        attn_mask = text_mask.unsqueeze(2) * ssl_mask.unsqueeze(-1)
        ssl_enc = self.c_pre(ssl_enc * ssl_mask)
        text_enc = self.text_pre(text * text_mask)
        x = self.cross_attention(ssl_enc * ssl_mask, text_enc * text_mask, attn_mask) + ssl_enc
        if ge is not None:
            x = x + ge
        return self.c_post(x * ssl_mask)
