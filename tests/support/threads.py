"""Torch's intra-op thread count for a stretch of a test."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the body with ``n`` torch threads, then put back the count before. Two computations compared
    bit for bit need the same count: a matmul's sums follow it (docs/design/tests.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
