"""``gsv-ray prepare`` on Mandarin lines: the zh golden sentences (``text/inputs/zh.list``, goldens in
``text/text_frontend.json``) with a small real clip each, the real zh front-end, and a small random BERT in
the user's ``chinese-roberta-wwm-ext-large`` layout (``tests/support/small_bert.py``).

What differs from the goldens' ``name2text_file``: the goldens were made with the BERT step stubbed
(``TEXT_FRONTEND.md``), so they keep zh_021 (an empty text); upstream's BERT step fails on it and drops the
line, and so does prepare (``text_rejected``). zh_019/zh_020 are dropped by the front-end, as in the goldens.
zh v2 goldens are upstream's reading with g2pW switched off: prepare gives them with ``--zh-without-g2pw``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gsv_ray.errors import ConfigError
from gsv_ray.preparation import EmptyExperiment, prepare_experiment
from gsv_ray.prepare.bert import bert_features, load_bert
from gsv_ray.prepare.pipeline import StageConfig
from gsv_ray.prepare.text._zh_g2pw import G2pwFolderError
from tests.conftest import run_cli
from tests.support.goldens import manifest_state_dict
from tests.support.small_bert import build_small_bert
from tests.support.small_g2pw import build_g2pw_folder, expected_label, pinyin_of, vocab_ids
from tests.support.text_replay import load_golden
from tests.support.threads import torch_threads

CLIP = "short_0p3s_48k.wav"
BERT_DROPPED = "zh_021.wav"  # empty text: upstream's BERT step fails, the line is dropped
FRONT_END_DROPPED = ("zh_019.wav", "zh_020.wav")
ENV = {"RAY_AUTH_MODE": "disabled"}


@pytest.fixture(scope="module")
def golden_zh() -> dict:
    return load_golden()["languages"]["zh"]


@pytest.fixture(scope="module")
def pretrained(goldens_dir, fixtures_dir, reference_dir, tmp_path_factory) -> Path:
    """A ``pretrained_models`` folder: the golden 2-layer HuBERT, the v1 and v2 SoVITS bases (real exports
    of the fixtures), the small BERT as ``chinese-roberta-wwm-ext-large``."""
    root = tmp_path_factory.mktemp("pretrained_models")
    hub = root / "chinese-hubert-base"
    hub.mkdir()
    shutil.copy(goldens_dir / "hubert_small.config.json", hub / "config.json")
    save_file(manifest_state_dict(goldens_dir / "hubert_small.weights.json"), str(hub / "model.safetensors"))
    shutil.copy(fixtures_dir / "SoVITS_weights" / "gsvfix_e1_s2.pth", root / "s2G488k.pth")
    (root / "gsv-v2final-pretrained").mkdir()
    shutil.copy(fixtures_dir / "SoVITS_weights_v2" / "gsvfix_e1_s2.pth", root / "gsv-v2final-pretrained/s2G2333k.pth")
    build_small_bert(root / "chinese-roberta-wwm-ext-large", reference_dir)
    return root


@pytest.fixture(scope="module")
def zh_list(reference_dir, goldens_dir, tmp_path_factory) -> tuple[Path, Path]:
    """The zh goldens' .list and a wav folder with the same 0.3 s clip under each of its names."""
    d = tmp_path_factory.mktemp("zh")
    wavs = d / "wavs"
    wavs.mkdir()
    for i in range(1, 23):
        shutil.copy(goldens_dir / "prepare_inputs" / CLIP, wavs / f"zh_{i:03d}.wav")
    lst = d / "zh.list"
    shutil.copy(reference_dir / "text" / "inputs" / "zh.list", lst)
    return lst, wavs


def _want_name2text(golden_zh: dict, version: str) -> str:
    lines = golden_zh[version]["name2text_file"].splitlines()
    return "".join(x + "\n" for x in lines if not x.startswith(BERT_DROPPED + "\t"))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def prepared_v1(zh_list, pretrained, tmp_path_factory, gsv_cache):
    os.environ.setdefault("GSV_RAY_CACHE", str(gsv_cache))
    out = tmp_path_factory.mktemp("prep") / "exp"
    lst, wavs = zh_list
    return out, prepare_experiment(lst, out, version="v1", pretrained=pretrained, wav_dir=wavs)


