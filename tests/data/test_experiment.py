"""Opening experiment folders: upstream's selection, and every problem reported or raised."""

from __future__ import annotations

import shutil
import wave
from pathlib import Path

import pytest
import torch

from gsv_ray.data.experiment import (
    ExperimentOptions,
    SplitOptions,
    open_experiment,
    split_names,
)
from gsv_ray.errors import GsvError
from gsv_ray.resources import symbols
from tests.data.conftest import N_UTTS


def _names(root: Path) -> list[str]:
    return [ln.split("\t")[0] for ln in (root / "2-name2text.txt").read_text(encoding="utf-8").splitlines()]


def _edit_line(root: Path, index: int, field: int, value: str) -> str:
    path = root / "2-name2text.txt"
    lines = path.read_text(encoding="utf-8").split("\n")
    fields = lines[index].split("\t")
    fields[field] = value
    lines[index] = "\t".join(fields)
    path.write_text("\n".join(lines), encoding="utf-8")
    return fields[0]


@pytest.mark.parametrize("version", ["v1", "v2", "v2Pro"])
@pytest.mark.parametrize("stage", ["sovits", "gpt"])
def test_clean_folder_has_no_problems(stage: str, version: str, synth_root) -> None:
    exp = open_experiment(synth_root(version), stage, version)
    assert exp.report.problems == [], str(exp.report)
    assert exp.report.usable == exp.report.listed == N_UTTS == len(exp.utterances)
    if stage == "sovits":
        assert exp.names == sorted(exp.names)  # reproducible order (upstream's is set order)
        assert all(
            u.hubert_path and u.wav_path and (u.sv_path is not None) == (version == "v2Pro") for u in exp.utterances
        )
    else:
        assert exp.names == _names(synth_root(version))  # TSV row order
        assert all(u.bert_path is not None and u.semantic_ids for u in exp.utterances)


def test_v1_is_a_prefix_of_v2() -> None:
    """Why no phone is "v1-only": v2's table starts with v1's, ids unchanged (so a v1-preprocessed
    folder is read correctly by v2 models; only v2-only phones with a v1 model are a mismatch)."""
    v1, v2 = symbols("v1"), symbols("v2")
    assert v2[: len(v1)] == v1 and len(v2) > len(v1)


def test_missing_hubert_is_reported(mutable_exp) -> None:
    root = mutable_exp("v2")
    victim = _names(root)[3]
    (root / "4-cnhubert" / f"{victim}.pt").unlink()
    exp = open_experiment(root, "sovits", "v2")
    p = exp.report.get("missing_hubert")
    assert p is not None and p.count == 1 and p.names == [victim] and p.excluded
    assert victim not in exp.names and exp.report.usable == N_UTTS - 1
    text = str(exp.report)
    assert f"{N_UTTS - 1} of {N_UTTS} utterances usable" in text
    assert "missing_hubert: 1 x" in text and victim in text
    # the GPT stage does not need HuBERT
    assert open_experiment(root, "gpt", "v2").report.usable == N_UTTS


def test_nan_features_are_reported(mutable_exp) -> None:
    root = mutable_exp("v2Pro")
    names = _names(root)
    for sub, name in (("4-cnhubert", names[0]), ("3-bert", names[1]), ("7-sv_cn", names[2])):
        path = root / sub / f"{name}.pt"
        t = torch.load(path, weights_only=True)
        t.view(-1)[5] = float("nan")
        torch.save(t, path)
    sov = open_experiment(root, "sovits", "v2Pro")
    assert sov.report.get("nan_hubert").names == [names[0]]
    assert sov.report.get("nan_sv").names == [names[2]]
    assert sov.report.has_errors and sov.report.usable == N_UTTS - 2
    gpt = open_experiment(root, "gpt", "v2Pro")
    assert gpt.report.get("nan_bert").names == [names[1]] and gpt.report.usable == N_UTTS - 1
    # a quick scan does not load tensors
    quick = open_experiment(root, "sovits", "v2Pro", ExperimentOptions(scan_tensors=False))
    assert quick.report.usable == N_UTTS


