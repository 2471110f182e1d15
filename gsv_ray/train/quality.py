"""Inference-path quality metrics: what a listener hears, as numbers (pure functions).

Audio (the resynthesis uses the utterance's real tokens, so it aligns with the real audio frame by
frame; both are trimmed to the shorter length):

* :func:`mel_dist` — mean absolute difference of natural-log mel spectrograms (80 slaney mels,
  FFT/window 1024, hop 256, 0 .. sr/2; log clamped at 1e-5) over every frame of the utterance.
* :func:`mrstft_dist` — multi-resolution STFT distance, averaged over FFT sizes 512/1024/2048
  (hann window of the FFT size, hop a quarter of it): spectral convergence
  ``||S_ref - S||_F / ||S_ref||_F`` plus the mean absolute log-magnitude difference.

GPT tokens (one generated sequence against its real one):

* :func:`eos_rate` — share of samples that ended (emitted EOS) before the length cap.
* :func:`len_ratio` — generated / real token count; :func:`len_error` = ``|log len_ratio|``
  (symmetric: half as long and twice as long are equally wrong; skipped words < 1, endless > 1).
* :func:`repeat_rate` — share of the sequence's token 4-grams that already occurred earlier in it;
  :func:`longest_run` — the longest run of one token repeated.

Transcripts (the GPT's generated tokens decoded to audio and transcribed by an ASR):

* :func:`cer` — character error rate: Levenshtein distance (substitutions, insertions, deletions,
  each 1) between the normalised transcript and the normalised text, over the text's length.
  :func:`cer_text` normalises both alike: Unicode NFKC, case folded, every punctuation mark,
  symbol and whitespace character dropped (Unicode categories P*, S*, Z* and whitespace), so
  "Hello, world!" and "hello world" are equal and Chinese/Japanese text needs no word splitting.
  An empty text gives 0 for an empty transcript and 1 otherwise; an empty transcript gives 1.

:func:`sovits_quality` and :func:`gpt_quality` are the composites ``val/quality`` logs (lower is
better); their docstrings define them. :func:`eval_pairs` is the fixed reference pairing both
recipes' evaluations use.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence

import torch

from gsv_ray.audio import linear_spectrogram, mel_spectrogram

#: mel_dist's analysis (any sample rate).
MEL_FFT, MEL_HOP, MEL_BANDS = 1024, 256, 80
#: mrstft_dist's FFT sizes (hop = size / 4, window = size).
STFT_SIZES = (512, 1024, 2048)
#: repeat_rate's n-gram order (4 tokens = 160 ms at 25 Hz).
REPEAT_NGRAM = 4
_EPS = 1e-7


def _aligned(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two waveforms ``[T]`` as float32 trimmed to the shorter one."""
    x, y = x.reshape(-1).float(), y.reshape(-1).float()
    n = min(x.numel(), y.numel())
    if n == 0:
        raise ValueError("empty waveform")
    return x[:n], y[:n]


def log_mel_dist(mel_x: torch.Tensor, mel_y: torch.Tensor) -> float:
    """Mean absolute difference of two log mels ``[bands, frames]`` over the shorter's frames."""
    n = min(mel_x.shape[-1], mel_y.shape[-1])
    return float((mel_x[..., :n].float() - mel_y[..., :n].float()).abs().mean())


