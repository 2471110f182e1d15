"""GPT (stage 1) dataset, collate and bucket sampler, as GPT-SoVITS's ``AR/data`` builds them.

* Items follow the rows of ``6-name2semantic.tsv`` (duplicates included) after upstream's filters
  (``> max_sec * 25`` tokens, ``> max_sec * 25 / 2.5`` phones, phones per second outside [3, 25]);
  BERT comes from ``3-bert/<name>.pt`` ``[1024, n_phones]`` or is zeros when the file is absent.
* Collate: phoneme ids right-padded with 0, semantic ids right-padded with ``pad_val`` (1024 =
  EOS), BERT ``[B, 1024, max_phones]`` float32 zero-padded; batch order is the sampler's.
* Sampler: utterances sorted by duration (tokens / 25), cut into buckets about 2 s wide, shuffled
  within buckets, grouped into ``batch_size * num_replicas`` blocks whose order is shuffled, padded
  by wrap-around to an even split, rank ``r`` takes every ``num_replicas``-th index from ``r``; seed
  ``seed + epoch``. Upstream yields indices that a ``DataLoader(batch_size=...)`` chunks; this
  yields those same chunks.
* Batch size: upstream caps ``train.batch_size`` at ``len(dataset) // 4`` (min 1):
  :func:`gpt_batch_size`.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Iterator, NamedTuple, Sequence

import torch
from torch.utils.data import Dataset

from gsv_ray.data.experiment import (
    Experiment,
    repeated,
    upstream_repeats,
)
from gsv_ray.data.sampling import RankBatchSampler
from gsv_ray.errors import GsvError
from gsv_ray.resources import BERT_DIM, CODEBOOK_SIZE

__all__ = [
    "GPT_PAD",
    "GPTItem",
    "GPTBatch",
    "GPTDataset",
    "collate_gpt",
    "GPTBucketSampler",
    "gpt_batch_size",
]

#: Semantic padding value (s1 ``data.pad_val``), equal to the GPT's EOS id.
GPT_PAD = CODEBOOK_SIZE


class GPTItem(NamedTuple):
    idx: int
    name: str
    phoneme_ids: torch.Tensor  # [L] int64
    semantic_ids: torch.Tensor  # [T] int64
    bert_feature: torch.Tensor | None  # [1024, L] (file dtype) or None -> zeros in the batch
    key: str = ""  # per-item draw key (a repeated copy's ``name#k``); "" = the name


class GPTBatch(NamedTuple):
    """Upstream's collated s1 batch (its dict keys, as fields)."""

    ids: list[int]
    phoneme_ids: torch.Tensor  # [B, Lmax] int64, right-padded with 0
    phoneme_ids_len: torch.Tensor  # [B] int64
    semantic_ids: torch.Tensor  # [B, Tmax] int64, right-padded with pad_val
    semantic_ids_len: torch.Tensor  # [B] int64
    bert_feature: torch.Tensor  # [B, 1024, Lmax] float32, zero-padded
    names: tuple[str, ...]
    keys: tuple[str, ...]  # per-row draw keys: the name, ``name#k`` for copy k of a repeated set

    def upstream(self) -> dict:
        """The dict ``collate`` returns upstream (``ids``, ``phoneme_ids``, ... ``bert_feature``)."""
        d = self._asdict()
        d.pop("names")
        d.pop("keys")
        return d

    def model_inputs(self) -> tuple[torch.Tensor, ...]:
        """Arguments of ``Text2SemanticDecoder.forward`` in order."""
        return self.phoneme_ids, self.phoneme_ids_len, self.semantic_ids, self.semantic_ids_len, self.bert_feature

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "GPTBatch":
        return GPTBatch(*[t.to(device, non_blocking=non_blocking) if isinstance(t, torch.Tensor) else t for t in self])


class GPTDataset(Dataset):
    """The GPT items of a GPT-stage :class:`Experiment` (optionally a subset of names).

    ``min_items``: upstream repeats fewer than 100 items ``max(2, int(100 / n))`` times
    (:func:`~gsv_ray.data.experiment.upstream_repeats`, after its filters); pass 100 for upstream's
    epoch (training does), None for one pass (validation). Copy k of an utterance is an ordinary
    item whose draw key (:attr:`keys`) is ``name#k``.
    """

    stage = "gpt"

    def __init__(
        self,
        experiment: Experiment,
        names: Sequence[str] | None = None,
        *,
        min_items: int | None = None,
        pad_val: int = GPT_PAD,
    ) -> None:
        if experiment.stage != "gpt":
            raise ValueError(f"experiment was opened for stage {experiment.stage!r}, not 'gpt'")
        utts = list(experiment.utterances) if names is None else experiment.subset(names)
        #: copies of each utterance per epoch (1: not repeated)
        self.copies = upstream_repeats(len(utts), min_items) if min_items else 1
        self.utterances, self.keys = repeated(utts, self.copies, lambda u: u.name)
        self.hz = experiment.options.hz
        self.pad_val = pad_val

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def names(self) -> list[str]:
        return [u.name for u in self.utterances]

    def get_sample_length(self, idx: int) -> float:
        """Seconds of semantic tokens (upstream's sampler key)."""
        return self.utterances[idx].semantic_seconds(self.hz)

    @property
    def durations(self) -> list[float]:
        return [self.get_sample_length(i) for i in range(len(self))]

    def __getitem__(self, idx: int) -> GPTItem:
        u = self.utterances[idx]
        bert = None
        if u.bert_path is not None:
            bert = torch.load(u.bert_path, map_location="cpu", weights_only=True)
            if bert.dim() != 2 or bert.shape[0] != BERT_DIM or bert.shape[-1] != len(u.phone_ids):
                raise GsvError(
                    f"BERT features shaped {list(bert.shape)} but the line has {len(u.phone_ids)} phones",
                    path=u.bert_path,
                    fix="re-run GPT-SoVITS preprocessing step 1Aa for this experiment",
                )
        return GPTItem(
            idx,
            u.name,
            torch.tensor(u.phone_ids, dtype=torch.long),
            torch.tensor(u.semantic_ids, dtype=torch.long),
            bert,
            self.keys[idx],
        )

    def collate(self, items: Sequence[GPTItem]) -> GPTBatch:
        return collate_gpt(items, pad_val=self.pad_val)


