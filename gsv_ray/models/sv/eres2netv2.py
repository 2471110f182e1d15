"""ERes2NetV2, the speaker-verification network GPT-SoVITS v2Pro ships
(``pretrained_models/sv/pretrained_eres2netv2w24s4ep4.ckpt``), written from its description
(goldens PREPARE.md section 2.4) with upstream's ``state_dict`` keys and shapes.

Built as upstream builds it: ``ERes2NetV2(baseWidth=24, scale=4, expansion=4)``, stages of
[3, 4, 6, 3] Res2Net-style blocks on 64/128/256/512 channels (x4 at each block's output), the last two
stages fusing their sub-bands with AFF blocks, stage 3 downsampled (stride-2 conv) and fused with
stage 4 by AFF, then temporal statistics pooling (TSTP) and one linear layer to 192 dimensions.
In-block activations are ``Hardtanh(0, 20)``; the stem uses a plain ReLU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ERes2NetV2", "AFF"]


def _capped_relu() -> nn.Module:
    """Upstream's in-block "ReLU" is a Hardtanh clipped to [0, 20]."""
    return nn.Hardtanh(0.0, 20.0)


class AFF(nn.Module):
    """Attentional feature fusion of two equal-shape maps: ``a = 1 + tanh(att([x, y]))``,
    ``x * a + y * (2 - a)``."""

    def __init__(self, channels: int, r: int = 4):
        super().__init__()
        inter = channels // r
        self.local_att = nn.Sequential(
            nn.Conv2d(channels * 2, inter, kernel_size=1),
            nn.BatchNorm2d(inter),
            nn.SiLU(),
            nn.Conv2d(inter, channels, kernel_size=1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        att = 1.0 + torch.tanh(self.local_att(torch.cat((x, y), dim=1)))
        return x * att + y * (2.0 - att)


class _Block(nn.Module):
    """One ERes2NetV2 block: 1x1 conv to ``scale`` sub-bands of ``width`` channels, each sub-band's
    3x3 conv sees the previous sub-band's output merged in (added, or AFF-fused when ``fuse``), 1x1
    conv to ``planes * expansion``, plus the (projected) shortcut."""

    def __init__(
        self, in_planes: int, planes: int, stride: int, base_width: int, scale: int, expansion: int, fuse: bool
    ):
        super().__init__()
        width = int(math.floor(planes * (base_width / 64.0)))
        out_planes = planes * expansion
        self.width, self.scale, self.fused = width, scale, fuse
        self.conv1 = nn.Conv2d(in_planes, width * scale, kernel_size=1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(scale))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scale))
        if fuse:
            self.fuse_models = nn.ModuleList(AFF(width, r=4) for _ in range(scale - 1))
        self.relu = _capped_relu()
        self.conv3 = nn.Conv2d(width * scale, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bands = torch.split(self.relu(self.bn1(self.conv1(x))), self.width, 1)
        outs: list[torch.Tensor] = []
        sp = bands[0]
        for i in range(self.scale):
            if i > 0:
                sp = self.fuse_models[i - 1](sp, bands[i]) if self.fused else sp + bands[i]
            sp = self.relu(self.bns[i](self.convs[i](sp)))
            outs.append(sp)
        out = self.bn3(self.conv3(torch.cat(outs, 1)))
        return self.relu(out + self.shortcut(x))


class ERes2NetV2(nn.Module):
    """The network; input fbank ``[B, T, feat_dim]``. :meth:`forward` -> the ``[B, embedding_size]``
    embedding; :meth:`forward3` -> the ``[B, 20480]`` fused-map time average v2Pro stores as ``sv``."""

    def __init__(
        self,
        *,
        num_blocks: tuple[int, ...] = (3, 4, 6, 3),
        m_channels: int = 64,
        feat_dim: int = 80,
        embedding_size: int = 192,
        base_width: int = 24,
        scale: int = 4,
        expansion: int = 4,
    ):
        super().__init__()
        self._in_planes = m_channels
        stats_dim = int(feat_dim / 8) * m_channels * 8 * expansion
        self.conv1 = nn.Conv2d(1, m_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        cfg = (base_width, scale, expansion)
        self.layer1 = self._stage(m_channels, num_blocks[0], 1, cfg, fuse=False)
        self.layer2 = self._stage(m_channels * 2, num_blocks[1], 2, cfg, fuse=False)
        self.layer3 = self._stage(m_channels * 4, num_blocks[2], 2, cfg, fuse=True)
        self.layer4 = self._stage(m_channels * 8, num_blocks[3], 2, cfg, fuse=True)
        self.layer3_ds = nn.Conv2d(
            m_channels * 4 * expansion, m_channels * 8 * expansion, kernel_size=3, padding=1, stride=2, bias=False
        )
        self.fuse34 = AFF(m_channels * 8 * expansion, r=4)
        self.seg_1 = nn.Linear(stats_dim * 2, embedding_size)

    def _stage(self, planes: int, blocks: int, stride: int, cfg: tuple[int, int, int], *, fuse: bool) -> nn.Sequential:
        base_width, scale, expansion = cfg
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(_Block(self._in_planes, planes, s, base_width, scale, expansion, fuse))
            self._in_planes = planes * expansion
        return nn.Sequential(*layers)

    def fused_map(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B, T, F]`` fbank -> the fused stage-3/4 map ``[B, C, F/8, ceil(ceil(ceil(T/2)/2)/2)]``."""
        x = feats.permute(0, 2, 1).unsqueeze(1)
        out = F.relu(self.bn1(self.conv1(x)))
        out3 = self.layer3(self.layer2(self.layer1(out)))
        out4 = self.layer4(out3)
        return self.fuse34(out4, self.layer3_ds(out3))

    def forward3(self, feats: torch.Tensor) -> torch.Tensor:
        """The v2Pro ``sv`` vector ``[B, C * F/8]``: the fused map's channels x frequencies
        (index ``c * F/8 + f``) averaged over time."""
        return self.fused_map(feats).flatten(start_dim=1, end_dim=2).mean(-1)

    @staticmethod
    def pool(fused: torch.Tensor) -> torch.Tensor:
        """TSTP statistics ``[B, 2 * C * F/8]``: time mean, then ``sqrt(unbiased var + 1e-8)``."""
        x = fused.flatten(start_dim=1, end_dim=2)
        return torch.cat((x.mean(dim=-1), torch.sqrt(torch.var(x, dim=-1) + 1e-8)), dim=-1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """The speaker embedding ``[B, embedding_size]`` (TSTP pooling, then ``seg_1``)."""
        return self.seg_1(self.pool(self.fused_map(feats)))
