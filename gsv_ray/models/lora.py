"""LoRA with peft's state_dict layout, in ~100 lines of our own.

GPT-SoVITS v3/v4 fine-tune the CFM with ``peft.get_peft_model(cfm, LoraConfig(target_modules=
["to_k", "to_q", "to_v", "to_out.0"], r=rank, lora_alpha=rank))``. That renames the wrapped
module's keys (``cfm.`` -> ``cfm.base_model.model.``; a targeted Linear's ``weight`` ->
``base_layer.weight``; ``lora_A.default.weight`` ``[r, in]``, ``lora_B.default.weight`` ``[out, r]``)
and computes ``y = base(x) + B(A(x)) * alpha / r``. We reproduce exactly that layout and arithmetic
instead of depending on peft (which pulls in transformers and its own model hub plumbing) for
four Linear layers per block; the goldens check the numbers and the keys.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

import torch
from torch import nn

__all__ = ["ADAPTER", "LoRALinear", "PeftWrapper", "adapters_disabled", "add_lora", "merge_lora"]

ADAPTER = "default"  # peft's adapter name, part of every LoRA key


class LoRALinear(nn.Module):
    """A Linear layer plus a low-rank update (peft's ``lora.Linear`` keys and init: ``A`` Kaiming-
    uniform as ``nn.Linear`` initialises, ``B`` zero, so a fresh adapter changes nothing)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.ModuleDict({ADAPTER: nn.Linear(base.in_features, rank, bias=False)})
        self.lora_B = nn.ModuleDict({ADAPTER: nn.Linear(rank, base.out_features, bias=False)})
        self.rank, self.scaling = rank, alpha / rank
        self.active = True  # False: the base layer alone (peft's disable_adapter)
        nn.init.kaiming_uniform_(self.lora_A[ADAPTER].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[ADAPTER].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return self.base_layer(x)
        return self.base_layer(x) + self.lora_B[ADAPTER](self.lora_A[ADAPTER](x)) * self.scaling

    def merged(self) -> nn.Linear:
        """The plain Linear with ``W + B @ A * scaling`` (what ``merge_and_unload`` leaves)."""
        base = self.base_layer
        out = nn.Linear(
            base.in_features,
            base.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        with torch.no_grad():
            delta = self.lora_B[ADAPTER].weight @ self.lora_A[ADAPTER].weight
            out.weight.copy_(base.weight + delta.to(base.weight.dtype) * self.scaling)
            if base.bias is not None:
                out.bias.copy_(base.bias)
        return out


class _LoraModel(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model


class PeftWrapper(nn.Module):
    """Holds the wrapped module as ``base_model.model`` (peft's naming); calls go through to it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.base_model = _LoraModel(model)

    @property
    def inner(self) -> nn.Module:
        return self.base_model.model

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def _targeted(name: str, targets: Iterable[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def add_lora(module: nn.Module, targets: Iterable[str], rank: int, alpha: float | None = None) -> PeftWrapper:
    """Wrap ``module`` as peft does: every ``nn.Linear`` whose name ends in one of ``targets`` gets a
    rank-``rank`` adapter (``alpha`` defaults to ``rank``, upstream's choice: scaling 1); every other
    parameter of ``module`` is frozen, the adapters' are trainable."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    targets = tuple(targets)
    found = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear) and _targeted(n, targets)]
    if not found:
        raise ValueError(f"no Linear layer named like {targets}")
    for p in module.parameters():
        p.requires_grad_(False)
    for name, linear in found:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, LoRALinear(linear, rank, float(rank if alpha is None else alpha)))
    return PeftWrapper(module)


def merge_lora(wrapper: PeftWrapper) -> nn.Module:
    """The plain module with every adapter merged into its Linear (``merge_and_unload``)."""
    module = wrapper.inner
    for name, m in list(module.named_modules()):
        if isinstance(m, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, child, m.merged())
    return module


@contextlib.contextmanager
def adapters_disabled(module: nn.Module) -> Iterator[None]:
    """Within the block, every adapter under ``module`` is off (the base model alone)."""
    layers = [m for m in module.modules() if isinstance(m, LoRALinear)]
    for m in layers:
        m.active = False
    try:
        yield
    finally:
        for m in layers:
            m.active = True
