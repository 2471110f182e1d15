"""The synthetic experiment folder has GPT-SoVITS's exact layout and file formats."""

from __future__ import annotations

import ast
import wave
from pathlib import Path

import pytest
import torch

from gsv_ray.data.experiment import SEMANTIC_HEADER
from gsv_ray.data.synthetic import hubert_frames, make_synthetic_experiment, synthesize_utterances
from gsv_ray.resources import symbols
from tests.data.conftest import N_UTTS

VERSIONS = ["v1", "v2", "v2Pro"]


def _load(path: Path) -> torch.Tensor:
    t = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(t, torch.Tensor)
    return t


@pytest.mark.parametrize("version", VERSIONS)
def test_layout(version: str, synth_root) -> None:
    root = synth_root(version)
    expected = {"2-name2text.txt", "3-bert", "4-cnhubert", "5-wav32k", "6-name2semantic.tsv"}
    if version == "v2Pro":
        expected.add("7-sv_cn")
    assert {p.name for p in root.iterdir()} == expected
    names = sorted(p.name for p in (root / "5-wav32k").iterdir())
    assert len(names) == N_UTTS and all(n.endswith(".wav") for n in names)
    # feature files are "<name including .wav>.pt"
    for sub in ["3-bert", "4-cnhubert"] + (["7-sv_cn"] if version == "v2Pro" else []):
        assert sorted(p.name for p in (root / sub).iterdir()) == [f"{n}.pt" for n in names]


@pytest.mark.parametrize("version", VERSIONS)
def test_name2text_format(version: str, synth_root) -> None:
    raw = (synth_root(version) / "2-name2text.txt").read_bytes().decode("utf-8")
    assert raw.endswith("\n") and not raw.endswith("\n\n")
    table = set(symbols("v1" if version == "v1" else "v2"))
    lines = raw[:-1].split("\n")
    assert len(lines) == N_UTTS
    for line in lines:
        name, phones, word2ph, norm_text = line.split("\t")  # exactly 4 fields
        ph = phones.split(" ")
        assert set(ph) <= table
        w2p = ast.literal_eval(word2ph)
        assert isinstance(w2p, list) and word2ph == str(w2p)  # Python list repr, e.g. "[2, 2, 1]"
        assert sum(w2p) == len(ph) and len(w2p) == len(norm_text)
        assert name.endswith(".wav")


@pytest.mark.parametrize("version", VERSIONS)
def test_semantic_tsv_format(version: str, synth_root) -> None:
    root = synth_root(version)
    raw = (root / "6-name2semantic.tsv").read_text(encoding="utf-8")
    assert raw.endswith("\n") and not raw.endswith("\n\n")
    lines = raw[:-1].split("\n")
    assert lines[0] == SEMANTIC_HEADER == "item_name\tsemantic_audio"
    names = [ln.split("\t")[0] for ln in (root / "2-name2text.txt").read_text().splitlines()]
    assert [ln.split("\t")[0] for ln in lines[1:]] == names
    for line in lines[1:]:
        name, tokens = line.split("\t")
        ids = [int(t) for t in tokens.split(" ")]
        assert all(0 <= i < 1024 for i in ids)
        hub = _load(root / "4-cnhubert" / f"{name}.pt")
        assert len(ids) == hub.shape[-1] // 2  # stride-2 projection of the 50 Hz features


@pytest.mark.parametrize("version", VERSIONS)
def test_wavs_and_tensors(version: str, synth_root) -> None:
    root = synth_root(version)
    for line in (root / "2-name2text.txt").read_text(encoding="utf-8").splitlines():
        name, phones, _, _ = line.split("\t")
        wav_path = root / "5-wav32k" / name
        with wave.open(str(wav_path), "rb") as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getcomptype()) == (1, 2, 32000, "NONE")
            n = w.getnframes()
        duration = wav_path.stat().st_size / 32000 / 2  # upstream's rule, header included
        assert 0.6 < duration < 54 and 1.0 < n / 32000 < 2.2
        hub = _load(root / "4-cnhubert" / f"{name}.pt")
        assert hub.dtype == torch.float32 and hub.dim() == 3 and tuple(hub.shape[:2]) == (1, 768)
        assert hub.shape[-1] == hubert_frames(n) and hub.shape[-1] in (n // 640 - 1, n // 640)
        assert torch.isfinite(hub).all() and hub.std() > 0.05
        bert = _load(root / "3-bert" / f"{name}.pt")
        assert bert.dtype == torch.float32 and tuple(bert.shape) == (1024, len(phones.split(" ")))
        sv_path = root / "7-sv_cn" / f"{name}.pt"
        if version == "v2Pro":
            sv = _load(sv_path)
            assert sv.dtype == torch.float32 and tuple(sv.shape) == (1, 20480)
        else:
            assert not sv_path.exists()


def test_both_hubert_length_cases_occur(synth_root) -> None:
    """Real HuBERT features are one frame short of the spectrogram for most lengths; both cases
    (short by one / equal) appear so the loader's fix-up is exercised."""
    root = synth_root("v2")
    diffs = set()
    for wav_path in (root / "5-wav32k").iterdir():
        with wave.open(str(wav_path), "rb") as w:
            n = w.getnframes()
        diffs.add(n // 640 - _load(root / "4-cnhubert" / f"{wav_path.name}.pt").shape[-1])
    assert diffs == {0, 1}


def test_half_and_no_semantic_and_pro_plus(tmp_path: Path) -> None:
    root = make_synthetic_experiment(
        tmp_path / "e", version="v2ProPlus", num_utterances=3, half=True, with_semantic=False
    )
    assert not (root / "6-name2semantic.tsv").exists()
    for sub in ("3-bert", "4-cnhubert", "7-sv_cn"):
        for f in (root / sub).iterdir():
            assert _load(f).dtype == torch.float16


def test_deterministic_and_seeded(tmp_path: Path) -> None:
    a = make_synthetic_experiment(tmp_path / "a", num_utterances=3, seed=5)
    b = make_synthetic_experiment(tmp_path / "b", num_utterances=3, seed=5)
    c = make_synthetic_experiment(tmp_path / "c", num_utterances=3, seed=6)
    for rel in ("2-name2text.txt", "6-name2semantic.tsv", "5-wav32k/synth_000.wav"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert (a / "6-name2semantic.tsv").read_bytes() != (c / "6-name2semantic.tsv").read_bytes()
    with pytest.raises(FileExistsError):
        make_synthetic_experiment(a, num_utterances=1)


def test_tokens_follow_phones() -> None:
    """The same phone sound gives the same token in the middle of the phone, so the text predicts
    the tokens (what makes the GPT learnable); silences map to one token."""
    from gsv_ray.data.synthetic import hubert_features, semantic_tokens

    seen: dict[str, set[int]] = {}
    for u in synthesize_utterances(8, seed=3):
        tokens = semantic_tokens(hubert_features(u.audio / 32768.0))
        start = u.lead_frames
        for ph, nf in zip(u.phones, u.phone_frames):
            mid = (start + nf // 2) // 2  # 50 Hz frame -> 25 Hz token
            if nf >= 5 and mid < len(tokens):
                seen.setdefault("<sil>" if ph in ",." else ph, set()).add(int(tokens[mid]))
            start += nf
    consistent = [ph for ph, toks in seen.items() if len(toks) == 1]
    assert len(consistent) >= 0.8 * len(seen), seen
    firsts = {ph: next(iter(t)) for ph, t in seen.items() if len(t) == 1}
    assert len(set(firsts.values())) >= 0.8 * len(firsts)  # different phones -> mostly different tokens
