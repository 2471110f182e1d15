"""Small tensor helpers shared by the generator's parts (masks, gated activations, slicing)."""

from __future__ import annotations

import torch


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """``[B]`` lengths -> ``[B, T]`` boolean mask, True on valid frames."""
    if max_length is None:
        max_length = int(lengths.max())
    steps = torch.arange(max_length, dtype=lengths.dtype, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def length_mask(lengths: torch.Tensor, max_length: int, dtype: torch.dtype) -> torch.Tensor:
    """``[B, 1, T]`` float 0/1 mask, the form every conv stack here multiplies by."""
    return sequence_mask(lengths, max_length).unsqueeze(1).to(dtype)


def gated_tanh(x: torch.Tensor, cond: torch.Tensor | None, channels: int) -> torch.Tensor:
    """WaveNet gate: ``tanh(a) * sigmoid(b)`` of the two channel halves of ``x + cond``."""
    if cond is not None:
        x = x + cond
    return torch.tanh(x[:, :channels]) * torch.sigmoid(x[:, channels:])


def slice_segments(x: torch.Tensor, starts: torch.Tensor, size: int) -> torch.Tensor:
    """Per-item window ``x[b, :, starts[b] : starts[b] + size]`` -> ``[B, C, size]``."""
    index = starts.to(torch.long).view(-1, 1, 1) + torch.arange(size, device=x.device).view(1, 1, -1)
    return x.gather(2, index.expand(x.size(0), x.size(1), size))


def rand_slice_segments(
    x: torch.Tensor,
    lengths: torch.Tensor,
    size: int,
    u: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random training window per item: start = floor(u * (length - size + 1)), u ~ U[0, 1).

    ``u`` ([B]) can be given to make the draw reproducible (tests, replays).
    """
    if u is None:
        u = torch.rand(x.size(0), device=x.device)
    starts = (u.to(x.device) * (lengths - size + 1)).to(torch.long)
    return slice_segments(x, starts, size), starts
