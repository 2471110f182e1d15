"""Dropout whose masks can be keyed per batch item, so a batch item gets the same mask whichever
batch, micro-batch or process it lands in.

:class:`KeyedDropout` is ``nn.Dropout`` (same ``p``, no state_dict entries, the same eval
behaviour and, without keys, the very same ``F.dropout`` call and global-RNG draws). Inside
``with utterance_dropout(model, generators):`` every ``KeyedDropout`` of ``model`` in training
mode draws item ``b``'s mask from ``generators[b]`` instead, in module call order: each generator
is consumed only by its own item's masks, whose shapes (``x[b].shape``) are the same in any batch
padded to the same lengths. Trainers give one freshly seeded generator per item per forward pass
(a recomputed pass gets fresh ones and so the same masks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KeyedDropout", "keyed_mask", "utterance_dropout"]


class KeyedDropout(nn.Dropout):
    """``nn.Dropout``; with per-item generators set (see :func:`utterance_dropout`), item ``b``'s
    mask is drawn from generator ``b`` (keep where ``u >= p``, ``u`` uniform in float32, scaled by
    ``1 / (1 - p)`` as ``F.dropout``)."""

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__(p, inplace)
        self.generators: Sequence[torch.Generator] | None = None

    @property
    def keyed(self) -> bool:
        """Whether the next training forward draws keyed masks."""
        return self.generators is not None and self.training and self.p > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.keyed:
            return F.dropout(x, self.p, self.training, self.inplace)  # exactly nn.Dropout
        return x * keyed_mask(x, self.p, self.generators)  # type: ignore[arg-type]


def keyed_mask(x: torch.Tensor, p: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """The scaled keep-mask ``[B, ...]`` of ``x``'s shape and dtype: row ``b`` from ``generators[b]``,
    drawn on the generator's device (pass device generators: no host-to-device copy per mask)."""
    if len(generators) != x.shape[0]:
        raise ValueError(f"{len(generators)} dropout generators for a batch of {x.shape[0]}")
    rows = [torch.rand(x.shape[1:], generator=g, device=g.device) for g in generators]
    keep = torch.stack(rows).to(x.device) >= p
    return keep.to(x.dtype) * (1.0 / (1.0 - p))


@contextlib.contextmanager
def utterance_dropout(model: nn.Module, generators: Sequence[torch.Generator]) -> Iterator[None]:
    """Every :class:`KeyedDropout` in ``model`` draws item ``b``'s masks from ``generators[b]``
    inside the block (instance attributes, cleared on exit, also on error)."""
    modules = [m for m in model.modules() if isinstance(m, KeyedDropout)]
    for m in modules:
        m.generators = generators
    try:
        yield
    finally:
        for m in modules:
            m.generators = None
