"""Building blocks of the stage-1 GPT, with GPT-SoVITS's state_dict names.

* ``TokenEmbedding.word_embeddings`` and ``SinePositionalEmbedding.alpha`` are upstream's names;
  the sine table itself is not a parameter or buffer (upstream keeps it as a plain attribute), so
  we compute it on demand.
* ``SelfAttention`` keeps ``nn.MultiheadAttention``'s packed ``in_proj_weight``/``in_proj_bias``
  and ``out_proj``, but is written out so that decoding can reuse keys/values (a KV cache).
* ``DecoderLayer`` is a post-norm (``norm_first=False``) transformer layer with ReLU FFN, like
  upstream's ``TransformerEncoderLayer``; there is no final norm.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gsv_ray.models.dropout import KeyedDropout

#: Keys and values of one layer, each [B, heads, S, head_dim].
KV = tuple[torch.Tensor, torch.Tensor]


def sine_table(start: int, length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Sinusoidal positions ``start .. start+length-1`` as [length, dim] float32.

    Interleaved: even channels sin, odd channels cos, frequencies ``10000^(-2i/dim)``; the same
    float32 arithmetic as upstream's precomputed table, so values agree bit for bit.
    """
    position = torch.arange(start, start + length, dtype=torch.float32, device=device).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / dim))
    table = torch.zeros(length, dim, dtype=torch.float32, device=device)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term)
    return table


class TokenEmbedding(nn.Module):
    """Embedding table plus dropout (yaml ``model.dropout``, 0 in every shipped config)."""

    def __init__(self, vocab_size: int, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.dropout = KeyedDropout(dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.word_embeddings(ids))


class SinePositionalEmbedding(nn.Module):
    """``x + alpha * sine(position)`` with a learned scalar ``alpha``, then dropout."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.dim = dim
        self.alpha = nn.Parameter(torch.ones(1))
        self.dropout = KeyedDropout(dropout)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """``x`` [B, T, dim]; ``start`` is the position of ``x[:, 0]`` (for incremental decoding)."""
        pe = sine_table(start, x.shape[1], self.dim, device=x.device).to(x.dtype)
        return self.dropout(x + self.alpha * pe)


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameters and initialisation."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        self.attn_drop = KeyedDropout(dropout)  # on the attention probabilities (no state_dict entry)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, s, _ = t.shape
        return t.view(b, s, self.num_heads, self.dim // self.num_heads).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        past: KV | None = None,
    ) -> tuple[torch.Tensor, KV]:
        """``x`` [B, T, dim]; ``attn_mask`` bool, True = may attend, broadcastable to [B, H, T, S].

        ``past`` holds the keys/values of earlier positions; the returned pair includes ``x``'s.
        """
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        if self.attn_drop.keyed:  # per-item masks: SDPA draws its dropout from the global RNG
            out = self._explicit_attention(q, k, v, attn_mask)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0
            )
        b, _, t, _ = out.shape
        out = out.transpose(1, 2).reshape(b, t, self.dim)
        return self.out_proj(out), (k, v)

    def _explicit_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """What SDPA computes (softmax of the scaled, masked scores, dropout, times ``v``), with the
        probabilities' dropout drawn by ``attn_drop`` (keyed per item)."""
        scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
        if attn_mask is not None:
            scores = (
                scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
            )
        return self.attn_drop(F.softmax(scores, dim=-1)) @ v


class DecoderLayer(nn.Module):
    """Post-norm transformer layer: ``x = norm1(x + attn(x)); x = norm2(x + ffn(x))``."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        # Registration order = upstream state_dict order.
        self.self_attn = SelfAttention(dim, num_heads, dropout)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.dropout = KeyedDropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.dropout1 = KeyedDropout(dropout)
        self.dropout2 = KeyedDropout(dropout)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, past: KV | None = None
    ) -> tuple[torch.Tensor, KV]:
        attn, present = self.self_attn(x, attn_mask, past)
        x = self.norm1(x + self.dropout1(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(x))))
        x = self.norm2(x + self.dropout2(ffn))
        return x, present


class TransformerStack(nn.Module):
    """The ``h`` of upstream: ``layers.N`` post-norm layers, no final norm."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        past: list[KV] | None = None,
    ) -> tuple[torch.Tensor, list[KV]]:
        presents: list[KV] = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, attn_mask, None if past is None else past[i])
            presents.append(kv)
        return x, presents
