"""``gsv-ray prepare`` end to end on real files: the goldens' eight clips (PREPARE.md) listed with the
text goldens' English sentences, a user's ``pretrained_models`` folder holding the goldens' rule
weights in the users' formats (HuBERT as a Hugging Face folder, ERes2NetV2 as a ``torch.save``d
``.ckpt``, SoVITS as a real export).

The text is cleaned by a stand-in built from the text goldens (``tests/support/text_replay.py``:
upstream's language modules' own outputs, replayed), so these tests hold whichever language modules
exist; ``test_text_frontend.py`` and the language modules' tests check the text itself.

Tolerances are the audio tests' (``test_audio.py``): ``5-wav32k`` exact; ``4-cnhubert`` within
1e-5 of the largest golden value; ``7-sv_cn`` within the goldens' 1e-4 * max(1, max |golden|).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from gsv_ray.errors import GsvError
from gsv_ray.preparation import EmptyExperiment, prepare_experiment
from tests.conftest import REPO_ROOT, run_cli
from tests.support.goldens import (
    PREPARE_CLIPS,
    SV_CLIPS,
    assert_close_golden,
    eres2netv2_state_dict,
    load_io,
    manifest_state_dict,
)
from tests.support.text_replay import ReplayLoader, load_golden

CLIPS = PREPARE_CLIPS
KEPT = SV_CLIPS
HUBERT_REL_TOL = 1e-5
ENV = {"RAY_AUTH_MODE": "disabled"}

#: the planted problems after the eight clips: (list line, reason)
PLANTED = (
    ("wavs/notaudio.wav|spk|en|Hello world.", "unreadable"),
    ("wavs/missing.wav|spk|en|Hello world.", "unreadable"),
    ("wavs/x.wav|spk|fr|Bonjour.", "unknown_language"),
    ("wavs/bad_001.wav|spk|en", "bad_fields"),
    ("wavs/arctic_a0007.wav|spk|en|Hello again.", "duplicate_name"),
    ("wavs/z.wav|spk|zh|你好。", "needs_bert"),
    ("wavs/yue_020.wav|spk|yue|呢个字係讠。", "text_rejected"),  # upstream: TypeError, line dropped
    ("wavs/ctl\x01.wav|spk|en|Hello world.", "bad_name"),
    ("wavs/tiny.wav|spk|en|Hello world.", "too_short"),
)


@pytest.fixture(scope="module")
def golden_text() -> dict:
    return load_golden()


@pytest.fixture(scope="module")
def audio_io(goldens_dir):
    return load_io(goldens_dir / "prepare_audio.io.safetensors")


@pytest.fixture(scope="module")
def pretrained(goldens_dir, fixtures_dir, tmp_path_factory) -> Path:
    """A GPT-SoVITS ``pretrained_models`` folder: the golden 2-layer HuBERT, the v2 and v2Pro SoVITS
    bases (real exports of the fixtures)."""
    root = tmp_path_factory.mktemp("pretrained_models")
    hub = root / "chinese-hubert-base"
    hub.mkdir()
    shutil.copy(goldens_dir / "hubert_small.config.json", hub / "config.json")
    save_file(manifest_state_dict(goldens_dir / "hubert_small.weights.json"), str(hub / "model.safetensors"))
    for folder, name, fixture in (
        ("gsv-v2final-pretrained", "s2G2333k.pth", "SoVITS_weights_v2"),
        ("v2Pro", "s2Gv2Pro.pth", "SoVITS_weights_v2Pro"),
    ):
        (root / folder).mkdir()
        shutil.copy(fixtures_dir / fixture / "gsvfix_e1_s2.pth", root / folder / name)
    return root


@pytest.fixture(scope="module")
def wav_dir(goldens_dir, tmp_path_factory) -> Path:
    """The eight golden clips, a file that is not audio, a 10 ms clip and the yue line's clip."""
    d = tmp_path_factory.mktemp("wavs")
    for c in CLIPS:
        shutil.copy(goldens_dir / "prepare_inputs" / c, d / c)
    (d / "notaudio.wav").write_bytes(b"this is not a recording")
    shutil.copy(d / "short_0p3s_48k.wav", d / "yue_020.wav")
    from gsv_ray.audio import write_wav

    write_wav(d / "tiny.wav", np.full(320, 1000, np.int16), 32000)  # 10 ms: under one HuBERT frame
    return d


