"""SoVITS (stage 2, v1/v2/v2Pro/v2ProPlus) dataset, collate and bucket sampler.

Items and batches are what GPT-SoVITS's ``TextAudioSpeakerLoader`` / ``TextAudioSpeakerCollate`` /
``DistributedBucketSampler`` (``module/data_utils.py``) produce, so a training loop written against
upstream's batch layout works unchanged:

* item ``(ssl [1, 768, T], spec [1025, T], wav [1, N], text [L] int64[, sv_emb [1, 20480]])``;
  the spectrogram is upstream's (reflect pad 704, no centring, ``T = N // 640``) and the HuBERT
  features get one replicated frame appended when their length differs from ``T``;
* batch ``(ssl, ssl_lengths, spec, spec_lengths, wav, wav_lengths, text, text_lengths[, sv_emb])``,
  zero right-padded, sorted by spectrogram length (longest first), the ssl/spec time axes
  rounded up to ``2 * (max // 2 + 1)`` (always even, always at least one pad frame);
* sampler: length buckets between boundaries 32, 300, 400, ..., 1900 frames; each bucket padded by
  repetition to a multiple of ``batch_size * num_replicas``, shuffled per epoch, sharded by rank.

Unlike upstream, a file that fails to load raises (upstream silently trains on zeros) -- the
experiment scan already left out every file it found broken.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import torch
from torch.utils.data import Dataset

from gsv_ray.audio import AudioConfig, AudioFrontend, read_wav_pcm16
from gsv_ray.data.experiment import (
    Experiment,
    Utterance,
    repeated,
    ssl_features_problem,
    upstream_repeats,
)
from gsv_ray.data.sampling import RankBatchSampler
from gsv_ray.errors import GsvError
from gsv_ray.resources import SV_DIM, s2_config

__all__ = [
    "SOVITS_BOUNDARIES",
    "SOVITS_BOUNDARIES_V3",
    "SoVITSItem",
    "SoVITSBatch",
    "SoVITSDataset",
    "collate_sovits",
    "SoVITSPadding",
    "SoVITSBucketSampler",
]

#: ``s2_train.py`` bucket boundaries (frames at 50 Hz): (32, 300], (300, 400], ..., (1800, 1900].
SOVITS_BOUNDARIES: tuple[int, ...] = (32,) + tuple(range(300, 2000, 100))
#: v3/v4 trainers stop at 1000 frames (20 s).
SOVITS_BOUNDARIES_V3: tuple[int, ...] = (32,) + tuple(range(300, 1100, 100))


class SoVITSItem(NamedTuple):
    """One upstream s2 item (``ssl, spec, wav, text[, sv_emb]``) plus its name."""

    ssl: torch.Tensor  # [1, 768, T] (file dtype kept, as upstream)
    spec: torch.Tensor  # [1025, T] float32
    wav: torch.Tensor  # [1, N] float32
    text: torch.Tensor  # [L] int64 phone ids
    sv_emb: torch.Tensor | None  # [1, 20480] (v2Pro/v2ProPlus) or None
    name: str
    key: str = ""  # per-item draw key (a repeated copy's ``name#k``); "" = the name

    def upstream(self) -> tuple[torch.Tensor, ...]:
        base = (self.ssl, self.spec, self.wav, self.text)
        return base if self.sv_emb is None else base + (self.sv_emb,)


class SoVITSBatch(NamedTuple):
    """Upstream's collated s2 batch; ``sv_emb`` is None for v1/v2, ``names`` follow the sorted rows."""

    ssl: torch.Tensor  # [B, 768, Tssl] float32, Tssl = 2 * (max // 2 + 1)
    ssl_lengths: torch.Tensor  # [B] int64
    spec: torch.Tensor  # [B, 1025, Tspec] float32
    spec_lengths: torch.Tensor  # [B] int64
    wav: torch.Tensor  # [B, 1, Nmax] float32
    wav_lengths: torch.Tensor  # [B] int64
    text: torch.Tensor  # [B, Lmax] int64, zero padded
    text_lengths: torch.Tensor  # [B] int64
    sv_emb: torch.Tensor | None  # [B, 20480] float32
    names: tuple[str, ...]
    keys: tuple[str, ...]  # per-row draw keys: the name, ``name#k`` for copy k of a repeated set

    def upstream(self) -> tuple[torch.Tensor, ...]:
        """The 8-tuple (9 with ``sv_emb``) ``s2_train.py`` unpacks."""
        base = tuple(self)[:8]
        return base if self.sv_emb is None else base + (self.sv_emb,)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "SoVITSBatch":
        moved = [t.to(device, non_blocking=non_blocking) if isinstance(t, torch.Tensor) else t for t in self]
        return SoVITSBatch(*moved)


