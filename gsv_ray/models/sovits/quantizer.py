"""Residual vector quantizer over HuBERT features (GPT-SoVITS uses one 1024 x 768 codebook).

Key layout matches upstream: ``vq.layers.<i>._codebook.{inited, cluster_size, embed, embed_avg}``
(all float32 buffers). In eval mode a codebook is a nearest-neighbour lookup; in train mode it
also updates itself by exponential moving averages and replaces dead codes, as upstream does.

Uninitialised codebooks (``inited == 0``, what a fresh model has): upstream runs k-means on the
first batch it sees (in train *and* eval mode) and then needs ``torch.distributed``. We run the
same k-means locally on the first batch; if a process group is initialised, rank 0's result is
broadcast so every worker holds the same codebook. Real GPT-SoVITS files always carry
``inited == 1``, so loading one never triggers this.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _sample_rows(samples: torch.Tensor, num: int) -> torch.Tensor:
    n = samples.size(0)
    if n >= num:
        index = torch.randperm(n, device=samples.device)[:num]
    else:
        index = torch.randint(0, n, (num,), device=samples.device)
    return samples[index]


def _nearest(x: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codeword (squared Euclidean distance) for each row of ``x``."""
    dist_ = x.pow(2).sum(1, keepdim=True) - 2 * x @ embed.t() + embed.pow(2).sum(1).unsqueeze(0)
    return dist_.argmin(dim=-1)