def test_unknown_phone_is_reported(mutable_exp) -> None:
    root = mutable_exp("v2")
    name = _edit_line(root, 2, 1, "n i3 XYZ ao3")
    for stage in ("sovits", "gpt"):
        exp = open_experiment(root, stage, "v2")
        p = exp.report.get("unknown_phone")
        assert p is not None and p.names == [name] and p.severity == "error" and "'XYZ'" in p.message
        assert name not in exp.names


def test_v2_only_phone_with_v1_model_raises(mutable_exp) -> None:
    root = mutable_exp("v2")
    name = _edit_line(root, 1, 1, "ㄱ ㅏ .")  # Korean phones exist only in the v2 table
    for stage in ("sovits", "gpt"):
        with pytest.raises(GsvError) as err:
            open_experiment(root, stage, "v1")
        msg = str(err.value)
        assert "symbol set mismatch" in msg and name in msg and "2-name2text.txt" in msg and "Fix:" in msg
        assert "\n" not in msg
    # the same folder is fine for a v2 model
    assert open_experiment(root, "sovits", "v2").report.usable == N_UTTS


def test_unk_phone_is_a_warning(mutable_exp) -> None:
    root = mutable_exp("v2")
    name = _edit_line(root, 0, 1, "UNK")
    exp = open_experiment(root, "sovits", "v2")
    assert exp.report.get("unk_phone").names == [name] and name in exp.names


@pytest.mark.parametrize("stage", ["sovits", "gpt"])
def test_missing_name2text_raises(stage: str, mutable_exp) -> None:
    root = mutable_exp("v2")
    (root / "2-name2text.txt").unlink()
    with pytest.raises(GsvError) as err:
        open_experiment(root, stage, "v2")
    msg = str(err.value)
    assert str(root / "2-name2text.txt") in msg and "not found" in msg and "Fix:" in msg and "1-get-text" in msg


def test_missing_folder_parts_raise(mutable_exp, tmp_path: Path) -> None:
    root = mutable_exp("v2Pro")
    shutil.rmtree(root / "7-sv_cn")
    with pytest.raises(GsvError, match="7-sv_cn"):
        open_experiment(root, "sovits", "v2Pro")
    assert open_experiment(root, "sovits", "v2").report.usable == N_UTTS  # v2 does not need it
    shutil.rmtree(root / "4-cnhubert")
    with pytest.raises(GsvError, match="4-cnhubert"):
        open_experiment(root, "sovits", "v2")
    (root / "6-name2semantic.tsv").unlink()
    with pytest.raises(GsvError, match="6-name2semantic.tsv.*Fix: run GPT-SoVITS preprocessing step 1Ac"):
        open_experiment(root, "gpt", "v2")
    with pytest.raises(GsvError, match="experiment folder not found"):
        open_experiment(tmp_path / "nope", "gpt", "v2")
    with pytest.raises(GsvError, match="unknown training stage"):
        open_experiment(root, "s3", "v2")


def test_missing_sv_file_and_orphans(mutable_exp) -> None:
    root = mutable_exp("v2Pro")
    names = _names(root)
    (root / "7-sv_cn" / f"{names[4]}.pt").unlink()
    (root / "5-wav32k" / names[5]).unlink()
    shutil.copy(root / "4-cnhubert" / f"{names[6]}.pt", root / "4-cnhubert" / "stray.wav.pt")
    exp = open_experiment(root, "sovits", "v2Pro")
    assert exp.report.get("missing_sv").names == [names[4]]
    assert exp.report.get("missing_wav").names == [names[5]]
    assert exp.report.get("no_text").names == ["stray.wav"]  # features without a text line: unused
    assert exp.report.usable == N_UTTS - 2


def test_lengths_out_of_range(mutable_exp) -> None:
    root = mutable_exp("v2")
    names = _names(root)
    with wave.open(str(root / "5-wav32k" / names[0]), "wb") as w:  # 0.3 s: below upstream's 0.6 s
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(32000)
        w.writeframes(b"\0\0" * 9600)
    lines = (root / "6-name2semantic.tsv").read_text().split("\n")
    lines[2] = f"{names[1]}\t" + " ".join(["5"] * 1400)  # > 54 s * 25 tokens
    lines[3] = f"{names[2]}\t" + " ".join(["5"] * 200)  # ~12 phones in 8 s: < 3 phones/s
    (root / "6-name2semantic.tsv").write_text("\n".join(lines))
    sov = open_experiment(root, "sovits", "v2")
    assert sov.report.get("duration").names == [names[0]] and names[0] not in sov.names
    gpt = open_experiment(root, "gpt", "v2")
    assert gpt.report.get("too_long").names == [names[1]]
    assert gpt.report.get("phones_per_second").names == [names[2]]
    assert gpt.report.usable == N_UTTS - 2


