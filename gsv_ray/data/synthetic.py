"""A small, fast, *learnable* synthetic experiment folder in GPT-SoVITS's exact layout.

Demos and tests need a ``logs/<exp>/`` folder without HuBERT, BERT, ERes2Net or real speech. This
writes one that has every file of tests/reference/gpt_sovits/FORMATS.md section 7 in the real
formats, and whose contents are tied together the way real data is, so that a few dozen training
steps visibly lower a loss:

* text: Chinese lines (``zh``) built from a fixed table of characters with their pinyin phones
  (two phones per character, punctuation one), ``word2ph`` lists and normalised text;
* audio: each phone is a fixed "sound" (three sines in fixed frequency bands, chosen by a hash of
  the phone symbol), phones are laid out in time with random durations and short silences;
  stored as 32 kHz mono 16-bit PCM like ``5-wav32k``;
* "HuBERT" ``[1, 768, T50]``: log band energies of 25 ms frames every 20 ms (HuBERT's framing of
  the 16 kHz signal, so ``T50`` is one short of the spectrogram about half the time, as with real
  files) through a fixed random projection -- a deterministic function of the audio;
* semantic tokens (25 Hz, like ``3-get-semantic.py``'s stride-2 projection): the nearest of a
  fixed codebook of the phones' canonical features, each mapped to a fixed token id -- so tokens
  follow the phones and their durations;
* "BERT" ``[1024, n_phones]``: a fixed vector per character repeated ``word2ph`` times;
* ``7-sv_cn`` ``[1, 20480]`` (v2Pro/v2ProPlus): one speaker vector plus a little noise.

Every fixed table (sounds, projection, codebook, token ids, BERT vectors) is independent of
``seed``; ``seed`` only picks the sentences, durations, phases and noise.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gsv_ray.audio import write_wav
from gsv_ray.data.experiment import (
    BERT_DIR,
    HUBERT_DIR,
    NAME2TEXT,
    SEMANTIC_HEADER,
    SEMANTIC_TSV,
    SV_DIR,
    WAV_DIR,
)
from gsv_ray.resources import BERT_DIM, PRO_VERSIONS, S2_VERSIONS, SSL_DIM, SV_DIM, symbols

__all__ = [
    "SAMPLING_RATE",
    "CHARACTERS",
    "SyntheticUtterance",
    "make_synthetic_experiment",
    "synthesize_utterances",
    "hubert_features",
    "semantic_tokens",
    "hubert_frames",
]

SAMPLING_RATE = 32000
_HOP = 640  # 50 Hz at 32 kHz (spectrogram and HuBERT frame rate)
_WIN = 800  # 25 ms analysis window (HuBERT's 400 samples at 16 kHz)
_NFFT = 1024
_BANDS = 48  # energy bands over 0..8 kHz (what a 16 kHz model sees)
_TONE_AMP = 0.22  # per sine; three sines stay below full scale
_NOISE = 0.002
_ENERGY_FLOOR = 1.0  # log(E + floor): silence gives a flat (zero) feature
_FIXED_SEED = 20240917  # fixed tables, independent of the experiment seed

#: (character, initial, final) -- pinyin phones present in both the v1 and v2 symbol tables.
CHARACTERS: tuple[tuple[str, str, str], ...] = (
    ("你", "n", "i3"),
    ("好", "h", "ao3"),
    ("我", "w", "o3"),
    ("们", "m", "en5"),
    ("是", "sh", "ir4"),
    ("中", "zh", "ong1"),
    ("国", "g", "uo2"),
    ("人", "r", "en2"),
    ("大", "d", "a4"),
    ("家", "j", "ia1"),
    ("天", "t", "ian1"),
    ("气", "q", "i4"),
    ("很", "h", "en3"),
    ("不", "b", "u4"),
    ("来", "l", "ai2"),
    ("说", "sh", "uo1"),
    ("上", "sh", "ang4"),
    ("下", "x", "ia4"),
    ("学", "x", "ve2"),
    ("生", "sh", "eng1"),
    ("开", "k", "ai1"),
    ("心", "x", "in1"),
    ("北", "b", "ei3"),
    ("京", "j", "ing1"),
)
_PUNCT = {",": ",", ".": "."}  # normalised punctuation -> its phone (word2ph 1, a silence)


@dataclass(frozen=True)
class SyntheticUtterance:
    """What one synthetic line is made of (returned for tests and demos)."""

    name: str
    phones: tuple[str, ...]
    word2ph: tuple[int, ...]
    norm_text: str
    audio: np.ndarray  # int16 samples as written
    phone_frames: tuple[int, ...]  # 50 Hz frames per phone (leading/trailing silence excluded)
    lead_frames: int  # 50 Hz frames of silence before the first phone


# ----------------------------------------------------------------------------- fixed tables
def _symbol_rng(symbol: str) -> np.random.Generator:
    return np.random.default_rng([_FIXED_SEED, zlib.crc32(symbol.encode("utf-8"))])


def _phone_bands(symbol: str) -> np.ndarray:
    """Three distinct energy bands (indices) that make up a phone's sound."""
    return np.sort(_symbol_rng(symbol).choice(np.arange(2, _BANDS - 2), size=3, replace=False))


