"""What both bucket samplers share: a batch sampler for one rank of ``num_replicas``, deterministic in
``seed + epoch``, validated the same way."""

from __future__ import annotations

from torch.utils.data import Sampler


class RankBatchSampler(Sampler[list[int]]):
    """Base of :class:`~gsv_ray.data.gpt.GPTBucketSampler` and
    :class:`~gsv_ray.data.sovits.SoVITSBucketSampler`: checks ``batch_size >= 1`` and
    ``0 <= rank < num_replicas`` (ValueError otherwise), keeps the options, starts at epoch 0."""

    def __init__(self, batch_size: int, *, num_replicas: int, rank: int, shuffle: bool, seed: int) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the next epoch's order (call before each epoch)."""
        self.epoch = epoch
