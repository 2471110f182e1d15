"""The inference-path metrics (gsv_ray.train.quality) on real speech and on crafted token sequences."""

from __future__ import annotations

import math

import pytest
import torch

from gsv_ray.audio import read_wav_pcm16
from gsv_ray.train import quality as q

RATE = 16000  # arctic_a0007.wav: CMU ARCTIC (licence: arctic_COPYING.txt beside it), 16 kHz mono 16-bit


@pytest.fixture(scope="module")
def speech(goldens_dir):
    wav = read_wav_pcm16(goldens_dir / "prepare_inputs" / "arctic_a0007.wav")[0]
    assert wav.numel() == 4 * RATE and float(wav.abs().max()) > 0.1
    return wav


def with_noise(x: torch.Tensor, snr_db: float) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    scale = x.pow(2).mean().sqrt() / noise.pow(2).mean().sqrt() / 10 ** (snr_db / 20)
    return x + noise * scale


def pitch_shifted(x: torch.Tensor, semitones: float) -> torch.Tensor:
    """Resample-based shift: read the clip 2^(s/12) times faster (pitch and tempo move together)."""
    factor = 2 ** (semitones / 12)
    pos = torch.arange(0, x.numel() - 1, factor, dtype=torch.float64)
    lo = pos.floor().long()
    frac = (pos - lo).float()
    return x[lo] * (1 - frac) + x[lo + 1] * frac


def test_distances_are_zero_on_identical_speech(speech):
    assert q.mel_dist(speech, speech.clone(), RATE) == 0.0
    assert q.mrstft_dist(speech, speech.clone()) == 0.0


def test_distances_grow_with_noise(speech):
    snrs = [40, 30, 20, 10, 0]
    mel = [q.mel_dist(with_noise(speech, s), speech, RATE) for s in snrs]
    mr = [q.mrstft_dist(with_noise(speech, s), speech) for s in snrs]
    assert 0 < mel[0] and all(a < b for a, b in zip(mel, mel[1:])), mel
    assert 0 < mr[0] and all(a < b for a, b in zip(mr, mr[1:])), mr
    assert q.mel_dist(speech, with_noise(speech, 10), RATE) == pytest.approx(mel[3])  # symmetric


def test_distances_grow_with_pitch_shift(speech):
    shifts = [0.5, 1, 2, 4]
    mel = [q.mel_dist(pitch_shifted(speech, s), speech, RATE) for s in shifts]
    mr = [q.mrstft_dist(pitch_shifted(speech, s), speech) for s in shifts]
    assert all(a < b for a, b in zip(mel, mel[1:])), mel
    assert all(a < b for a, b in zip(mr, mr[1:])), mr


def test_token_metrics_on_crafted_sequences():
    assert q.eos_rate([True, False, True, True]) == 0.75
    assert q.len_ratio(50, 100) == 0.5 and q.len_ratio(300, 100) == 3.0
    assert q.len_error(0.5) == pytest.approx(math.log(2)) == pytest.approx(q.len_error(2.0))
    assert q.len_error(1.0) == 0.0 and q.len_error(0.0) == pytest.approx(math.log(100))
    assert q.repeat_rate(list(range(20))) == 0.0
    assert q.repeat_rate([1, 2, 3]) == 0.0  # no 4-gram at all
    loop = [1, 2, 3, 4] * 5  # 17 4-grams, the first 4 new, the other 13 repeats
    assert q.repeat_rate(loop) == pytest.approx(13 / 17)
    assert q.repeat_rate([7] * 10) == pytest.approx(6 / 7)
    assert q.longest_run([1, 1, 2, 2, 2, 3, 1]) == 3 and q.longest_run([]) == 0


def test_composites_are_zero_when_perfect_and_grow_with_each_fault():
    assert q.gpt_quality(0.0, 0.0, 1.0) == 0.0
    assert q.gpt_quality(0.0, 0.0, 0.0) == 1.0  # never ends
    assert q.gpt_quality(0.0, 0.0, 1.0, cer=0.2) == pytest.approx(0.2)
    assert q.sovits_quality(0.7) == 0.7 and q.sovits_quality(0.7, spk_sim=0.9) == pytest.approx(0.8)


# -- cer: the transcript of the decoded audio against the text (#26 item 1, --asr) ---------------
@pytest.mark.parametrize(
    "hyp, ref, expected",
    [
        ("abcd", "abcd", 0.0),  # exact
        ("abxd", "abcd", 1 / 4),  # one substitution
        ("abcde", "abcd", 1 / 4),  # one insertion
        ("abd", "abcd", 1 / 4),  # one deletion
        ("", "abcd", 1.0),  # nothing heard: every character deleted
        ("kitten", "sitting", 3 / 7),  # the textbook Levenshtein pair: 2 substitutions + 1 insertion
        ("abcdabcd", "abcd", 1.0),  # a transcript twice as long: may reach (or pass) 1
        ("Hello, World!", "hello world", 0.0),  # case, punctuation and spaces do not count
        ("你好，世界。", "你好世界", 0.0),  # full-width punctuation too (NFKC, Unicode categories)
        ("你好时节", "你好世界", 2 / 4),
        ("", "", 0.0),  # an empty text: 0 for silence, 1 for anything said
        ("a", "...", 1.0),
    ],
)
def test_cer_known_answers(hyp, ref, expected):
    from gsv_ray.train.quality import cer

    assert cer(hyp, ref) == pytest.approx(expected)


def test_cer_text_normalisation():
    from gsv_ray.train.quality import cer_text

    assert cer_text("  Ｈｅｌｌｏ,\tWORLD — it's 3 o'clock!  ") == "helloworldits3oclock"
