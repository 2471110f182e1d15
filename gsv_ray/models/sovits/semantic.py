"""Semantic-token extraction: ``ssl_proj`` + ``quantizer``, nothing else.

GPT-SoVITS's ``extract_latent`` (used by ``prepare_datasets/3-get-semantic.py``) touches only
these two parts, and every generator version -- v1..v2ProPlus and the v3/v4 ``SynthesizerTrnV3``
-- has them under the same keys and shapes. This module holds exactly them, so the semantic
tokens of any GPT-SoVITS file can be recomputed without building (or having) the rest.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from gsv_ray.models.sovits.quantizer import ResidualVectorQuantizer

SEMANTIC_PREFIXES = ("ssl_proj.", "quantizer.")


def build_ssl_proj(ssl_dim: int = 768, semantic_frame_rate: str = "25hz") -> nn.Conv1d:
    """50 Hz HuBERT features -> codebook space; stride 2 halves the rate for "25hz"."""
    if semantic_frame_rate == "25hz":
        return nn.Conv1d(ssl_dim, ssl_dim, 2, stride=2)
    return nn.Conv1d(ssl_dim, ssl_dim, 1, stride=1)


def build_quantizer(
    ssl_dim: int = 768,
    codebook_size: int = 1024,
    n_codebooks: int = 1,
    kmeans_iters: int = 50,
    decay: float = 0.99,
    epsilon: float = 1e-5,
    dead_code_threshold: int = 2,
) -> ResidualVectorQuantizer:
    return ResidualVectorQuantizer(
        dimension=ssl_dim,
        n_q=n_codebooks,
        bins=codebook_size,
        decay=decay,
        kmeans_iters=kmeans_iters,
        epsilon=epsilon,
        threshold_ema_dead_code=dead_code_threshold,
    )


def semantic_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``ssl_proj.*`` / ``quantizer.*`` entries of a generator state_dict, keys unchanged."""
    return {k: v for k, v in state_dict.items() if k.startswith(SEMANTIC_PREFIXES)}


class SemanticExtractor(nn.Module):
    """``ssl_proj`` + ``quantizer`` with upstream key names; ``extract_latent`` as upstream."""

    def __init__(
        self,
        ssl_dim: int = 768,
        codebook_size: int = 1024,
        n_codebooks: int = 1,
        semantic_frame_rate: str = "25hz",
    ):
        super().__init__()
        self.ssl_proj = build_ssl_proj(ssl_dim, semantic_frame_rate)
        self.quantizer = build_quantizer(ssl_dim, codebook_size, n_codebooks)

    @torch.no_grad()
    def extract_latent(self, ssl: torch.Tensor) -> torch.Tensor:
        """HuBERT features ``[B, ssl_dim, T50]`` -> codes ``[B, n_q, T25]`` (int64)."""
        x = self.ssl_proj(ssl.to(self.ssl_proj.weight.dtype))
        _, codes, _, _ = self.quantizer(x)
        return codes.transpose(0, 1)

    def load_semantic_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = False):
        """Load the semantic entries of any generator state_dict (other keys are ignored).

        With ``strict=False`` missing entries (e.g. ``ssl_proj.*`` of a v3/v4 LoRA export) keep
        their current values and are reported in the returned ``missing_keys``.
        """
        return self.load_state_dict(semantic_state_dict(state_dict), strict=strict)

    @property
    def is_initialised(self) -> bool:
        """True when every codebook carries ``inited == 1`` (no k-means would run)."""
        return all(bool(layer._codebook.inited.item()) for layer in self.quantizer.vq.layers)