def test_bert_width_mismatch_and_missing_bert(mutable_exp) -> None:
    root = mutable_exp("v2")
    names = _names(root)
    torch.save(torch.zeros(1024, 3), root / "3-bert" / f"{names[0]}.pt")
    (root / "3-bert" / f"{names[1]}.pt").unlink()
    exp = open_experiment(root, "gpt", "v2")
    p = exp.report.get("bert_shape")
    assert p.names == [names[0]] and p.severity == "error" and names[0] not in exp.names
    q = exp.report.get("no_bert")
    assert q.names == [names[1]] and q.severity == "info" and names[1] in exp.names
    assert next(u for u in exp.utterances if u.name == names[1]).bert_path is None


def test_tsv_and_text_quirks(mutable_exp) -> None:
    root = mutable_exp("v2")
    names = _names(root)
    tsv = root / "6-name2semantic.tsv"
    lines = tsv.read_text().split("\n")
    tsv.write_text("\n".join(lines[1:]))  # header dropped: upstream eats the first data row
    text = root / "2-name2text.txt"
    tl = text.read_text().split("\n")
    tl[5] = "\t".join(tl[5].split("\t")[:3])  # 3 fields: ignored
    tl.insert(7, "extra.wav\tbroken")  # 2 fields: ignored too
    text.write_text("\n".join(tl))
    exp = open_experiment(root, "gpt", "v2")
    assert exp.report.get("semantic_header").names == [names[0]]
    assert names[0] not in exp.names
    assert exp.report.get("bad_text_line").count == 2
    assert exp.report.get("missing_text").names == [names[5]]
    tsv.write_text(lines[0] + "\n" + f"{names[2]}\t1 2 x\n" + "\n".join(lines[1:]))
    exp = open_experiment(root, "gpt", "v2")
    assert exp.report.get("bad_semantic_row").names == [names[2]]
    assert exp.report.get("duplicate_semantic").names == [names[2]]


def test_split_is_deterministic_and_names_file(synth_root, tmp_path: Path) -> None:
    exp = open_experiment(synth_root("v2"), "gpt", "v2")
    train, val = split_names(exp.names, SplitOptions(val_fraction=0.25))
    assert len(val) == 3 and set(train) | set(val) == set(exp.names) and not set(train) & set(val)
    assert split_names(list(reversed(exp.names)), SplitOptions(val_fraction=0.25))[1] == list(reversed(val))
    assert split_names(exp.names, SplitOptions(val_fraction=0.25, seed=7))[1] != val
    assert split_names(exp.names, SplitOptions())[1] == []
    names_file = tmp_path / "val.txt"
    names_file.write_text(f"{exp.names[1]}\n\n{exp.names[4]}\n")
    assert split_names(exp.names, SplitOptions(val_names_file=names_file))[1] == [exp.names[1], exp.names[4]]
    names_file.write_text("typo.wav\n")
    with pytest.raises(GsvError, match="typo.wav"):
        split_names(exp.names, SplitOptions(val_names_file=names_file), known=exp.known_names)


