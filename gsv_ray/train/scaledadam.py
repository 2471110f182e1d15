"""ScaledAdam, the optimizer GPT-SoVITS trains its GPT (stage 1) with, and the LR it actually uses.

Our own implementation, written from the algorithm's description (``goldens/scaledadam.md`` in the
test reference folder) and checked against upstream's recorded steps (``tests/train/test_scaledadam.py``).
In short, per parameter tensor ``p`` with gradient ``g`` at optimizer step ``s`` (0-based):

* the Adam step is scaled by the tensor's RMS: ``-lr * (1 - b1) * max(rms(p), param_min_rms) * g /
  (sqrt(v) + eps)``, with ``v`` the second moment, bias-corrected only while ``1 - b2^(s+1) < 0.99``;
* every ``size_update_period`` steps ``rms(p)`` is re-measured and the whole tensor's scale takes an
  Adam-like step of its own (from ``sum(p * g)`` of the last period, at ``lr * scalar_lr_scale``);
* one-element parameters take a plain Adam step at ``lr * scalar_lr_scale``, clamped to ``scalar_max``;
* the momentum ``delta`` holds whole updates (no first-moment bias correction); no weight decay;
* from step ``clipping_update_period`` on, gradients are scaled down when the group's RMS-weighted
  gradient norm exceeds ``clipping_scale`` x the median of the last ``clipping_update_period`` norms.

Parameters of one (dtype, shape) are stacked and updated together, in ascending key order (upstream's
bucketing: it changes only float rounding and where the state lives: under each bucket's first
parameter, with a leading stack axis; the other parameters of the bucket have empty state).

Upstream steps once per 4 batches (5 for an epoch's first step) on their *summed* gradients, with
the LR of :func:`upstream_gpt_lr`; that cadence is the caller's, not this class's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from gsv_ray.train.config import UPSTREAM_BASE_LR

#: The LR of upstream's very first GPT optimizer step (hard-coded in its ``configure_optimizers``).
UPSTREAM_GPT_FIRST_LR = 0.01
#: Every later step: upstream's ``WarmupCosineLRSchedule.step()`` computes a warmup/cosine value, then
#: writes this literal into the optimizer, so the config's lr/lr_init/lr_end/warmup/decay change nothing.
UPSTREAM_GPT_LR = UPSTREAM_BASE_LR["gpt"]


def upstream_gpt_lr(step: int) -> float:
    """The LR upstream's stage 1 really uses for optimizer step ``step`` (0 = the first update):
    0.01, then 0.002 forever. A documented fact; our training applies its own schedule."""
    if step < 0:
        raise ValueError(f"step must be >= 0, not {step}")
    return UPSTREAM_GPT_FIRST_LR if step == 0 else UPSTREAM_GPT_LR


class ScaledAdam(torch.optim.Optimizer):
    """Upstream's ScaledAdam with the settings GPT-SoVITS's stage 1 builds it with (``lr`` 0.01,
    betas (0.9, 0.95), ``clipping_scale`` 2.0, ``clipping_update_period`` 1000; the rest are the
    class's own defaults). ``clipping_scale=None`` turns clipping (and its norm history) off.
    Dense float gradients only; a parameter without ``.grad`` counts as an all-zero gradient.
    ``step()`` returns the closure's loss, if one is given."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
        lr: float = UPSTREAM_GPT_FIRST_LR,
        clipping_scale: float | None = 2.0,
        betas: tuple[float, float] = (0.9, 0.95),
        scalar_lr_scale: float = 0.1,
        eps: float = 1e-8,
        param_min_rms: float = 1e-5,
        param_max_rms: float = 3.0,
        scalar_max: float = 10.0,
        size_update_period: int = 4,
        clipping_update_period: int = 1000,
    ) -> None:
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, not {lr}")
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must lie in [0, 1), not {betas}")
        if clipping_scale is not None and not clipping_scale > 0:
            raise ValueError(f"clipping_scale must be > 0 or None, not {clipping_scale}")
        if size_update_period < 1 or clipping_update_period < 1:
            raise ValueError("size_update_period and clipping_update_period must be >= 1")
        defaults = dict(
            lr=lr,
            clipping_scale=clipping_scale,
            betas=tuple(betas),
            scalar_lr_scale=scalar_lr_scale,
            eps=eps,
            param_min_rms=param_min_rms,
            param_max_rms=param_max_rms,
            scalar_max=scalar_max,
            size_update_period=size_update_period,
            clipping_update_period=clipping_update_period,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            buckets = _buckets(group["params"])
            if not buckets:
                continue
            stacked = [(ps, torch.stack([p.detach() for p in ps]), _stacked_grad(ps)) for ps in buckets]
            factor = self._clipping_factor(group, [(self.state[ps[0]], p, g) for ps, p, g in stacked])
            for ps, p, g in stacked:
                if factor != 1.0:
                    g.mul_(factor)
                state = self.state[ps[0]]
                if not state:
                    _init_state(state, p, group["size_update_period"])
                if ps[0].numel() == 1:
                    _scalar_step(group, state, p, g)
                else:
                    _tensor_step(group, state, p, g)
                state["step"] += 1
                for i, q in enumerate(ps):
                    q.copy_(p[i])
        return loss

    def _clipping_factor(self, group: dict, buckets: list[tuple[dict, torch.Tensor, torch.Tensor]]) -> float:
        """Records this step's normalised gradient norm; the factor (<= 1) to scale gradients by."""
        scale, period = group["clipping_scale"], group["clipping_update_period"]
        first = buckets[0][0]
        if scale is None or not first:  # clipping off, or the group's very first step
            return 1.0
        s = int(first["step"])
        sumsq = torch.zeros((), dtype=torch.float32, device=buckets[0][1].device)
        for state, p, g in buckets:
            if p[0].numel() == 1:
                sumsq = sumsq + (g.float() ** 2).sum()
            else:
                sumsq = sumsq + ((g * state["param_rms"]).float() ** 2).sum()
        norm = sumsq.sqrt()
        if "model_norms" not in first:
            first["model_norms"] = torch.zeros(period, dtype=torch.float32, device=norm.device)
        first["model_norms"][s % period] = norm
        if s % period == 0:  # every `period` steps: threshold = scale x the upper median of the ring
            ring = first["model_norms"].sort().values
            first["model_norm_threshold"] = scale * ring[(period // 4) * 2]
        if s < period:
            return 1.0
        return min(1.0, float(first["model_norm_threshold"] / (norm + 1e-20)))


def _buckets(params: list[torch.nn.Parameter]) -> list[list[torch.nn.Parameter]]:
    """Parameters grouped by (dtype, shape), groups in ascending key order, parameters in given order."""
    by_key: dict[tuple, list[torch.nn.Parameter]] = {}
    for p in params:
        by_key.setdefault((str(p.dtype), *p.shape), []).append(p)
    return [by_key[k] for k in sorted(by_key)]


def _stacked_grad(ps: list[torch.nn.Parameter]) -> torch.Tensor:
    for p in ps:
        if p.grad is not None and p.grad.is_sparse:
            raise RuntimeError("ScaledAdam does not support sparse gradients")
    return torch.stack([p.grad if p.grad is not None else torch.zeros_like(p) for p in ps])


def _init_state(state: dict, p: torch.Tensor, period: int) -> None:
    """``p`` is a bucket's stacked parameters (stack axis first)."""
    state["step"] = 0
    state["delta"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    if p[0].numel() > 1:  # upstream also gives a stack of scalars these (unused) entries; we do not
        rms = _rms(p)
        state["param_rms"] = rms
        state["scale_exp_avg_sq"] = torch.zeros_like(rms)
        state["scale_grads"] = torch.zeros(period, *rms.shape, dtype=p.dtype, device=p.device)


def _rms(p: torch.Tensor) -> torch.Tensor:
    """Per stacked tensor, shaped to broadcast against ``p``."""
    return (p**2).mean(dim=list(range(1, p.ndim)), keepdim=True).sqrt()


def _tensor_step(group: dict, state: dict, p: torch.Tensor, g: torch.Tensor) -> None:
    beta1, beta2 = group["betas"]
    lr, eps, period = group["lr"], group["eps"], group["size_update_period"]
    s, delta = int(state["step"]), state["delta"]
    delta.mul_(beta1)
    state["scale_grads"][s % period] = (p * g).sum(dim=list(range(1, p.ndim)), keepdim=True)
    if s % period == period - 1:
        state["param_rms"].copy_(_rms(p))
        if s > 0:
            _size_step(group, state, p)
    exp_avg_sq = state["exp_avg_sq"]
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    bias_correction2 = 1 - beta2 ** (s + 1)
    v = exp_avg_sq / bias_correction2 if bias_correction2 < 0.99 else exp_avg_sq
    denom = v.sqrt().add_(eps)
    alpha = state["param_rms"].clamp(min=group["param_min_rms"]) * (-lr * (1 - beta1))
    delta.add_(g / denom * alpha)
    p.add_(delta)


def _size_step(group: dict, state: dict, p: torch.Tensor) -> None:
    """The learned log-scale of each stacked tensor: an Adam-like step on ``sum(p * g)`` over the period,
    added to the momentum as ``(1 - b1) * sigma * p``."""
    beta1, beta2 = group["betas"]
    period, scalar_lr = group["size_update_period"], group["lr"] * group["scalar_lr_scale"]
    s, grads = int(state["step"]), state["scale_grads"]
    beta2_period = beta2**period
    scale_exp_avg_sq = state["scale_exp_avg_sq"]
    scale_exp_avg_sq.mul_(beta2_period).add_((grads**2).mean(dim=0), alpha=1 - beta2_period)
    bias_correction2 = 1 - beta2_period ** ((s + 1) // period)
    denom = scale_exp_avg_sq.sqrt() + group["eps"]
    sigma = -scalar_lr * math.sqrt(bias_correction2) * grads.sum(dim=0) / denom
    rms = state["param_rms"]
    sigma = torch.where(rms < group["param_min_rms"], torch.zeros_like(sigma), sigma)  # never shrink further
    sigma = torch.where(rms > group["param_max_rms"], torch.full_like(sigma, -scalar_lr * period), sigma)
    state["delta"].add_(p * sigma, alpha=1 - beta1)


def _scalar_step(group: dict, state: dict, p: torch.Tensor, g: torch.Tensor) -> None:
    """Plain Adam (always bias-corrected second moment) at ``lr * scalar_lr_scale``; the old value is
    clamped to +-scalar_max before the update is added."""
    beta1, beta2 = group["betas"]
    s, delta, exp_avg_sq = int(state["step"]), state["delta"], state["exp_avg_sq"]
    delta.mul_(beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = (exp_avg_sq / (1 - beta2 ** (s + 1))).sqrt() + group["eps"]
    delta.add_(g / denom, alpha=-group["lr"] * group["scalar_lr_scale"] * (1 - beta1))
    p.clamp_(min=-group["scalar_max"], max=group["scalar_max"])
    p.add_(delta)