def kmeans(
    samples: torch.Tensor, num_clusters: int, num_iters: int = 50, max_samples: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on (at most the first ``max_samples``) rows; empty clusters keep their mean."""
    samples = samples[:max_samples].float()
    means = _sample_rows(samples, num_clusters)
    bins = torch.zeros(num_clusters, dtype=torch.long, device=samples.device)
    for _ in range(num_iters):
        buckets = _nearest(samples, means)
        bins = torch.bincount(buckets, minlength=num_clusters)
        sums = torch.zeros_like(means).index_add_(0, buckets, samples)
        new_means = sums / bins.clamp_min(1).unsqueeze(1).to(sums.dtype)
        means = torch.where((bins == 0).unsqueeze(1), means, new_means)
    return means, bins


class EuclideanCodebook(nn.Module):
    def __init__(
        self,
        dim: int,
        codebook_size: int,
        kmeans_iters: int = 50,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        threshold_ema_dead_code: int = 2,
    ):
        super().__init__()
        self.codebook_size = codebook_size
        self.kmeans_iters = kmeans_iters
        self.decay = decay
        self.epsilon = epsilon
        self.threshold_ema_dead_code = threshold_ema_dead_code
        self.register_buffer("inited", torch.zeros(1))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed", torch.zeros(codebook_size, dim))
        self.register_buffer("embed_avg", torch.zeros(codebook_size, dim))

    @torch.no_grad()
    def init_embed_(self, data: torch.Tensor) -> None:
        """k-means initialisation on ``data`` [N, dim] if not done yet (see module docstring)."""
        if bool(self.inited.item()):
            return
        embed, bins = kmeans(data, self.codebook_size, self.kmeans_iters)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(embed, src=0)
            bins = bins.to(embed.dtype)
            dist.broadcast(bins, src=0)
        self.embed.copy_(embed)
        self.embed_avg.copy_(embed)
        self.cluster_size.copy_(bins)
        self.inited.fill_(1.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., dim]`` -> codes ``[...]`` (no initialisation, no update)."""
        flat = x.reshape(-1, x.size(-1))
        return _nearest(flat, self.embed).view(x.shape[:-1])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.embed)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        if self.threshold_ema_dead_code > 0:
            dead = self.cluster_size < self.threshold_ema_dead_code
            if bool(dead.any()):
                replacement = _sample_rows(flat, self.codebook_size)
                self.embed.copy_(torch.where(dead.unsqueeze(1), replacement, self.embed))
        onehot = F.one_hot(codes, self.codebook_size).to(flat.dtype)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_((flat.t() @ onehot).t(), alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (n + self.codebook_size * self.epsilon) * n
        self.embed.copy_(self.embed_avg / smoothed.unsqueeze(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[..., dim]`` -> (codewords ``[..., dim]``, codes ``[...]``)."""
        flat = x.reshape(-1, x.size(-1))
        self.init_embed_(flat.detach())
        codes = _nearest(flat, self.embed)
        quantized = F.embedding(codes, self.embed)
        if self.training:
            self._ema_update(flat.detach(), codes)
        return quantized.view(x.shape), codes.view(x.shape[:-1])


class VectorQuantization(nn.Module):
    """One codebook over ``[B, dim, T]`` features; straight-through + commitment loss in training."""

    def __init__(self, dim: int, codebook_size: int, commitment_weight: float = 1.0, **codebook_kwargs):
        super().__init__()
        self.commitment_weight = commitment_weight
        self._codebook = EuclideanCodebook(dim, codebook_size, **codebook_kwargs)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._codebook.encode(x.transpose(1, 2))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self._codebook.decode(codes).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x.transpose(1, 2)  # [B, T, dim]
        quantized, codes = self._codebook(x)
        loss = x.new_zeros(1)
        if self.training:
            quantized = x + (quantized - x).detach()
            if self.commitment_weight > 0:
                loss = loss + F.mse_loss(quantized.detach(), x) * self.commitment_weight
        return quantized.transpose(1, 2), codes, loss


class ResidualVectorQuantization(nn.Module):
    def __init__(self, num_quantizers: int, **kwargs):
        super().__init__()
        self.layers = nn.ModuleList(VectorQuantization(**kwargs) for _ in range(num_quantizers))

    def forward(
        self, x: torch.Tensor, n_q: int | None = None, layers: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        residual = x
        quantized_out = torch.zeros_like(x)
        codes, losses, picked = [], [], []
        for i, layer in enumerate(self.layers[: n_q or len(self.layers)]):
            quantized, idx, loss = layer(residual)
            residual = residual - quantized
            quantized_out = quantized_out + quantized
            codes.append(idx)
            losses.append(loss)
            if layers and i in layers:
                picked.append(quantized)
        return quantized_out, torch.stack(codes), torch.stack(losses), picked

    def encode(self, x: torch.Tensor, n_q: int | None = None, start: int = 0) -> torch.Tensor:
        residual, codes = x, []
        for layer in self.layers[start : n_q or len(self.layers)]:
            idx = layer.encode(residual)
            residual = residual - layer.decode(idx)
            codes.append(idx)
        return torch.stack(codes)

    def decode(self, codes: torch.Tensor, start: int = 0) -> torch.Tensor:
        out = None
        for i, idx in enumerate(codes):
            q = self.layers[start + i].decode(idx)
            out = q if out is None else out + q
        return out


class ResidualVectorQuantizer(nn.Module):
    """Upstream's ``ResidualVectorQuantizer`` (attribute ``vq``).

    ``forward(x [B, dim, T])`` -> ``(quantized [B, dim, T], codes [n_q, B, T], commit_loss
    (scalar), per-layer quantized list)``; ``decode(codes [n_q, B, T])`` -> ``[B, dim, T]``.
    """

    def __init__(
        self,
        dimension: int = 768,
        n_q: int = 1,
        bins: int = 1024,
        decay: float = 0.99,
        kmeans_iters: int = 50,
        epsilon: float = 1e-5,
        threshold_ema_dead_code: int = 2,
    ):
        super().__init__()
        self.n_q = n_q
        self.dimension = dimension
        self.bins = bins
        self.vq = ResidualVectorQuantization(
            num_quantizers=n_q,
            dim=dimension,
            codebook_size=bins,
            decay=decay,
            kmeans_iters=kmeans_iters,
            epsilon=epsilon,
            threshold_ema_dead_code=threshold_ema_dead_code,
        )

    def forward(
        self, x: torch.Tensor, n_q: int | None = None, layers: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        n_q = n_q or self.n_q
        if layers and max(layers) >= n_q:
            raise ValueError(f"layer index {max(layers)} out of range for {n_q} quantizers")
        quantized, codes, losses, picked = self.vq(x, n_q=n_q, layers=layers)
        return quantized, codes, losses.mean(), picked

    def encode(self, x: torch.Tensor, n_q: int | None = None, start: int = 0) -> torch.Tensor:
        return self.vq.encode(x, n_q=n_q or self.n_q, start=start)

    def decode(self, codes: torch.Tensor, start: int = 0) -> torch.Tensor:
        return self.vq.decode(codes, start=start)
