"""Small building blocks shared by the SoVITS generator and discriminator.

GPT-SoVITS uses the legacy ``torch.nn.utils.weight_norm``, whose state_dict names are
``<name>.weight_g`` / ``<name>.weight_v``; the modern parametrisation would rename them to
``parametrizations.weight.original0/1`` and break key compatibility with every upstream file.
These layers keep the legacy names (and order: ``bias``, ``weight_g``, ``weight_v``) with a plain
forward that recomputes ``weight = g * v / ||v||`` each call, exactly as the legacy hook does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _split_weight(module: nn.Module, dim: int) -> None:
    """Replace ``module.weight`` by ``weight_g`` (norm over all dims but ``dim``) and ``weight_v``."""
    weight = module.weight
    del module._parameters["weight"]
    others = [d for d in range(weight.dim()) if d != dim]
    module.weight_g = nn.Parameter(torch.linalg.vector_norm(weight.data, dim=others, keepdim=True))
    module.weight_v = nn.Parameter(weight.data)


class _WeightNormMixin:
    """Put before the ``nn`` layer class: its ``weight`` becomes ``weight_g`` / ``weight_v``."""

    wn_dim: int

    def __init__(self, *args, wn_dim: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.wn_dim = wn_dim
        _split_weight(self, wn_dim)  # type: ignore[arg-type]

    def normed_weight(self) -> torch.Tensor:
        return torch._weight_norm(self.weight_v, self.weight_g, self.wn_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # Conv1d/Conv2d; ConvTranspose1d has its own
        return self._conv_forward(x, self.normed_weight(), self.bias)  # type: ignore[attr-defined]


class WNConv1d(_WeightNormMixin, nn.Conv1d):
    """``weight_norm(nn.Conv1d(...))`` with upstream's state_dict names."""


class WNConv2d(_WeightNormMixin, nn.Conv2d):
    """``weight_norm(nn.Conv2d(...))`` with upstream's state_dict names."""


class WNConvTranspose1d(_WeightNormMixin, nn.ConvTranspose1d):
    """``weight_norm(nn.ConvTranspose1d(...))``: ``dim=0`` normalises per *input* channel
    (weight is ``[in, out, k]``, so ``weight_g`` is ``[in, 1, 1]``), as upstream's decoder does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose1d(
            x,
            self.normed_weight(),
            self.bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )
