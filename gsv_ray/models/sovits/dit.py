"""The DiT velocity estimator of GPT-SoVITS v3/v4's flow-matching decoder (``cfm.estimator``).

A diffusion transformer over mel frames, conditioned on the flow time ``t`` and the step size ``d``
(AdaLN-Zero), on the prompt mel (``cond``) and on the semantic/text features ``mu`` (through a
ConvNeXt-V2 stack). Module names and registration order follow upstream, so ``state_dict()`` has
upstream's keys (``time_embed.time_mlp.0``, ``transformer_blocks.<i>.attn.to_q``, ...).

Facts worth knowing (see tests/reference/gpt_sovits/goldens/README.md §9.1), all reproduced here:
* the rotary embedding is built for one head's width (64) and applied to the full 1024-wide q/k
  *before* the head split, so it rotates features 0..63 only: head 0 gets positions, the other 15
  heads only what the convolutional position embedding gives;
* the text path and the input embedding apply no mask; attention masks padded keys and zeroes the
  output rows of padded frames;
* the final AdaLN chunks its modulation as (scale, shift), the blocks' as (shift, scale, gate) x 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gsv_ray.models.dropout import KeyedDropout
from gsv_ray.models.sovits.commons import sequence_mask

__all__ = ["DiT", "DiTConfig"]


@dataclass(frozen=True)
class DiTConfig:
    """Every width upstream hard-codes in ``DiT(...)`` (its values by default)."""

    dim: int = 1024
    depth: int = 22
    heads: int = 16
    dim_head: int = 64
    ff_mult: int = 2
    mel_dim: int = 100
    text_dim: int = 512  # width of mu (= the bridge/wns1 width)
    conv_layers: int = 4  # ConvNeXt-V2 blocks on the text path
    conv_mult: int = 2  # their hidden width, x text_dim
    dropout: float = 0.1
    freq_embed_dim: int = 256  # sinusoidal features of the time / step
    conv_pos_kernel: int = 31
    conv_pos_groups: int = 16
    text_max_pos: int = 4096  # the text path's sinusoidal table length

    def __post_init__(self) -> None:
        if self.dim_head * self.heads != self.dim:
            raise ValueError(f"heads x dim_head must equal dim ({self.heads} x {self.dim_head} != {self.dim})")


class TimestepEmbedding(nn.Module):
    """``1000 * t`` -> sinusoidal features ``[sin | cos]`` -> Linear, SiLU, Linear."""

    def __init__(self, dim: int, freq_embed_dim: int = 256):
        super().__init__()
        self.freq_embed_dim = freq_embed_dim
        self.time_mlp = nn.Sequential(nn.Linear(freq_embed_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_embed_dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
        arg = 1000 * t.unsqueeze(1) * freqs.unsqueeze(0)
        return self.time_mlp(torch.cat((arg.sin(), arg.cos()), dim=-1).to(t.dtype))


class GRN(nn.Module):
    """Global response normalisation (ConvNeXt-V2), over the time axis of ``[B, T, C]``."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.norm(x, p=2, dim=1, keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    def __init__(self, dim: int, hidden: int, kernel_size: int = 7):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.grn = GRN(hidden)
        self.pwconv2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, C]
        h = self.dwconv(x.transpose(1, 2)).transpose(1, 2)
        return x + self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(h)))))


