"""The learning-rate schedule, the same for both stages: linear warmup to the peak, then decay.

It returns a *factor*; each optimizer group's peak LR lives in the group itself (so ``lr_scale`` and
upstream's low text-encoder rate scale every group, and no LR is hard-coded in the scheduler).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gsv_ray.train.config import UPSTREAM_LR_DECAY


@dataclass(frozen=True)
class Schedule:
    warmup_steps: int
    warmup_start: float
    decay: str  # exponential | cosine | constant
    total_steps: int
    steps_per_epoch: int
    lr_decay: float = UPSTREAM_LR_DECAY  # per epoch (exponential)
    min_lr_ratio: float = 0.1  # cosine floor

    def factor(self, step: int) -> float:
        """LR factor for the optimizer step with index ``step`` (0 = the first update)."""
        if step < self.warmup_steps:
            return self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_steps
        t = step - self.warmup_steps
        if self.decay == "exponential":
            return self.lr_decay ** (t / max(1, self.steps_per_epoch))
        if self.decay == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, t / span)
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, self.factor)
