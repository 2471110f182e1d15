"""Small pieces both stage recipes share."""

from __future__ import annotations

import torch


def read_metrics(named: dict[str, torch.Tensor]) -> dict[str, float]:
    """All step metrics with a single device sync (one ``tolist`` instead of a ``float`` each)."""
    values = torch.stack([torch.as_tensor(v).detach().float().reshape(()) for v in named.values()]).tolist()
    return dict(zip(named, values))