class SoVITSDataset(Dataset):
    """Upstream's s2 items for the given utterances of a SoVITS-stage :class:`Experiment`.

    ``min_items``: upstream repeats a list shorter than 100 items ``max(2, int(100 / n))`` times
    (:func:`~gsv_ray.data.experiment.upstream_repeats`); pass 100 for upstream's epoch (training
    does), None for one pass (validation). Copy k of an utterance is an ordinary item whose draw key
    (:attr:`keys`) is ``name#k``.
    """

    stage = "sovits"

    def __init__(
        self,
        experiment: Experiment,
        names: Sequence[str] | None = None,
        *,
        min_items: int | None = None,
        audio: AudioConfig | None = None,
    ) -> None:
        """``audio``: the front-end the model trains with (the rebuilt config's, so spectrograms
        match the recipe's mel loss); default: upstream's for the version."""
        if experiment.stage != "sovits":
            raise ValueError(f"experiment was opened for stage {experiment.stage!r}, not 'sovits'")
        utts = experiment.utterances if names is None else experiment.subset(names)
        self.version = experiment.version
        self.is_pro = experiment.is_pro
        #: copies of each utterance per epoch (1: not repeated)
        self.copies = upstream_repeats(len(utts), min_items) if min_items else 1
        self.utterances, self.keys = repeated(utts, self.copies, lambda u: u.name)
        audio = audio or AudioConfig.from_s2_data(s2_config(experiment.version)["data"])
        self.hop_length = audio.hop_length
        self.sampling_rate = audio.sampling_rate
        self.frontend = AudioFrontend.from_config(audio)
        #: upstream's sampler lengths: file size // (2 * hop), header bytes included.
        self.lengths: list[int] = [u.bucket_length(self.hop_length) for u in self.utterances]

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def names(self) -> list[str]:
        return [u.name for u in self.utterances]

    def __getitem__(self, index: int) -> SoVITSItem:
        u = self.utterances[index]
        wav, spec, ssl = read_audio_and_features(u, self.frontend)
        sv = None
        if self.is_pro:
            sv = torch.load(u.sv_path, map_location="cpu", weights_only=True).reshape(1, SV_DIM)
        text = torch.tensor(u.phone_ids, dtype=torch.long)
        return SoVITSItem(ssl, spec, wav, text, sv, u.name, self.keys[index])


def read_audio_and_features(u: Utterance, frontend: AudioFrontend) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(wav [1, N], spec [bins, T], ssl [1, 768, T])`` of an utterance as upstream's SoVITS loaders
    read them (every version): the mono 16-bit wav, its linear spectrogram, the HuBERT features
    with one frame replicated when their length differs from the spectrogram's."""
    wav = read_wav_pcm16(u.wav_path)
    if wav.shape[0] != 1:
        raise GsvError(f"{wav.shape[0]}-channel WAV, expected mono", path=u.wav_path)
    with torch.no_grad():
        spec = frontend.spectrogram(wav).squeeze(0)
        ssl = torch.load(u.hubert_path, map_location="cpu", weights_only=True)
    problem = ssl_features_problem(ssl)
    if problem is not None:  # the scan checked it; the file changed since
        raise GsvError(
            f"HuBERT features {problem[1]}",
            path=u.hubert_path,
            fix="re-run the HuBERT step (2-get-hubert-wav32k) for this utterance",
        )
    if ssl.shape[-1] != spec.shape[-1]:  # upstream: one replicated frame, whatever the difference
        ssl = torch.cat([ssl, ssl[..., -1:]], dim=-1)
    return wav, spec, ssl