def test_v1_lines_and_bert_features_equal_upstreams(prepared_v1, golden_zh, pretrained):
    out, result = prepared_v1
    assert (out / "2-name2text.txt").read_text(encoding="utf-8") == _want_name2text(golden_zh, "v1")
    got = [(p["name"], p["reason"]) for p in result.problems]
    assert got == [(n, "text_rejected") for n in (*FRONT_END_DROPPED, BERT_DROPPED)]
    assert "BERT step" in result.problems[-1]["message"] and "no characters" in result.problems[-1]["message"]
    kept = [s for s in golden_zh["v1"]["sentences"] if s["status"] == "ok" and s["name"] != BERT_DROPPED]
    assert result.kept == len(kept) == 19
    device = "cuda" if torch.cuda.is_available() else "cpu"  # as prepare's BERT stage: float16 on CUDA (is_half)
    model, tok = load_bert(pretrained / "chinese-roberta-wwm-ext-large", device=device, half=device == "cuda")
    with torch_threads(StageConfig.threads):  # prepare's default, as the stage computed them
        want = {s["name"]: bert_features(s["norm_text"], s["word2ph"], model, tok) for s in kept}
    for s in kept:
        feats = torch.load(out / "3-bert" / f"{s['name']}.pt", weights_only=True)
        assert torch.equal(feats, want[s["name"]]), s["name"]
        assert feats.shape == (64, len(s["phones"])) and feats.dtype == next(model.parameters()).dtype
    names = sorted(s["name"] for s in kept)
    for sub in ("3-bert", "4-cnhubert"):  # a dropped line has no files, as upstream's 2-name2text has no line
        assert sorted(p.name for p in (out / sub).iterdir()) == [f"{n}.pt" for n in names], sub
    assert sorted(p.name for p in (out / "5-wav32k").iterdir()) == names


def test_a_finished_bert_file_is_not_redone(prepared_v1, zh_list, pretrained, tmp_path):
    out, _ = prepared_v1
    copy = tmp_path / "exp"
    shutil.copytree(out, copy)
    before = {p.name: p.stat().st_mtime_ns for p in (copy / "3-bert").iterdir()}
    (copy / "3-bert" / "zh_001.wav.pt").unlink()
    lst, wavs = zh_list
    result = prepare_experiment(lst, copy, version="v1", pretrained=pretrained, wav_dir=wavs)
    assert result.resumed == 18 and result.kept == 19
    after = {p.name: p.stat().st_mtime_ns for p in (copy / "3-bert").iterdir()}
    assert {k for k in before if before[k] != after[k]} == {"zh_001.wav.pt"}
    assert _files(copy) == _files(out)


def test_v2_without_the_option_is_needs_g2pw(zh_list, pretrained, tmp_path):
    lst, wavs = zh_list
    with pytest.raises(EmptyExperiment) as e:
        prepare_experiment(lst, tmp_path / "exp", version="v2", pretrained=pretrained, wav_dir=wavs)
    problems = e.value.result.problems
    assert [p["reason"] for p in problems] == ["needs_g2pw"] * 22
    message = problems[0]["message"]
    assert "--g2pw DIR" in message and "--zh-without-g2pw" in message and "\n" not in message


def _g2pw_list(tmp_path: Path) -> Path:
    lst = tmp_path / "g2pw.list"
    lines = [
        "zh_001.wav|spk|zh|她好长。",
        "zh_002.wav|spk|zh|银行说话了。",
        "zh_003.wav|spk|en|Hello world.",
        "zh_004.wav|spk|zh|你好。",
    ]
    lst.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lst


def test_v2_with_the_g2pw_folder_reads_with_the_model(zh_list, pretrained, tmp_path):
    """``--g2pw DIR`` (the library call): zh lines of v2 read by the (small stand-in) g2pW model; its answer
    computed here from the tokenizer's vocabulary (the BERT folder's, as upstream's model_source)."""
    _, wavs = zh_list
    g2pw = build_g2pw_folder(tmp_path / "G2PWModel")
    out = tmp_path / "exp"
    result = prepare_experiment(_g2pw_list(tmp_path), out, version="v2", pretrained=pretrained, wav_dir=wavs, g2pw=g2pw)
    assert result.problems == [] and result.kept == 4
    lines = (out / "2-name2text.txt").read_text(encoding="utf-8").splitlines()
    vocab = vocab_ids(pretrained / "chinese-roberta-wwm-ext-large")
    hao, chang = (pinyin_of(expected_label(vocab, "她好長", q)) for q in (1, 2))
    assert (hao, chang) == ("hao4", "chang2")  # pypinyin (--zh-without-g2pw) reads hao2 zhang3 here
    assert lines[0] == "zh_001.wav\tt a1 h ao4 ch ang2 .\t[2, 2, 2, 1]\t她好长."
    assert lines[1].split("\t")[1].startswith("y in2 h ang2 ")  # 银行 from the polyphonic dictionary
    assert sorted(p.name for p in (out / "3-bert").iterdir()) == ["zh_001.wav.pt", "zh_002.wav.pt", "zh_004.wav.pt"]
    with pytest.raises(ConfigError, match="exclude each other"):
        prepare_experiment(
            _g2pw_list(tmp_path), out, version="v2", pretrained=pretrained, g2pw=g2pw, zh_without_g2pw=True
        )
    (g2pw / "config.py").write_text("import os\nuse_mask = True\n", encoding="utf-8")
    with pytest.raises(G2pwFolderError, match="config.py: line 1 is not a `name = literal`"):
        prepare_experiment(_g2pw_list(tmp_path), out, version="v2", pretrained=pretrained, g2pw=g2pw)