def _band_edges() -> np.ndarray:
    return np.linspace(0, _NFFT // 4, _BANDS + 1).round().astype(int)  # bins 0..256 = 0..8 kHz


def _phone_freqs(symbol: str) -> np.ndarray:
    edges = _band_edges()
    bins = (edges[_phone_bands(symbol)] + edges[_phone_bands(symbol) + 1]) / 2
    return bins * SAMPLING_RATE / _NFFT


def _inventory() -> list[str]:
    """Phones the generator can emit (sounding ones), in a fixed order."""
    seen: dict[str, None] = {}
    for _, ini, fin in CHARACTERS:
        seen.setdefault(ini)
        seen.setdefault(fin)
    return list(seen)


@dataclass(frozen=True)
class _Tables:
    """The fixed random tables (built per call from fixed seeds; no module-level state)."""

    projection: np.ndarray  # [48, 768]
    codewords: np.ndarray  # [K, 768]: silence, then each phone's canonical feature
    token_of: np.ndarray  # [K] token id of each codeword


def _projection() -> np.ndarray:
    rng = np.random.default_rng([_FIXED_SEED, 1])
    return (rng.standard_normal((_BANDS, SSL_DIM)) / np.sqrt(_BANDS)).astype(np.float32)


def _tables() -> _Tables:
    projection = _projection()
    rng = np.random.default_rng([_FIXED_SEED, 2])
    words = [np.zeros(SSL_DIM, np.float32)]
    for sym in _inventory():
        words.append(hubert_features(_tone(sym, 6 * _HOP, rng), projection).mean(axis=1))
    token_of = np.random.default_rng([_FIXED_SEED, 3]).permutation(1024)[: len(words)]
    return _Tables(projection, np.stack(words).astype(np.float32), token_of.astype(np.int64))


def _bert_vector(char: str) -> np.ndarray:
    return (0.3 * _symbol_rng("bert:" + char).standard_normal(BERT_DIM)).astype(np.float32)


# ----------------------------------------------------------------------------- signal pieces
def _tone(symbol: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` float samples of a phone's sound, with 5 ms raised-cosine edges."""
    t = np.arange(n) / SAMPLING_RATE
    freqs = _phone_freqs(symbol)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    amps = _TONE_AMP * rng.uniform(0.85, 1.0, size=3)
    x = (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * t[None, :] + phases[:, None])).sum(0)
    fade = min(n // 2, SAMPLING_RATE // 200)
    if fade > 0:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, fade))
        x[:fade] *= ramp
        x[-fade:] *= ramp[::-1]
    return x


def hubert_frames(num_samples: int) -> int:
    """Frames HuBERT gives for ``num_samples`` at 32 kHz (16 kHz input, window 400, stride 320)."""
    n16 = num_samples // 2
    return 0 if n16 < 400 else (n16 - 400) // 320 + 1


def hubert_features(audio: np.ndarray, projection: np.ndarray | None = None) -> np.ndarray:
    """The synthetic "HuBERT": ``[768, T50]`` float32 from float audio at 32 kHz.

    Frame ``i`` covers samples ``[640 i, 640 i + 800)``; its log band energies (0..8 kHz, floored
    so silence is flat), centred over bands, go through a fixed random projection.
    """
    x = np.asarray(audio, dtype=np.float64)
    t = hubert_frames(len(x))
    if t == 0:
        return np.zeros((SSL_DIM, 0), np.float32)
    idx = np.arange(t)[:, None] * _HOP + np.arange(_WIN)[None, :]
    frames = x[idx] * np.hanning(_WIN)[None, :]
    power = np.abs(np.fft.rfft(frames, n=_NFFT, axis=1)) ** 2
    edges = _band_edges()
    energy = np.add.reduceat(power[:, : edges[-1]], edges[:-1], axis=1)
    logs = np.log(energy + _ENERGY_FLOOR)
    logs -= logs.mean(axis=1, keepdims=True)
    if projection is None:
        projection = _projection()
    return (logs.astype(np.float32) @ projection).T.copy() / 4.0


def semantic_tokens(features: np.ndarray, tables: _Tables | None = None) -> np.ndarray:
    """25 Hz token ids from ``[768, T50]`` features: pairs of frames averaged (stride 2, as the
    SoVITS ``ssl_proj``), then the token of the nearest fixed codeword."""
    t25 = features.shape[1] // 2
    pairs = features[:, : 2 * t25].reshape(SSL_DIM, t25, 2).mean(axis=2).T  # [T25, 768]
    tables = tables or _tables()
    words, token_of = tables.codewords, tables.token_of
    d = ((pairs[:, None, :] - words[None, :, :]) ** 2).sum(-1)
    return token_of[d.argmin(axis=1)]


# ----------------------------------------------------------------------------- utterances
def synthesize_utterances(num_utterances: int, seed: int = 0, prefix: str = "synth") -> list[SyntheticUtterance]:
    """The sentences and audio of a synthetic experiment (5-8 characters, ~1.1-2 s each)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num_utterances):
        n_chars = int(rng.integers(5, 9))
        picks = [CHARACTERS[j] for j in rng.integers(0, len(CHARACTERS), size=n_chars)]
        comma_at = int(rng.integers(2, n_chars - 1)) if rng.random() < 0.5 else -1
        chars: list[str] = []
        phones: list[str] = []
        word2ph: list[int] = []
        for k, (ch, ini, fin) in enumerate(picks):
            if k == comma_at:
                chars.append(",")
                phones.append(_PUNCT[","])
                word2ph.append(1)
            chars.append(ch)
            phones += [ini, fin]
            word2ph.append(2)
        chars.append(".")
        phones.append(_PUNCT["."])
        word2ph.append(1)

        lead = int(rng.integers(4, 7))
        pieces = [np.zeros(lead * _HOP)]
        frames_per_phone = []
        for k, ph in enumerate(phones):
            if ph in _PUNCT.values():
                n_frames = int(rng.integers(6, 10)) if k < len(phones) - 1 else int(rng.integers(3, 5))
                pieces.append(np.zeros(n_frames * _HOP))
            else:
                is_initial = ph.isalpha()  # finals carry a tone digit
                n_frames = int(rng.integers(3, 6)) if is_initial else int(rng.integers(5, 9))
                pieces.append(_tone(ph, n_frames * _HOP, rng))
            frames_per_phone.append(n_frames)
        pieces.append(np.zeros(int(rng.integers(3, 5)) * _HOP + int(rng.integers(0, _HOP))))
        x = np.concatenate(pieces) + _NOISE * rng.standard_normal(sum(len(p) for p in pieces))
        audio = np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
        out.append(
            SyntheticUtterance(
                name=f"{prefix}_{i:03d}.wav",
                phones=tuple(phones),
                word2ph=tuple(word2ph),
                norm_text="".join(chars),
                audio=audio,
                phone_frames=tuple(frames_per_phone),
                lead_frames=lead,
            )
        )
    return out


def _save(tensor: torch.Tensor, path: Path, half: bool) -> None:
    torch.save((tensor.half() if half else tensor.float()).contiguous().clone(), path)


def make_synthetic_experiment(
    root: str | Path,
    *,
    version: str = "v2",
    num_utterances: int = 16,
    seed: int = 0,
    with_semantic: bool = True,
    half: bool = False,
    prefix: str = "synth",
) -> Path:
    """Write a synthetic ``logs/<exp>`` folder at ``root`` (created; must be empty) and return it.

    Files: ``2-name2text.txt``, ``3-bert/``, ``4-cnhubert/``, ``5-wav32k/``, with ``with_semantic``
    ``6-name2semantic.tsv``, and for v2Pro/v2ProPlus ``7-sv_cn/``. ``half`` stores the feature
    tensors as float16, as GPU preprocessing with ``is_half`` does. Phones come from the part of the
    table v1 and v2 share, so one folder serves every version (v1 uses the same ids).
    """
    if version not in S2_VERSIONS:
        raise ValueError(f"unknown version {version!r}; expected one of {S2_VERSIONS}")
    if num_utterances < 1:
        raise ValueError("num_utterances must be at least 1")
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    table = set(symbols("v1" if version == "v1" else "v2"))
    utts = synthesize_utterances(num_utterances, seed, prefix)
    for u in utts:
        assert set(u.phones) <= table, set(u.phones) - table

    for sub in (BERT_DIR, HUBERT_DIR, WAV_DIR) + ((SV_DIR,) if version in PRO_VERSIONS else ()):
        (root / sub).mkdir(parents=True, exist_ok=True)
    tables = _tables()
    speaker = np.random.default_rng([seed, 7]).standard_normal(SV_DIM).astype(np.float32)
    noise_rng = np.random.default_rng([seed, 8])

    text_lines, tsv_lines = [], [SEMANTIC_HEADER]
    for u in utts:
        write_wav(root / WAV_DIR / u.name, u.audio, SAMPLING_RATE)
        feats = hubert_features(u.audio.astype(np.float64) / 32768.0, tables.projection)
        _save(torch.from_numpy(feats).unsqueeze(0), root / HUBERT_DIR / f"{u.name}.pt", half)
        chars = list(u.norm_text)
        bert = np.concatenate([np.repeat(_bert_vector(c)[:, None], n, axis=1) for c, n in zip(chars, u.word2ph)], 1)
        _save(torch.from_numpy(bert), root / BERT_DIR / f"{u.name}.pt", half)
        if version in PRO_VERSIONS:
            sv = speaker + 0.05 * noise_rng.standard_normal(SV_DIM).astype(np.float32)
            _save(torch.from_numpy(sv).unsqueeze(0), root / SV_DIR / f"{u.name}.pt", half)
        text_lines.append(f"{u.name}\t{' '.join(u.phones)}\t{list(u.word2ph)}\t{u.norm_text}")
        if with_semantic:
            tsv_lines.append(f"{u.name}\t{' '.join(str(int(t)) for t in semantic_tokens(feats, tables))}")

    (root / NAME2TEXT).write_text("\n".join(text_lines) + "\n", encoding="utf-8")
    if with_semantic:
        (root / SEMANTIC_TSV).write_text("\n".join(tsv_lines) + "\n", encoding="utf-8")
    return root