def _round_even_up(n: int) -> int:
    return 2 * (n // 2 + 1)


class SoVITSPadding(NamedTuple):
    """Lengths a batch is padded to at least (before upstream's even rounding of ssl/spec)."""

    frames: int  # spectrogram frames (the ssl axis is padded to this too)
    samples: int  # wav samples
    phones: int  # text length


def collate_sovits(items: Sequence[SoVITSItem], *, pad_to: SoVITSPadding | None = None) -> SoVITSBatch:
    """Upstream's ``TextAudioSpeakerCollate``: sort by spectrogram length (descending), zero-pad,
    ssl/spec time axes rounded up to ``2 * (max // 2 + 1)``; everything float32 / int64.

    ``pad_to``: pad to at least these lengths. Upstream's generator is not padding-invariant (its
    reference encoder convolves over padded frames), so a micro-batch of a bigger global batch
    (accumulation, data parallelism) is padded as that global batch would be."""
    if not items:
        raise ValueError("empty batch")
    order = torch.sort(torch.tensor([it.spec.shape[1] for it in items], dtype=torch.long), descending=True).indices
    rows = [items[int(i)] for i in order]
    b = len(rows)
    least = pad_to or SoVITSPadding(0, 0, 0)
    max_ssl = _round_even_up(max(max(r.ssl.shape[2] for r in rows), least.frames))
    max_spec = _round_even_up(max(max(r.spec.shape[1] for r in rows), least.frames))
    max_wav = max(max(r.wav.shape[1] for r in rows), least.samples)
    max_text = max(max(r.text.shape[0] for r in rows), least.phones)
    ssl = torch.zeros(b, rows[0].ssl.shape[1], max_ssl)
    spec = torch.zeros(b, rows[0].spec.shape[0], max_spec)
    wav = torch.zeros(b, 1, max_wav)
    text = torch.zeros(b, max_text, dtype=torch.long)
    ssl_len, spec_len, wav_len, text_len = (torch.zeros(b, dtype=torch.long) for _ in range(4))
    pro = rows[0].sv_emb is not None
    sv = torch.zeros(b, SV_DIM) if pro else None
    for i, r in enumerate(rows):
        ssl[i, :, : r.ssl.shape[2]] = r.ssl[0]
        ssl_len[i] = r.ssl.shape[2]
        spec[i, :, : r.spec.shape[1]] = r.spec
        spec_len[i] = r.spec.shape[1]
        wav[i, :, : r.wav.shape[1]] = r.wav
        wav_len[i] = r.wav.shape[1]
        text[i, : r.text.shape[0]] = r.text
        text_len[i] = r.text.shape[0]
        if sv is not None:
            if r.sv_emb is None:
                raise ValueError(f"{r.name}: batch mixes items with and without sv_emb")
            sv[i] = r.sv_emb.reshape(-1)
    return SoVITSBatch(
        ssl,
        ssl_len,
        spec,
        spec_len,
        wav,
        wav_len,
        text,
        text_len,
        sv,
        tuple(r.name for r in rows),
        tuple(r.key or r.name for r in rows),
    )


class SoVITSBucketSampler(RankBatchSampler):
    """Upstream's s2 ``DistributedBucketSampler`` as a batch sampler (yields index lists).

    Lengths ``l`` go to bucket ``i`` when ``boundaries[i] < l <= boundaries[i + 1]``; others are
    never drawn. Empty buckets are removed; each bucket is padded by repeating its (shuffled)
    indices to a multiple of ``batch_size * num_replicas``; rank ``r`` takes every
    ``num_replicas``-th index from ``r``; batches are shuffled. The order depends only on
    ``seed + epoch`` (upstream seeds with the epoch alone, i.e. ``seed=0``). Call
    :meth:`set_epoch` each epoch.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        boundaries: Sequence[int] = SOVITS_BOUNDARIES,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.lengths = list(lengths)
        self.boundaries = list(boundaries)
        buckets: list[list[int]] = [[] for _ in range(len(self.boundaries) - 1)]
        for i, length in enumerate(self.lengths):
            b = self._bucket(length)
            if b >= 0:
                buckets[b].append(i)
        self.buckets = [bk for bk in buckets if bk]  # upstream drops empty buckets
        group = num_replicas * batch_size
        self.num_samples_per_bucket = [len(bk) + (group - len(bk) % group) % group for bk in self.buckets]
        self.total_size = sum(self.num_samples_per_bucket)
        self.num_samples = self.total_size // num_replicas
        if self.total_size == 0:
            raise GsvError(
                f"no utterance length falls inside the bucket boundaries "
                f"({self.boundaries[0]}, {self.boundaries[-1]}] frames",
                fix="use utterances between about 0.65 s and 38 s",
            )

    def _bucket(self, length: int) -> int:
        for i in range(len(self.boundaries) - 1):
            if self.boundaries[i] < length <= self.boundaries[i + 1]:
                return i
        return -1

    @property
    def dropped(self) -> list[int]:
        """Indices never drawn (length outside the boundaries)."""
        inside = {i for bk in self.buckets for i in bk}
        return [i for i in range(len(self.lengths)) if i not in inside]

    def batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch."""
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        if self.shuffle:
            orders = [torch.randperm(len(bk), generator=g).tolist() for bk in self.buckets]
        else:
            orders = [list(range(len(bk))) for bk in self.buckets]
        batches: list[list[int]] = []
        for bk, ids, target in zip(self.buckets, orders, self.num_samples_per_bucket):
            rem = target - len(bk)
            ids = ids + ids * (rem // len(bk)) + ids[: rem % len(bk)]
            ids = ids[self.rank :: self.num_replicas]
            for j in range(len(ids) // self.batch_size):
                batches.append([bk[k] for k in ids[j * self.batch_size : (j + 1) * self.batch_size]])
        if self.shuffle:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[i] for i in perm]
        assert len(batches) * self.batch_size == self.num_samples
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return self.num_samples // self.batch_size