def test_the_g2pw_folder_beside_pretrained_is_found(zh_list, pretrained, tmp_path):
    """A GPT-SoVITS checkout: ``GPT_SoVITS/text/G2PWModel`` beside ``GPT_SoVITS/pretrained_models`` is used
    without ``--g2pw``."""
    _, wavs = zh_list
    checkout = tmp_path / "GPT_SoVITS"
    (checkout / "pretrained_models").mkdir(parents=True)
    for item in pretrained.iterdir():
        (checkout / "pretrained_models" / item.name).symlink_to(item)
    build_g2pw_folder(checkout / "text" / "G2PWModel")
    out = tmp_path / "exp"
    result = prepare_experiment(
        _g2pw_list(tmp_path), out, version="v2", pretrained=checkout / "pretrained_models", wav_dir=wavs
    )
    assert result.kept == 4
    assert (out / "2-name2text.txt").read_text(encoding="utf-8").startswith("zh_001.wav\tt a1 h ao4 ch ang2 .\t")


def test_cli_v2_with_zh_without_g2pw_writes_the_v2_goldens(zh_list, pretrained, golden_zh, tmp_path, gsv_cache):
    """The real CLI in a subprocess with ``--zh-without-g2pw``: the v2 goldens' lines (their g2pW stand-in)."""
    lst, wavs = zh_list
    out = tmp_path / "exp"
    r = run_cli(
        "prepare", "--list", str(lst), "-o", str(out), "--version", "v2", "--pretrained", str(pretrained),
        "--wav-dir", str(wavs), "--zh-without-g2pw", env={**ENV, "GSV_RAY_CACHE": str(gsv_cache)},
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert (out / "2-name2text.txt").read_text(encoding="utf-8") == _want_name2text(golden_zh, "v2")
    assert len(list((out / "3-bert").iterdir())) == 19


def test_no_bert_folder_is_needs_bert_and_the_rest_prepared(zh_list, pretrained, golden_zh, tmp_path):
    no_bert = tmp_path / "pm"
    no_bert.mkdir()
    for name in ("chinese-hubert-base", "s2G488k.pth"):
        (no_bert / name).symlink_to(pretrained / name)
    lst, wavs = zh_list
    mixed = tmp_path / "mixed.list"
    mixed.write_text("zh_001.wav|spk|zh|你好。\nzh_002.wav|spk|en|Hello world.\nzh_003.wav|spk|zh|再见。\n", "utf-8")
    result = prepare_experiment(mixed, tmp_path / "exp", version="v1", pretrained=no_bert, wav_dir=wavs)
    assert [(p["lineno"], p["reason"]) for p in result.problems] == [(1, "needs_bert"), (3, "needs_bert")]
    assert "chinese-roberta-wwm-ext-large" in result.problems[0]["message"]
    assert result.kept == 1 and not (tmp_path / "exp" / "3-bert").exists()


@pytest.mark.slow
def test_ray_two_workers_byte_identical_to_in_process(prepared_v1, zh_list, pretrained, tmp_path):
    out, in_process = prepared_v1
    lst, wavs = zh_list
    result = prepare_experiment(lst, tmp_path / "exp", version="v1", pretrained=pretrained, wav_dir=wavs, workers=2)
    assert result.mode.startswith("Ray Data, 2 workers")
    assert _files(tmp_path / "exp") == _files(out)
    assert result.problems == in_process.problems


@pytest.mark.slow
def test_g2pw_on_ray_two_workers_equals_in_process(zh_list, pretrained, tmp_path):
    """The text tasks on Ray Data build the g2pW session in their worker processes: the same folder."""
    _, wavs = zh_list
    g2pw = build_g2pw_folder(tmp_path / "G2PWModel")
    lst = _g2pw_list(tmp_path)
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"exp{workers}"
        runs[workers] = prepare_experiment(
            lst, out, version="v2", pretrained=pretrained, wav_dir=wavs, g2pw=g2pw, workers=workers
        )
    assert runs[2].mode.startswith("Ray Data, 2 workers") and runs[2].kept == 4
    assert _files(tmp_path / "exp2") == _files(tmp_path / "exp1")
