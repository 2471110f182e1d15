"""The v4 vocoder (``gsv-v4-pretrained/vocoder.pth``): upstream's HiFi-GAN ``Generator`` from the 100-band
v4 mel to 48 kHz audio, used only to render validation samples.

The file is a raw state dict saved after ``remove_weight_norm()``: plain ``weight``/``bias`` keys
(schema ``vocoder_v4_hifigan.json``). Our HiFi-GAN keeps the legacy weight-norm parameters, so the
plain weights are split into ``weight_g = ||w||`` and ``weight_v = w`` on load (``g v / ||v|| = w``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from gsv_ray.errors import GsvError
from gsv_ray.models.sovits.hifigan import HiFiGANGenerator
from gsv_ray.models.sovits.v3 import MEL_NORM

__all__ = ["V4_VOCODER", "V4_VOCODER_RATE", "V4Vocoder", "load_v4_vocoder"]

#: ``Generator(...)`` as upstream builds the v4 vocoder (``inference_webui.py init_hifigan``).
V4_VOCODER = dict(
    initial_channel=100,
    resblock="1",
    resblock_kernel_sizes=(3, 7, 11),
    resblock_dilation_sizes=((1, 3, 5), (1, 3, 5), (1, 3, 5)),
    upsample_rates=(10, 6, 2, 2, 2),
    upsample_initial_channel=512,
    upsample_kernel_sizes=(20, 12, 4, 4, 4),
    gin_channels=0,
    post_bias=True,
)
V4_VOCODER_RATE = 48000  # 480 samples per 100 Hz mel frame


class V4Vocoder(nn.Module):
    def __init__(self, **widths):
        super().__init__()
        self.net = HiFiGANGenerator(**{**V4_VOCODER, **widths})

    def load_plain(self, state_dict: Mapping[str, torch.Tensor]) -> V4Vocoder:
        """Load a plain (weight-norm removed) state dict, strictly."""
        own = self.net.state_dict()
        out = {}
        for key, target in own.items():
            if key.endswith(".weight_g") or key.endswith(".weight_v"):
                w = state_dict.get(key[: -len("_g")])
                if w is None:
                    raise KeyError(key[: -len("_g")])
                w = w.float()
                dims = [d for d in range(w.dim()) if d != 0]
                out[key] = torch.linalg.vector_norm(w, dim=dims, keepdim=True) if key.endswith("_g") else w
            else:
                out[key] = state_dict[key].float()
        plain = {k[: -len("_g")] if k.endswith(("_g", "_v")) else k for k in own}
        unexpected = set(state_dict) - plain
        if unexpected:
            raise KeyError(f"unexpected keys {sorted(unexpected)[:3]}")
        self.net.load_state_dict(out, strict=True)
        return self

    def plain_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict as upstream's file holds it (weight norm removed)."""
        out = {}
        for name, m in self.net.named_modules():
            if hasattr(m, "normed_weight"):
                out[f"{name}.weight"] = m.normed_weight().detach()
                if m.bias is not None:
                    out[f"{name}.bias"] = m.bias.detach()
            elif isinstance(m, nn.Conv1d | nn.ConvTranspose1d):
                out[f"{name}.weight"] = m.weight.detach()
                if m.bias is not None:
                    out[f"{name}.bias"] = m.bias.detach()
        return out

    @torch.no_grad()
    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Normalised v4 mel ``[B, 100, T]`` (as the CFM makes it) -> waveform ``[B, 1, 480 T]``."""
        lo, hi = MEL_NORM
        return self.net((mel + 1) / 2 * (hi - lo) + lo)


def load_v4_vocoder(path: str | Path) -> V4Vocoder:
    """Read ``vocoder.pth`` safely (nothing in it runs) and build the vocoder from it."""
    from gsv_ray.io.safeload import safe_load

    sd = safe_load(Path(path)).obj
    if isinstance(sd, Mapping) and isinstance(sd.get("weight"), Mapping):
        sd = sd["weight"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise GsvError(
            "not a vocoder state dict", path=path, fix="pass GPT_SoVITS/pretrained_models/gsv-v4-pretrained/vocoder.pth"
        )
    pre = sd.get("conv_pre.weight")
    widths = {"upsample_initial_channel": int(pre.shape[0])} if pre is not None and pre.dim() == 3 else {}
    try:
        return V4Vocoder(**widths).load_plain(sd)
    except (KeyError, RuntimeError) as e:
        raise GsvError(
            f"not the v4 vocoder ({str(e).splitlines()[0][:120]})",
            path=path,
            fix="pass GPT_SoVITS/pretrained_models/gsv-v4-pretrained/vocoder.pth (v3's BigVGAN is not supported)",
        ) from None
