"""SoVITS (v1/v2/v2Pro/v2ProPlus) multi-period discriminator, key-compatible with GPT-SoVITS.

Structure (HiFi-GAN style, as GPT-SoVITS trains it):

* ``discriminators.0`` -- a scale discriminator on the raw waveform (1-D grouped convolutions);
* ``discriminators.1..`` -- one period discriminator per period (2, 3, 5, 7, 11; v2Pro and
  v2ProPlus add 17 and 23). Each folds the waveform into ``[B, 1, T/p, p]`` and runs 2-D
  convolutions with ``(k, 1)`` kernels, i.e. along time within each phase of the period.

Every convolution is wrapped in the legacy weight norm (``bias``, ``weight_g``, ``weight_v``), so a
GPT-SoVITS ``D_*.pth`` ``"model"`` state_dict loads strictly. ``width_divisor`` narrows every conv
the way the reference fixtures do (channels ``c -> max(1, c // d)`` except 1-channel ends, groups
``g -> max(1, g // d)`` lowered until it divides both sides); the default 1 is the real model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gsv_ray.models.layers import WNConv1d, WNConv2d
from gsv_ray.resources import PRO_VERSIONS, VITS_VERSIONS

__all__ = [
    "LRELU_SLOPE",
    "BASE_PERIODS",
    "PRO_PERIODS",
    "periods_for_version",
    "ScaleDiscriminator",
    "PeriodDiscriminator",
    "MultiPeriodDiscriminator",
    "DiscriminatorS",
    "DiscriminatorP",
]

LRELU_SLOPE = 0.1
BASE_PERIODS: tuple[int, ...] = (2, 3, 5, 7, 11)
PRO_PERIODS: tuple[int, ...] = BASE_PERIODS + (17, 23)

# (in, out, kernel, stride, groups, padding) of the scale discriminator's convs, then conv_post.
_SCALE_LAYERS = (
    (1, 16, 15, 1, 1, 7),
    (16, 64, 41, 4, 4, 20),
    (64, 256, 41, 4, 16, 20),
    (256, 1024, 41, 4, 64, 20),
    (1024, 1024, 41, 4, 256, 20),
    (1024, 1024, 5, 1, 1, 2),
)
_SCALE_POST = (1024, 1, 3, 1, 1, 1)
# Channel progression of a period discriminator; all but the last conv stride 3 along time.
_PERIOD_CHANNELS = (1, 32, 128, 512, 1024, 1024)


def periods_for_version(version: str) -> tuple[int, ...]:
    """Periods GPT-SoVITS uses for a model version (v3/v4 train no discriminator)."""
    if version in PRO_VERSIONS:
        return PRO_PERIODS
    if version in VITS_VERSIONS:
        return BASE_PERIODS
    raise ValueError(f"no SoVITS discriminator for version {version!r} (expected v1, v2, v2Pro, v2ProPlus)")


def _width(c: int, divisor: int) -> int:
    return c if c == 1 or divisor == 1 else max(1, c // divisor)


def _groups(g: int, c_in: int, c_out: int, divisor: int) -> int:
    g = max(1, g // divisor)
    while c_in % g or c_out % g:
        g -= 1
    return g


class ScaleDiscriminator(nn.Module):
    """Waveform-scale sub-discriminator (upstream ``DiscriminatorS``)."""

    def __init__(self, width_divisor: int = 1):
        super().__init__()

        def conv(c_in, c_out, k, s, g, p):
            ci, co = _width(c_in, width_divisor), _width(c_out, width_divisor)
            return WNConv1d(ci, co, k, s, padding=p, groups=_groups(g, ci, co, width_divisor))

        self.convs = nn.ModuleList(conv(*spec) for spec in _SCALE_LAYERS)
        self.conv_post = conv(*_SCALE_POST)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x`` ``[B, 1, T]`` -> (logits ``[B, N]``, feature maps incl. the pre-flatten logits)."""
        return _conv_stack(self.convs, self.conv_post, x)


def _conv_stack(convs: nn.ModuleList, post: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Both sub-discriminators' body: leaky-ReLU convs, the post conv, every output kept as a
    feature map; the flattened last one is the logits."""
    fmap = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        fmap.append(x)
    x = post(x)
    fmap.append(x)
    return torch.flatten(x, 1, -1), fmap


class PeriodDiscriminator(nn.Module):
    """Period-``p`` sub-discriminator (upstream ``DiscriminatorP``)."""

    def __init__(self, period: int, kernel_size: int = 5, stride: int = 3, width_divisor: int = 1):
        super().__init__()
        self.period = period
        pad = (kernel_size - 1) // 2
        widths = [_width(c, width_divisor) for c in _PERIOD_CHANNELS]
        n = len(widths) - 1
        self.convs = nn.ModuleList(
            WNConv2d(
                widths[i],
                widths[i + 1],
                (kernel_size, 1),
                (stride if i < n - 1 else 1, 1),
                padding=(pad, 0),
            )
            for i in range(n)
        )
        self.conv_post = WNConv2d(widths[-1], 1, (3, 1), 1, padding=(1, 0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x`` ``[B, 1, T]`` -> (logits ``[B, N]``, 4-D feature maps ``[B, C, T', p]``)."""
        b, c, t = x.shape
        rest = t % self.period
        if rest:
            # Reflect-pad the end so the waveform folds exactly into whole periods.
            x = F.pad(x, (0, self.period - rest), mode="reflect")
            t = x.shape[-1]
        return _conv_stack(self.convs, self.conv_post, x.view(b, c, t // self.period, self.period))


class MultiPeriodDiscriminator(nn.Module):
    """The SoVITS GAN discriminator: one scale discriminator plus one per period.

    ``version`` picks the periods (v1/v2: 2,3,5,7,11; v2Pro/v2ProPlus add 17,23); ``periods``
    overrides it. ``use_spectral_norm`` exists only to mirror upstream's signature: GPT-SoVITS
    never trains with it and its state_dict names differ, so only ``False`` is supported.
    """

    def __init__(
        self,
        version: str = "v2",
        *,
        width_divisor: int = 1,
        periods: tuple[int, ...] | list[int] | None = None,
        use_spectral_norm: bool = False,
    ):
        super().__init__()
        if use_spectral_norm:
            raise NotImplementedError("spectral-norm discriminators are not used by GPT-SoVITS training")
        if width_divisor < 1:
            raise ValueError(f"width_divisor must be >= 1, got {width_divisor}")
        self.version = version
        self.periods = tuple(periods) if periods is not None else periods_for_version(version)
        self.width_divisor = width_divisor
        self.discriminators = nn.ModuleList(
            [ScaleDiscriminator(width_divisor)]
            + [PeriodDiscriminator(p, width_divisor=width_divisor) for p in self.periods]
        )

    def forward(
        self, y: torch.Tensor, y_hat: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[list[torch.Tensor]], list[list[torch.Tensor]]]:
        """Real ``y`` and generated ``y_hat`` ``[B, 1, T]`` ->
        ``(y_d_rs, y_d_gs, fmap_rs, fmap_gs)``, one entry per sub-discriminator, as upstream."""
        y_d_rs, y_d_gs, fmap_rs, fmap_gs = [], [], [], []
        for d in self.discriminators:
            r, fr = d(y)
            g, fg = d(y_hat)
            y_d_rs.append(r)
            y_d_gs.append(g)
            fmap_rs.append(fr)
            fmap_gs.append(fg)
        return y_d_rs, y_d_gs, fmap_rs, fmap_gs


# Upstream class names, for readers coming from GPT-SoVITS.
DiscriminatorS = ScaleDiscriminator
DiscriminatorP = PeriodDiscriminator
