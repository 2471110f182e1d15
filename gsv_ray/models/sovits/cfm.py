"""Conditional flow matching (``cfm``) of GPT-SoVITS v3/v4: the training loss and Euler inference.

Training (upstream's ``CFM.forward``): a random time ``t`` per item, noise ``x0``, the straight path
``xt = x0 + t (x1 - x0)`` with target velocity ``x1 - x0``; the first ``prompt_len`` frames are given
as the condition (and zeroed in ``xt``). With probability 0.3 the *shortcut* branch replaces the
target by the mean of two half steps of size ``d = 1/2**base`` (``base`` in 2..7) taken by the
estimator itself, and conditions on ``2d``. The loss is each item's MSE over its non-prompt frames,
averaged over items.

Every random draw can be passed in (:class:`CFMDraws`), in upstream's order: ``t``, ``x0``, the
shortcut coin (Python's ``random.random()`` upstream), ``base``. Quirks kept on purpose: ``d`` below
0.01 is fed to the estimator as 0 but still used for the half step and ``t + d``; the midpoint's
prompt frames are not re-zeroed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from gsv_ray.models.sovits.dit import DiT

__all__ = ["CFM", "CFMDraws", "SHORTCUT_PROBABILITY"]

SHORTCUT_PROBABILITY = 0.3


@dataclass(frozen=True)
class CFMDraws:
    """The random numbers of one training forward (None: drawn here, as upstream draws them)."""

    t: torch.Tensor | None = None  # [B] uniform
    x0: torch.Tensor | None = None  # like x1, standard normal
    shortcut_u: float | None = None  # uniform; the shortcut branch runs iff < 0.3
    base: torch.Tensor | None = None  # [B] int in [2, 8)


class CFM(nn.Module):
    def __init__(self, in_channels: int, estimator: DiT):
        super().__init__()
        self.in_channels = in_channels
        self.estimator = estimator

    def forward(
        self,
        x1: torch.Tensor,
        x_lens: torch.Tensor,
        prompt_lens: torch.Tensor,
        mu: torch.Tensor,
        draws: CFMDraws = CFMDraws(),
        on_call: Callable[[str, dict[str, torch.Tensor]], None] | None = None,
    ) -> torch.Tensor:
        """The flow-matching loss. ``x1`` ``[B, mel, T]`` target mel, ``mu`` ``[B, text_dim, T]``.
        ``on_call(name, io)`` sees every estimator call (``v_pred_1``, ``v_pred_2``, ``vt_pred``)."""
        b = x1.size(0)
        t = draws.t if draws.t is not None else torch.rand([b], device=x1.device, dtype=x1.dtype)
        x0 = draws.x0 if draws.x0 is not None else torch.randn_like(x1)
        t3 = t[:, None, None]
        vt = x1 - x0
        xt = x0 + t3 * vt
        dt = torch.zeros_like(t)
        prompt = torch.zeros_like(x1)
        for i in range(b):
            n = int(prompt_lens[i])
            prompt[i, :, :n] = x1[i, :, :n]
            xt[i, :, :n] = 0

        def estimate(name: str, x: torch.Tensor, time: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
            out = self.estimator(x, prompt, x_lens, time, d, mu)
            if on_call is not None:
                on_call(name, {"x_in": x, "time": time, "dt": d, "out": out})
            return out.transpose(1, 2)

        coin = draws.shortcut_u if draws.shortcut_u is not None else random.random()
        if coin < SHORTCUT_PROBABILITY:
            base = draws.base if draws.base is not None else torch.randint(2, 8, (b,), device=x1.device)
            d = 1 / torch.pow(2, base)
            d_input = d.clone()
            d_input[d_input < 1e-2] = 0
            with torch.no_grad():  # the target is detached: no graph for the two half steps
                v1 = estimate("v_pred_1", xt, t, d_input)
                x_mid = xt + d[:, None, None] * v1
                v2 = estimate("v_pred_2", x_mid, t + d, d_input)
            vt = (v1 + v2) / 2
            dt = 2 * d
        vt_pred = estimate("vt_pred", xt, t, dt.to(t.dtype))
        loss = x1.new_zeros(())
        for i in range(b):
            lo, hi = int(prompt_lens[i]), int(x_lens[i])
            loss = loss + torch.mean((vt_pred[i, :, lo:hi] - vt[i, :, lo:hi]) ** 2)
        return loss / b

    @torch.no_grad()
    def inference(
        self,
        mu: torch.Tensor,
        x_lens: torch.Tensor,
        prompt: torch.Tensor,
        n_timesteps: int,
        temperature: float = 1.0,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Euler steps from noise to mel ``[B, mel, T]``. ``mu`` ``[B, T, text_dim]`` (time first, as
        upstream's inference passes it); the first ``prompt.size(-1)`` frames are the given prompt."""
        b, t_len = mu.size(0), mu.size(1)
        x = noise if noise is not None else torch.randn([b, self.in_channels, t_len], device=mu.device, dtype=mu.dtype)
        x = x * temperature
        n = prompt.size(-1)
        prompt_x = torch.zeros_like(x)
        prompt_x[..., :n] = prompt[..., :n]
        x[..., :n] = 0
        mu = mu.transpose(1, 2)
        t, d = 0.0, 1 / n_timesteps
        for _ in range(n_timesteps):
            t_in = torch.full((b,), t, device=x.device, dtype=mu.dtype)
            d_in = torch.full((b,), d, device=x.device, dtype=mu.dtype)
            v = self.estimator(x, prompt_x, x_lens, t_in, d_in, mu).transpose(1, 2)
            x = x + d * v
            t = t + d
            x[:, :, :n] = 0
        return x