def _list(golden_text: dict, planted=PLANTED) -> str:
    en = golden_text["languages"]["en"]["v2"]["sentences"]
    lines = [f"wavs/{c}|spk|en|{en[i]['text']}" for i, c in enumerate(CLIPS)]
    return "\n".join(lines + [p[0] for p in planted]) + "\n"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def prepared(golden_text, pretrained, wav_dir, tmp_path_factory, gsv_cache):
    """The v2 folder made in-process, and its result."""
    os.environ.setdefault("GSV_RAY_CACHE", str(gsv_cache))
    root = tmp_path_factory.mktemp("prep")
    (root / "data.list").write_text(_list(golden_text), encoding="utf-8")
    result = prepare_experiment(
        root / "data.list", root / "exp", version="v2", pretrained=pretrained, wav_dir=wav_dir, load=ReplayLoader("v2")
    )
    return root, result


def test_outputs_equal_the_goldens(prepared, golden_text, audio_io):
    root, result = prepared
    exp = root / "exp"
    en = golden_text["languages"]["en"]["v2"]["sentences"]
    want_lines = [en[i]["name2text_line"].replace(en[i]["name"], c, 1) for i, c in enumerate(KEPT)]
    assert (exp / "2-name2text.txt").read_text(encoding="utf-8") == "\n".join(want_lines) + "\n"
    for c in KEPT:
        data = (exp / "5-wav32k" / c).read_bytes()
        np.testing.assert_array_equal(np.frombuffer(data[44:], "<i2"), audio_io[f"out.{c}.wav32k"].reshape(-1).numpy())
        got = torch.load(exp / "4-cnhubert" / f"{c}.pt", weights_only=True)
        want = audio_io[f"out.{c}.cnhubert"]
        assert got.shape == want.shape and got.dtype == torch.float32
        assert (got - want).abs().max().item() <= HUBERT_REL_TOL * want.abs().max().item(), c
    tsv = (exp / "6-name2semantic.tsv").read_text().splitlines()
    assert tsv[0] == "item_name\tsemantic_audio" and [x.split("\t")[0] for x in tsv[1:]] == list(KEPT)
    assert sorted(p.name for p in (exp / "4-cnhubert").iterdir()) == sorted(f"{c}.pt" for c in KEPT)
    assert not (exp / "7-sv_cn").exists() and not (exp / "3-bert").exists()
    assert (result.kept, result.resumed, result.listed) == (6, 0, len(CLIPS) + len(PLANTED))


def test_report_names_each_planted_problem(prepared):
    root, result = prepared
    got = [(p["lineno"], p["reason"]) for p in result.problems]
    want = [(7, "too_loud"), (8, "silent")] + [(9 + i, reason) for i, (_, reason) in enumerate(PLANTED)]
    assert got == want
    lines = result.report_lines()
    assert len(lines) == len(want) + 2 and all("\n" not in x for x in lines)  # + the note, the summary
    for needle in ("peak3_f32.wav", "silence_0p5s.wav", "notaudio.wav", "missing.wav", "'fr'", "4", "also line 1",
                   "BERT", "yue", "control character", "tiny.wav"):  # fmt: skip
        assert any(needle in x for x in lines[:-1]), needle
    assert json.loads(json.dumps(result.to_json()))["skipped"] == len(want)
    (note,) = result.notes  # kept, as upstream, and named
    assert note["name"] == "hot1p5_f32.wav" and note["reason"] == "int16_overflow" and "44 samples" in note["message"]


@pytest.mark.slow  # the full-size ERes2NetV2 (53 M parameters) regenerated and run on CPU
def test_v2pro_speaker_vectors_equal_the_goldens(golden_text, pretrained, wav_dir, goldens_dir, tmp_path):
    sv_dir = pretrained / "sv"
    sv_dir.mkdir(exist_ok=True)
    torch.save(eres2netv2_state_dict(goldens_dir), sv_dir / "pretrained_eres2netv2w24s4ep4.ckpt")
    (tmp_path / "data.list").write_text(_list(golden_text, planted=()), encoding="utf-8")
    result = prepare_experiment(
        tmp_path / "data.list", tmp_path / "exp", version="v2Pro", pretrained=pretrained, wav_dir=wav_dir,
        load=ReplayLoader("v2Pro"),
    )  # fmt: skip
    assert result.kept == 6
    sv_io = load_io(goldens_dir / "prepare_sv.io.safetensors")
    for c in KEPT:
        got = torch.load(tmp_path / "exp" / "7-sv_cn" / f"{c}.pt", weights_only=True)
        assert got.shape == (1, 20480) and got.is_contiguous() and not got.requires_grad
        assert_close_golden(f"{c} sv", got, sv_io[f"out.{c}.sv"])