@pytest.mark.slow
def test_non_utf8_lines_are_counted_and_named(mutable_exp, fixtures_dir, tmp_path) -> None:
    """GBK bytes in 2 lines of 2-name2text.txt and 1 row of 6-name2semantic.tsv (before: a
    UnicodeDecodeError traceback): the lines are named by number, the rest of the data trains."""
    from tests.conftest import run_cli

    root = mutable_exp("v2")
    names = _names(root)
    text = root / "2-name2text.txt"
    raw = text.read_bytes().split(b"\n")
    raw[3] = raw[3].replace(b"\t", "\t中文".encode("gbk"), 1)
    raw[8] = raw[8] + "好".encode("gbk")
    text.write_bytes(b"\n".join(raw))
    tsv = root / "6-name2semantic.tsv"
    rows = tsv.read_bytes().split(b"\n")
    rows[2] = rows[2] + b"\xff"
    tsv.write_bytes(b"\n".join(rows))
    exp = open_experiment(root, "gpt", "v2")
    assert [n.split(" (")[0] for n in exp.report.get("not_utf8_text").names] == ["line 4", "line 9"]
    assert [n.split(" (")[0] for n in exp.report.get("not_utf8_semantic").names] == ["line 3"]
    assert names[3] not in exp.names and names[8] not in exp.names and len(exp.names) >= N_UTTS - 4
    # as a user meets it: train names the lines and trains on the rest
    r = run_cli(
        "train",
        "--init",
        str(fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt"),
        "--data",
        str(root),
        "-o",
        str(tmp_path / "run"),
        "--max-steps",
        "1",
        "--wandb-mode",
        "disabled",
        env={"GSV_RAY_CACHE": str(tmp_path / "cache")},
        in_process=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "not UTF-8" in r.stdout and "line 4" in r.stdout and "line 9" in r.stdout and "line 3" in r.stdout
    names_file = tmp_path / "val.txt"
    names_file.write_bytes(names[0].encode() + b"\n\xff\xfe\n")
    r = run_cli(
        "train",
        "--init",
        str(fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt"),
        "--data",
        str(root),
        "-o",
        str(tmp_path / "run2"),
        "--max-steps",
        "1",
        "--val-names",
        str(names_file),
        "--wandb-mode",
        "disabled",
        env={"GSV_RAY_CACHE": str(tmp_path / "cache")},
        in_process=True,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not UTF-8" in r.stderr and str(names_file) in r.stderr


# ----------------------------------------------------------------------------- issue #24 item 10 (d), (h)
@pytest.mark.slow
def test_empty_and_truncated_wavs_are_named_with_their_reason(mutable_exp, fixtures_dir, tmp_path) -> None:
    """Before: "unreadable WAV files ()" (EOFError says nothing). Real CLI: verify --json carries the report."""
    import json

    from tests.conftest import run_cli

    root = mutable_exp("v2")
    empty, cut = _names(root)[1], _names(root)[4]
    (root / "5-wav32k" / empty).write_bytes(b"")
    wav = root / "5-wav32k" / cut
    wav.write_bytes(wav.read_bytes()[:30])  # inside the RIFF header
    report = open_experiment(root, "sovits", "v2").report
    assert report.get("empty_wav").names == [empty] and "0 bytes" in report.get("empty_wav").message
    assert report.get("bad_wav").names == [cut] and "truncated" in report.get("bad_wav").message
    assert "()" not in str(report)
    r = run_cli(
        "verify",
        str(fixtures_dir / "SoVITS_weights_v2/gsvfix_e1_s2.pth"),
        "--data",
        str(root),
        "--json",
        "--batches",  # the data report is of the whole folder, whatever the batches evaluated
        "1",
        "--batch-size",
        "1",
        env={"GSV_RAY_CACHE": str(tmp_path / "cache")},
        in_process=True,
    )
    lines = json.loads(r.stdout)["data_report"]
    assert any("empty WAV files (0 bytes)" in ln and empty in ln for ln in lines), lines
    assert any("truncated" in ln and cut in ln for ln in lines), lines


def test_utf8_bom_is_not_part_of_the_first_name(mutable_exp, tmp_path) -> None:
    """Windows editors save a BOM: before, the first utterance was "missing" as '\\ufeffname'."""
    root = mutable_exp("v2")
    first = _names(root)[0]
    text = root / "2-name2text.txt"
    text.write_bytes(b"\xef\xbb\xbf" + text.read_bytes())
    exp = open_experiment(root, "sovits", "v2")
    assert exp.report.usable == N_UTTS and not exp.report.problems, str(exp.report)
    assert all("\ufeff" not in n for n in exp.names)
    names = tmp_path / "val.txt"
    names.write_bytes(b"\xef\xbb\xbf" + first.encode() + b"\n")
    _, val = split_names(exp.names, SplitOptions(val_names_file=names))
    assert val == [first]