def sinusoid_table(dim: int, length: int) -> torch.Tensor:
    """``[length, dim]``: position ``p`` times ``1/10000**(2j/dim)``, laid out ``[cos | sin]``."""
    freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    angles = torch.outer(torch.arange(length).float(), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TextEmbedding(nn.Module):
    """``mu`` ``[B, T, text_dim]`` + a fixed sinusoidal table, then ConvNeXt-V2 blocks (no mask)."""

    def __init__(self, text_dim: int, conv_layers: int, conv_mult: int, max_pos: int):
        super().__init__()
        self.register_buffer("freqs_cis", sinusoid_table(text_dim, max_pos), persistent=False)
        self.text_blocks = nn.Sequential(*[ConvNeXtV2Block(text_dim, text_dim * conv_mult) for _ in range(conv_layers)])

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(text.size(1), device=text.device).clamp(max=self.freqs_cis.size(0) - 1)
        return self.text_blocks(text + self.freqs_cis[pos].to(text.dtype))


class ConvPositionEmbedding(nn.Module):
    def __init__(self, dim: int, kernel_size: int, groups: int):
        super().__init__()
        self.conv1d = nn.Sequential(
            nn.Conv1d(dim, dim, kernel_size, groups=groups, padding=kernel_size // 2),
            nn.Mish(),
            nn.Conv1d(dim, dim, kernel_size, groups=groups, padding=kernel_size // 2),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, C]
        return self.conv1d(x.transpose(1, 2)).transpose(1, 2)


class InputEmbedding(nn.Module):
    """``cat(x, cond, text)`` -> Linear -> + convolutional position embedding."""

    def __init__(self, c: DiTConfig):
        super().__init__()
        self.proj = nn.Linear(2 * c.mel_dim + c.text_dim, c.dim)
        self.conv_pos_embed = ConvPositionEmbedding(c.dim, c.conv_pos_kernel, c.conv_pos_groups)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        x = self.proj(torch.cat((x, cond, text), dim=-1))
        return self.conv_pos_embed(x) + x


class RotaryEmbedding(nn.Module):
    """Rotary angles for one head's width; ``inv_freq`` is a persistent buffer (it is in upstream's
    state_dict and files), each frequency used for an interleaved pair of features."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, seq_len: int) -> torch.Tensor:
        """``[1, seq_len, dim]``: position x ``inv_freq``, each frequency twice in place."""
        t = torch.arange(seq_len, device=self.inv_freq.device).type_as(self.inv_freq)
        freqs = torch.outer(t, self.inv_freq)
        return torch.stack((freqs, freqs), dim=-1).flatten(-2).unsqueeze(0)


def apply_rotary(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``freqs.shape[-1]`` features of ``x`` in interleaved pairs
    (``(a, b) -> (a cos - b sin, b cos + a sin)``); the rest pass unchanged."""
    n = freqs.shape[-1]
    head, rest = x[..., :n], x[..., n:]
    pairs = head.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    head = head * freqs.cos().to(x.dtype) + rotated * freqs.sin().to(x.dtype)
    return torch.cat((head, rest), dim=-1)


class Attention(nn.Module):
    """Self-attention with key padding mask; ``to_q/to_k/to_v/to_out.0`` are the LoRA targets."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), KeyedDropout(dropout)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = apply_rotary(self.to_q(x), rope)  # before the head split: head 0 only (module docstring)
        k = apply_rotary(self.to_k(x), rope)
        v = self.to_v(x)
        q, k, v = (y.view(b, t, self.heads, -1).transpose(1, 2) for y in (q, k, v))
        attn_mask = mask[:, None, None, :].expand(b, self.heads, t, t)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=0.0)
        out = out.transpose(1, 2).reshape(b, t, -1).to(q.dtype)
        out = self.to_out[1](self.to_out[0](out))
        return out.masked_fill(~mask.unsqueeze(-1), 0.0)


class AdaLayerNormZero(nn.Module):
    """LayerNorm (no affine) modulated by the time embedding; returns the MSA input and the gates."""

    def __init__(self, dim: int, chunks: int = 6):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, dim * chunks)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


class DiTBlock(nn.Module):
    def __init__(self, c: DiTConfig):
        super().__init__()
        self.attn_norm = AdaLayerNormZero(c.dim)
        self.attn = Attention(c.dim, c.heads, c.dim_head, c.dropout)
        self.ff_norm = nn.LayerNorm(c.dim, elementwise_affine=False, eps=1e-6)
        hidden = c.dim * c.ff_mult
        self.ff = FeedForward(c.dim, hidden, c.dropout)

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        mod = self.attn_norm.linear(self.attn_norm.silu(t))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
        h = self.attn_norm.norm(x) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        x = x + gate_msa[:, None] * self.attn(h, mask, rope)
        h = self.ff_norm(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return x + gate_mlp[:, None] * self.ff(h)


class FeedForward(nn.Module):
    """Linear, GELU (tanh approximation), dropout, Linear: keys ``ff.0.0`` and ``ff.2``."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.ff = nn.Sequential(
            nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh")),
            KeyedDropout(dropout),
            nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(x)


class DiT(nn.Module):
    """``v = DiT(x, cond, x_lens, time, d, mu)``: channels-first ``x``/``cond`` ``[B, mel, T]``,
    ``mu`` ``[B, text_dim, T]``, ``time``/``d`` ``[B]``; returns ``[B, T, mel]`` (time first, as
    upstream's; the CFM transposes it)."""

    def __init__(self, config: DiTConfig = DiTConfig()):
        super().__init__()
        c = config
        self.config = c
        self.time_embed = TimestepEmbedding(c.dim, c.freq_embed_dim)
        self.d_embed = TimestepEmbedding(c.dim, c.freq_embed_dim)
        self.text_embed = TextEmbedding(c.text_dim, c.conv_layers, c.conv_mult, c.text_max_pos)
        self.input_embed = InputEmbedding(c)
        self.rotary_embed = RotaryEmbedding(c.dim_head)
        self.transformer_blocks = nn.ModuleList([DiTBlock(c) for _ in range(c.depth)])
        self.norm_out = AdaLayerNormZero(c.dim, chunks=2)
        self.proj_out = nn.Linear(c.dim, c.mel_dim)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        x_lens: torch.Tensor,
        time: torch.Tensor,
        d: torch.Tensor,
        mu: torch.Tensor,
        *,
        trace: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``trace``, when given, receives the intermediates the goldens record."""
        x, cond, mu = x.transpose(1, 2), cond.transpose(1, 2), mu.transpose(1, 2)
        seq_len = x.size(1)
        mask = sequence_mask(x_lens, seq_len)
        t_emb, d_emb = self.time_embed(time), self.d_embed(d)
        t = t_emb + d_emb
        text = self.text_embed(mu)
        h = self.input_embed(x, cond, text)
        rope = self.rotary_embed(seq_len)
        if trace is not None:
            trace.update(time_embed=t_emb, d_embed=d_emb, text_embed=text, input_embed=h, rope_freqs=rope)
        for i, block in enumerate(self.transformer_blocks):
            h = block(h, t, mask, rope)
            if trace is not None:
                trace[f"block{i}"] = h
        mod = self.norm_out.linear(self.norm_out.silu(t))
        scale, shift = mod.chunk(2, dim=1)
        h = self.norm_out.norm(h) * (1 + scale[:, None]) + shift[:, None]
        return self.proj_out(h)