def test_semantic_tokens_are_gsv_ray_semantics(prepared, pretrained, tmp_path):
    """The semantic stage's 6-name2semantic.tsv is what ``gsv-ray semantic`` (extract_semantic) writes."""
    from gsv_ray.semantic import extract_semantic

    root, result = prepared
    sem = extract_semantic(root / "exp", pretrained / "gsv-v2final-pretrained/s2G2333k.pth", output=tmp_path / "s.tsv")
    assert (tmp_path / "s.tsv").read_bytes() == (root / "exp" / "6-name2semantic.tsv").read_bytes()
    assert sem.tokens == result.tokens > 0 and result.files["semantic"] == str(root / "exp" / "6-name2semantic.tsv")


def test_a_clip_too_short_for_one_token_is_named_and_the_rest_prepared(pretrained, wav_dir, tmp_path):
    """30 ms: one HuBERT frame, under one 25 Hz token; the semantic stage names it (it used to fail the run)."""
    from gsv_ray.audio import write_wav

    write_wav(tmp_path / "oneframe.wav", np.full(960, 1000, np.int16), 32000)
    shutil.copy(wav_dir / "tones_32k.flac", tmp_path / "tones_32k.flac")
    lst = tmp_path / "data.list"
    lst.write_text("tones_32k.flac|spk|en|Hello world.\noneframe.wav|spk|en|Hello world.\n", encoding="utf-8")
    result = prepare_experiment(
        lst, tmp_path / "exp", version="v2", pretrained=pretrained, wav_dir=tmp_path, load=ReplayLoader("v2")
    )
    assert [(p["lineno"], p["reason"]) for p in result.problems] == [(2, "too_short")]
    assert "oneframe.wav" in result.problems[0]["message"] and result.kept == 1
    tsv = (tmp_path / "exp" / "6-name2semantic.tsv").read_text().splitlines()
    assert [x.split("\t")[0] for x in tsv] == ["item_name", "tones_32k.flac"]
    assert (tmp_path / "exp" / "2-name2text.txt").read_text().startswith("tones_32k.flac\t")


@pytest.mark.slow
def test_ray_two_workers_byte_identical_to_in_process(prepared, golden_text, pretrained, wav_dir, tmp_path):
    root, _ = prepared
    result = prepare_experiment(
        root / "data.list", tmp_path / "exp", version="v2", pretrained=pretrained, wav_dir=wav_dir,
        load=ReplayLoader("v2"), workers=2,
    )  # fmt: skip
    assert result.mode.startswith("Ray Data, 2 workers")
    assert _files(tmp_path / "exp") == _files(root / "exp")
    assert result.problems == prepared[1].problems


_KILLED_RUN = """
import sys
from gsv_ray.preparation import prepare_experiment
from tests.support.text_replay import ReplayLoader
prepare_experiment(sys.argv[1], sys.argv[2], version="v2", pretrained=sys.argv[3], wav_dir=sys.argv[4],
                   load=ReplayLoader("v2"))
"""


@pytest.mark.slow
def test_killed_midway_then_rerun_gives_every_file_once_and_identical(pretrained, goldens_dir, tmp_path):
    """A real process killed by PID (SIGKILL) once a few utterances are written; the rerun resumes them
    and ends with exactly the files, and bytes, of an uninterrupted run."""
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    names = [f"a{i:02d}.flac" for i in range(12)]
    for n in names:
        shutil.copy(goldens_dir / "prepare_inputs" / "tones_32k.flac", wavs / n)
    (tmp_path / "data.list").write_text("".join(f"{n}|spk|en|Hello world.\n" for n in names), encoding="utf-8")
    args = [str(tmp_path / "data.list"), str(tmp_path / "killed"), str(pretrained), str(wavs)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, *args], cwd=REPO_ROOT, env=env)
    feats = tmp_path / "killed" / "4-cnhubert"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if feats.is_dir() and len(list(feats.glob("*.pt"))) >= 2:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it was killed"
    done_before = len(list(feats.glob("*.pt")))
    assert 2 <= done_before < len(names)
    assert not (tmp_path / "killed" / "2-name2text.txt").exists()

    rerun = prepare_experiment(*args[:2], version="v2", pretrained=pretrained, wav_dir=wavs, load=ReplayLoader("v2"))
    assert rerun.resumed == done_before and rerun.kept == len(names)
    clean = prepare_experiment(
        args[0], tmp_path / "clean", version="v2", pretrained=pretrained, wav_dir=wavs, load=ReplayLoader("v2")
    )
    assert clean.kept == len(names)
    assert _files(tmp_path / "killed") == _files(tmp_path / "clean")  # every file once, no temp left