def mel_dist(x: torch.Tensor, y: torch.Tensor, sampling_rate: int) -> float:
    """Log-mel distance of waveforms ``x`` and ``y`` (``[T]``, same rate): 0 for identical audio,
    symmetric, larger the more they differ (see the module docstring for the analysis)."""
    x, y = _aligned(x, y)
    n_fft = min(MEL_FFT, 1 << (x.numel().bit_length() - 1))  # a very short clip: one shorter frame
    mels = mel_spectrogram(torch.stack([x, y]), n_fft, MEL_BANDS, sampling_rate, min(MEL_HOP, n_fft // 4), n_fft)
    return log_mel_dist(mels[0], mels[1])


def mrstft_dist(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Multi-resolution STFT distance of ``x`` from the reference ``ref`` (the real audio): mean over
    :data:`STFT_SIZES` of spectral convergence plus mean absolute log-magnitude difference."""
    x, ref = _aligned(x, ref)
    total = 0.0
    for size in STFT_SIZES:
        mags = linear_spectrogram(torch.stack([x, ref]), size, size // 4, size)
        s_x, s_r = mags[0], mags[1]
        sc = torch.linalg.norm(s_r - s_x) / torch.linalg.norm(s_r).clamp(min=_EPS)
        log_mag = (torch.log(s_r.clamp(min=_EPS)) - torch.log(s_x.clamp(min=_EPS))).abs().mean()
        total += float(sc + log_mag)
    return total / len(STFT_SIZES)


def eval_pairs(names: list[str]) -> list[int]:
    """The fixed reference pairing: item ``i``'s reference is the next held-out utterance in sorted
    name order (the last one's is the first; a single utterance is its own)."""
    order = sorted(range(len(names)), key=lambda i: names[i])
    partner = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}
    return [partner[i] for i in range(len(names))]


# -- GPT tokens ----------------------------------------------------------------------------------
def eos_rate(ended: Sequence[bool]) -> float:
    """Share of samples that emitted EOS before the length cap (1: all ended, 0: none did)."""
    return sum(map(bool, ended)) / len(ended) if len(ended) else float("nan")


def len_ratio(generated: int, real: int) -> float:
    """Generated / real token count (> 0 real tokens)."""
    if real <= 0:
        raise ValueError("the real sequence is empty")
    return generated / real


def len_error(ratio: float) -> float:
    """``|log ratio|``: 0 at the real length; a ratio of 0 (nothing generated) counts as ratio 1/100."""
    return abs(math.log(max(ratio, 1e-2)))


def repeat_rate(tokens: Sequence[int], n: int = REPEAT_NGRAM) -> float:
    """Share of the token ``n``-grams of ``tokens`` that already occurred earlier in it (0 when the
    sequence is shorter than ``n`` or has no repeated n-gram; near 1 for a loop)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return (len(grams) - len(set(grams))) / len(grams)


def longest_run(tokens: Sequence[int]) -> int:
    """The longest run of one token repeated back to back (0 for an empty sequence)."""
    best = run = 0
    prev = None
    for t in tokens:
        run = run + 1 if t == prev else 1
        prev = t
        best = max(best, run)
    return best


# -- transcripts ---------------------------------------------------------------------------------
def cer_text(text: str) -> str:
    """``text`` as :func:`cer` compares it: NFKC, case folded, without punctuation, symbols or spaces."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(c for c in folded if not c.isspace() and unicodedata.category(c)[0] not in "PSZ")


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance: the fewest substitutions, insertions and deletions turning ``a`` into ``b``."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def cer(hypothesis: str, reference: str) -> float:
    """Character error rate of ``hypothesis`` (the transcript) against ``reference`` (the text), both
    normalised by :func:`cer_text`: edit distance / reference length (0 = exact; may exceed 1 when
    the transcript is longer). An empty reference: 0 for an empty transcript, else 1."""
    hyp, ref = cer_text(hypothesis), cer_text(reference)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(hyp, ref) / len(ref)


def sovits_quality(mel: float, spk_sim: float | None = None) -> float:
    """SoVITS composite (lower is better): ``mel_dist``, plus ``1 - spk_sim`` when a speaker model
    measured it (absent without one: never guessed)."""
    return mel + (0.0 if spk_sim is None else 1.0 - spk_sim)


def gpt_quality(length_error: float, repeats: float, ended: float, cer: float | None = None) -> float:
    """GPT composite (lower is better): ``len_error + repeat_rate + (1 - eos_rate)``, plus ``cer``
    when an ASR measured it. Each term is 0 for a model that stops at the real length without loops."""
    return length_error + repeats + (1.0 - ended) + (0.0 if cer is None else cer)