def collate_gpt(items: Sequence[GPTItem], pad_val: int = GPT_PAD, *, pad_to: tuple[int, int] | None = None) -> GPTBatch:
    """Upstream's s1 collate: right padding (phones 0, semantic ``pad_val``), BERT zero-padded.

    ``pad_to=(phones, semantic)`` pads to at least those lengths (data-parallel training pads every
    micro-batch to its global batch's lengths, because upstream's summed loss counts padded targets).
    """
    if not items:
        raise ValueError("empty batch")
    b = len(items)
    p_len = torch.tensor([len(it.phoneme_ids) for it in items], dtype=torch.long)
    s_len = torch.tensor([len(it.semantic_ids) for it in items], dtype=torch.long)
    p_max, s_max = int(p_len.max()), int(s_len.max())
    if pad_to is not None:
        p_max, s_max = max(p_max, pad_to[0]), max(s_max, pad_to[1])
    phones = torch.zeros(b, p_max, dtype=torch.long)
    semantic = torch.full((b, s_max), pad_val, dtype=torch.long)
    bert = torch.zeros(b, BERT_DIM, p_max)
    for i, it in enumerate(items):
        phones[i, : len(it.phoneme_ids)] = it.phoneme_ids
        semantic[i, : len(it.semantic_ids)] = it.semantic_ids
        if it.bert_feature is not None:
            bert[i, :, : it.bert_feature.shape[-1]] = it.bert_feature
    return GPTBatch(
        [it.idx for it in items],
        phones,
        p_len,
        semantic,
        s_len,
        bert,
        tuple(it.name for it in items),
        tuple(it.key or it.name for it in items),
    )


def gpt_batch_size(configured: int, num_items: int) -> int:
    """Upstream's s1 batch size: ``max(min(configured, num_items // 4), 1)``."""
    return max(min(configured, num_items // 4), 1)


class GPTBucketSampler(RankBatchSampler):
    """Upstream's s1 ``DistributedBucketSampler`` (bucket width 2 s), yielding this rank's batches.

    ``durations``: seconds per item (:attr:`GPTDataset.durations`). Deterministic in
    ``seed + epoch`` (a private ``random.Random`` reproduces upstream's global ``random.seed`` +
    ``shuffle`` sequence exactly); call :meth:`set_epoch` each epoch.
    """

    def __init__(
        self,
        durations: Sequence[float],
        batch_size: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        bucket_width: float = 2.0,
    ) -> None:
        super().__init__(batch_size, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        n = len(durations)
        if n == 0:
            raise GsvError("no GPT training items", fix="check the experiment report")
        self.durations = list(durations)
        self.drop_last = drop_last
        if drop_last and n % num_replicas:
            self.num_samples = math.ceil((n - num_replicas) / num_replicas)
        else:
            self.num_samples = math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.buckets = self._make_buckets(bucket_width)

    def _make_buckets(self, width: float) -> list[list[int]]:
        """Sorted by duration; a new bucket starts at the first item >= the running edge, and the
        edge then moves up by one width only (upstream's rule, so gaps make wider buckets)."""
        ordered = sorted(range(len(self.durations)), key=lambda i: self.durations[i])
        buckets: list[list[int]] = []
        cur: list[int] = []
        edge = width
        for i in ordered:
            if self.durations[i] < edge:
                cur.append(i)
            else:
                buckets.append(cur)
                cur = [i]
                edge += width
        if cur:
            buckets.append(cur)
        return buckets

    def indices(self) -> list[int]:
        """This rank's index stream for the current epoch (what upstream's sampler yields)."""
        n = len(self.durations)
        if self.shuffle:
            rng = random.Random(self.seed + self.epoch)
            shuffled = []
            for bucket in self.buckets:
                copy = list(bucket)
                rng.shuffle(copy)
                shuffled.append(copy)
            flat = list(itertools.chain(*shuffled))
            group = self.batch_size * self.num_replicas
            blocks = [flat[k * group : (k + 1) * group] for k in range(math.ceil(len(flat) / group))]
            rng.shuffle(blocks)
            order = list(itertools.chain(*blocks))
        else:
            order = list(range(n))
        if not self.drop_last:
            pad = self.total_size - len(order)
            order += (order * math.ceil(pad / len(order)))[:pad] if pad > len(order) else order[:pad]
        else:
            order = order[: self.total_size]
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        idx = self.indices()
        for k in range(0, len(idx), self.batch_size):
            yield idx[k : k + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)