def test_cli_with_the_english_front_end_writes_upstreams_lines(golden_text, pretrained, wav_dir, tmp_path, gsv_cache):
    """The real CLI in a subprocess with the real en front-end (gsv_ray.prepare.text.en): the kept clips'
    2-name2text.txt lines are upstream's for those sentences (text goldens: POS stand-in NN, as en's)."""
    (tmp_path / "data.list").write_text(_list(golden_text, planted=()), encoding="utf-8")
    out = tmp_path / "exp"
    r = run_cli(
        "prepare", "--list", str(tmp_path / "data.list"), "-o", str(out), "--version", "v2",
        "--pretrained", str(pretrained), "--wav-dir", str(wav_dir), env={**ENV, "GSV_RAY_CACHE": str(gsv_cache)},
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout, r.stderr)
    en = golden_text["languages"]["en"]["v2"]["sentences"]
    want = [en[i]["name2text_line"].replace(en[i]["name"], c, 1) for i, c in enumerate(KEPT)]
    assert (out / "2-name2text.txt").read_text(encoding="utf-8") == "\n".join(want) + "\n"
    assert r.stdout.strip().splitlines()[-1].startswith("prepared 6 of 8 utterances")


def test_cli_all_lines_bad_is_exit_2_with_the_report(pretrained, wav_dir, tmp_path):
    """The real CLI in a subprocess: nothing preparable -> the report on stdout, one error line, exit 2,
    no 2-name2text.txt that would break training later."""
    lst = tmp_path / "bad.list"
    lst.write_text("wavs/x.wav|spk|fr|Bonjour.\nbroken line\nwavs/z.wav|spk|zh|你好。\n", encoding="utf-8")
    out = tmp_path / "exp"
    r = run_cli(
        "prepare", "--list", str(lst), "-o", str(out), "--version", "v2", "--pretrained", str(pretrained),
        "--wav-dir", str(wav_dir), env=ENV,
    )  # fmt: skip
    assert r.returncode == 2, (r.stdout, r.stderr)
    report = r.stdout.strip().splitlines()
    assert [x.split(":")[1].strip() for x in report] == ["unknown_language", "bad_fields", "needs_bert"]
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gsv-ray: error:") and "none of the 3 lines" in err[0]
    assert not (out / "2-name2text.txt").exists()


def test_cli_json_and_missing_models_are_one_line(pretrained, wav_dir, tmp_path):
    lst = tmp_path / "bad.list"
    lst.write_text("wavs/x.wav|spk|fr|Bonjour.\n", encoding="utf-8")
    base = ["prepare", "--list", str(lst), "-o", str(tmp_path / "exp"), "--wav-dir", str(wav_dir), "--json"]
    r = run_cli(*base, "--version", "v2", "--pretrained", str(pretrained), in_process=True)
    assert r.returncode == 2 and json.loads(r.stdout)["problems"][0]["reason"] == "unknown_language"
    only_hubert = tmp_path / "pm"
    only_hubert.mkdir()
    (only_hubert / "chinese-hubert-base").symlink_to(pretrained / "chinese-hubert-base")
    r = run_cli(*base, "--version", "v2ProPlus", "--pretrained", str(only_hubert), in_process=True)
    assert r.returncode == 2 and "sv/pretrained_eres2netv2w24s4ep4.ckpt" in r.stderr and "v2ProPlus" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(GsvError, match="chinese-hubert-base"):
        prepare_experiment(lst, tmp_path / "exp", version="v2", pretrained=tmp_path, load=ReplayLoader("v2"))


def test_empty_experiment_raises_with_the_report(pretrained, wav_dir, tmp_path):
    lst = tmp_path / "silent.list"
    lst.write_text("silence_0p5s.wav|spk|en|Hello world.\n", encoding="utf-8")
    with pytest.raises(EmptyExperiment) as e:
        prepare_experiment(lst, tmp_path / "exp", version="v2", pretrained=pretrained, wav_dir=wav_dir,
                           load=ReplayLoader("v2"))  # fmt: skip
    assert [p["reason"] for p in e.value.result.problems] == ["silent"] and e.value.exit_code == 2


@pytest.mark.slow
def test_train_runs_on_the_prepared_folder(prepared, fixtures_dir, tmp_path):
    """``gsv-ray train --data`` on the prepared folder: the GPT stage (2-name2text.txt + 6-name2semantic.tsv)."""
    root, _ = prepared
    r = run_cli(
        "train", "--init", str(fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt"), "--data", str(root / "exp"),
        "-o", str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "2", in_process=True, env=ENV,
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    assert list((tmp_path / "run").rglob("*.ckpt")), r.stdout[-2000:]
