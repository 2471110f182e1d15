"""Mixed precision for the training step: autocast, and for fp16 one loss scaler per step.

Why not Accelerate's: its prepared optimizer calls ``GradScaler.update()`` inside every
``optimizer.step()``, so a GAN step with two optimizers updates the scale twice per iteration, and
``Accelerator.clip_grad_norm_`` unscales *every* optimizer at once. Upstream's SoVITS step shares one
scaler: scale/unscale/step D, scale/unscale/step G, one ``update()`` per iteration. We do exactly
that with ``torch.amp`` (which also runs fp16 on CPU, so it is testable without a GPU); Accelerate
keeps device placement, DDP and checkpointing (the scaler is registered for checkpointing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteGradient(Exception):
    """A step's gradient norm is NaN/inf without a loss scaler to skip it: the step is not taken."""


class Precision:
    def __init__(self, mode: str, device: torch.device):
        self.mode = mode
        self.dtype = DTYPES.get(mode)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=mode == "fp16")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter]) -> torch.Tensor:
        """Unscale, measure the gradient norm, step (skipped by the scaler on inf/NaN), zero the
        gradients. Returns the (unscaled) gradient norm. Without a scaler a non-finite gradient raises
        :class:`NonFiniteGradient` *before* the update, so the weights stay as they were."""
        self.scaler.unscale_(optimizer)
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        if not self.scaler.is_enabled() and not bool(torch.isfinite(norm)):  # one sync per optimizer step
            optimizer.zero_grad(set_to_none=True)
            raise NonFiniteGradient(f"gradient norm {float(norm)}")
        self.scaler.step(optimizer)  # the object the LR scheduler wraps (it counts steps)
        optimizer.zero_grad(set_to_none=True)
        return norm

    def update(self) -> None:
        """Once per iteration, after every optimizer of the step."""
        self.scaler.update()

    @property
    def scale(self) -> float:
        return float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0
