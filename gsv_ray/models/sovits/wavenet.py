"""Non-causal WaveNet stack and the two VITS parts built on it: the posterior encoder
(spectrogram -> latent ``z``) and the residual coupling flow (``z <-> z_p``).

All convolutions inside the WaveNet stack use the legacy weight norm (``weight_g``/``weight_v``),
as upstream; the flows' ``pre``/``post`` and the posterior encoder's ``pre``/``proj`` are plain.
"""

from __future__ import annotations

import torch
from torch import nn

from gsv_ray.models.dropout import KeyedDropout
from gsv_ray.models.layers import WNConv1d
from gsv_ray.models.sovits.commons import gated_tanh, length_mask


class WaveNet(nn.Module):
    """Gated dilated convs with residual and skip paths, optionally conditioned on ``g`` [B, gin, 1]."""

    def __init__(
        self,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
        p_dropout: float = 0.0,
    ):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("WaveNet kernel_size must be odd")
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        self.drop = KeyedDropout(p_dropout)
        if gin_channels:
            self.cond_layer = WNConv1d(gin_channels, 2 * hidden_channels * n_layers, 1)
        for i in range(n_layers):
            dilation = dilation_rate**i
            self.in_layers.append(
                WNConv1d(
                    hidden_channels,
                    2 * hidden_channels,
                    kernel_size,
                    dilation=dilation,
                    padding=(kernel_size * dilation - dilation) // 2,
                )
            )
            # the last layer only feeds the skip path
            out = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(WNConv1d(hidden_channels, out, 1))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        h = self.hidden_channels
        output = torch.zeros_like(x)
        cond = self.cond_layer(g) if g is not None else None
        for i, (in_layer, res_skip) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            cond_i = cond[:, 2 * h * i : 2 * h * (i + 1)] if cond is not None else None
            acts = self.drop(gated_tanh(in_layer(x), cond_i, h))
            res_skip_acts = res_skip(acts)
            if i < self.n_layers - 1:
                x = (x + res_skip_acts[:, :h]) * x_mask
                output = output + res_skip_acts[:, h:]
            else:
                output = output + res_skip_acts
        return output * x_mask


class PosteriorEncoder(nn.Module):
    """``enc_q``: linear spectrogram -> ``z = m + eps * exp(logs)`` (training only; never exported)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
    ):
        super().__init__()
        self.out_channels = out_channels
        self.pre = nn.Conv1d(in_channels, hidden_channels, 1)
        self.enc = WaveNet(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels)
        self.proj = nn.Conv1d(hidden_channels, 2 * out_channels, 1)

    def forward(
        self,
        x: torch.Tensor,
        x_lengths: torch.Tensor,
        g: torch.Tensor | None = None,
        eps: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(z, m, logs, x_mask)``; ``eps`` replaces the standard-normal draw.

        ``g`` is detached: the posterior encoder must not train the reference encoder.
        """
        if g is not None:
            g = g.detach()
        x_mask = length_mask(x_lengths, x.size(2), x.dtype)
        x = self.pre(x) * x_mask
        x = self.enc(x, x_mask, g=g)
        m, logs = (self.proj(x) * x_mask).split(self.out_channels, dim=1)
        if eps is None:
            eps = torch.randn_like(m)
        z = (m + eps * torch.exp(logs)) * x_mask
        return z, m, logs, x_mask


class ResidualCouplingLayer(nn.Module):
    """Mean-only affine coupling: the second half is shifted by a WaveNet of the first half."""

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
    ):
        super().__init__()
        if channels % 2:
            raise ValueError("coupling channels must be even")
        self.half_channels = channels // 2
        self.pre = nn.Conv1d(self.half_channels, hidden_channels, 1)
        self.enc = WaveNet(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels)
        self.post = nn.Conv1d(hidden_channels, self.half_channels, 1)
        # a fresh flow is the identity
        nn.init.zeros_(self.post.weight)
        nn.init.zeros_(self.post.bias)

    def forward(
        self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None, reverse: bool = False
    ) -> torch.Tensor:
        x0, x1 = x.split(self.half_channels, dim=1)
        h = self.enc(self.pre(x0) * x_mask, x_mask, g=g)
        m = self.post(h) * x_mask
        x1 = (x1 - m) * x_mask if reverse else m + x1 * x_mask
        return torch.cat([x0, x1], dim=1)


class Flip(nn.Module):
    """Reverse the channel order so the next coupling layer transforms the other half."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.flip(x, [1])


class ResidualCouplingBlock(nn.Module):
    """``flow``: ``n_flows`` x (coupling, flip); keys ``flows.0``, ``flows.2``, ... as upstream."""

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        n_flows: int = 4,
        gin_channels: int = 0,
    ):
        super().__init__()
        self.flows = nn.ModuleList()
        for _ in range(n_flows):
            self.flows.append(
                ResidualCouplingLayer(
                    channels, hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels
                )
            )
            self.flows.append(Flip())

    def forward(
        self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None, reverse: bool = False
    ) -> torch.Tensor:
        flows = reversed(self.flows) if reverse else self.flows
        for flow in flows:
            x = flow(x, x_mask, g=g, reverse=reverse)
        return x
