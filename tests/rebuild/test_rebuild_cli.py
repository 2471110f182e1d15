"""`gsv-ray rebuild` as a user runs it: report.json layout, outputs, and the bad-input table."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from gsv_ray.errors import GsvError
from gsv_ray.rebuild import Rebuilt, rebuild
from gsv_ray.rebuild.store import write_result
from tests.conftest import run_cli


def _one_line_exit_2(r, *needles):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gsv-ray: error: "), r.stderr
    assert "Fix:" in lines[0] and "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def _tree(d):
    return sorted((p.relative_to(d), p.stat().st_mtime_ns) for p in d.rglob("*"))


@pytest.mark.slow
def test_rebuild_cli_writes_report_and_weights(fixtures_dir, tmp_path):
    work = tmp_path / "exp"
    shutil.copytree(fixtures_dir / "SoVITS_weights_v2", work / "SoVITS_weights_v2")
    shutil.copytree(fixtures_dir / "logs", work / "logs")
    before = _tree(work)
    env = {"GSV_RAY_CACHE": str(tmp_path / "cache")}
    r = run_cli(
        "rebuild",
        str(work / "SoVITS_weights_v2/gsvfix_e1_s2.pth"),
        "--base",
        str(work / "logs/gsvfix/logs_s2_v2/G_233333333333.pth"),
        "--base-d",
        str(work / "logs/gsvfix/logs_s2_v2/D_233333333333.pth"),
        "-o",
        str(tmp_path / "out"),
        "--json",
        env=env,
        in_process=True,
    )
    assert r.returncode == 0, r.stderr
    assert _tree(work) == before  # nothing written into the inputs' folders
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "discriminator.safetensors",
        "generator.safetensors",
        "manifest.json",
        "report.json",
    ]
    rep = json.loads((out / "report.json").read_text())
    for field in ("version", "stage", "task", "verdict", "message", "targets", "dropped", "counts"):
        assert field in rep
    assert (rep["version"], rep["stage"], rep["task"], rep["verdict"]) == ("v2", "sovits", "train", "ok")
    g = rep["targets"]["generator"]
    assert g["enc_q.pre.weight"] == {
        "fate": "filled_from_base",
        "source": str(work / "logs/gsvfix/logs_s2_v2/G_233333333333.pth"),
        "reason": "not in the init file; taken from --base",
    }
    assert g["dec.conv_pre.weight"]["fate"] == "loaded"
    assert rep["counts"] == {
        "generator": {"loaded": 529, "filled_from_base": 103, "initialised": 0, "error": 0},
        "discriminator": {"loaded": 0, "filled_from_base": 111, "initialised": 0, "error": 0},
    }
    assert len(rep["dropped"][str(work / "logs/gsvfix/logs_s2_v2/G_233333333333.pth")]) == 529
    printed = json.loads(r.stdout)
    assert printed["cache_hit"] is False and printed["path"] == str(out)

    # the same command again: a cache hit, and an existing -o is refused rather than overwritten
    r2 = run_cli("rebuild", str(work / "SoVITS_weights_v2/gsvfix_e1_s2.pth"), "--json", env=env, in_process=True)
    assert r2.returncode == 0 and json.loads(r2.stdout)["cache_hit"] is False  # other options (no base)
    r3 = run_cli("rebuild", str(work / "SoVITS_weights_v2/gsvfix_e1_s2.pth"), "--json", env=env, in_process=True)
    assert json.loads(r3.stdout)["cache_hit"] is True
    r4 = run_cli(
        "rebuild",
        str(work / "SoVITS_weights_v2/gsvfix_e1_s2.pth"),
        "-o",
        str(tmp_path / "exp"),
        env=env,
        in_process=True,
    )
    _one_line_exit_2(r4, "already exists")


def test_rebuild_cli_table(fixtures_dir, tmp_path):
    r = run_cli(
        "rebuild",
        str(fixtures_dir / "SoVITS_weights_v2Pro/gsvfix_e1_s2.pth"),
        env={"GSV_RAY_CACHE": str(tmp_path)},
        in_process=True,
    )
    assert r.returncode == 0, r.stderr
    flat = " ".join(r.stdout.split())
    for text in ("initialised", "enc_q.*", "discriminators.*", "warmup", "OK: ready for train (sovits v2Pro)"):
        assert text in flat, text


BAD = {
    "v1 export with a v2 base": (
        ["SoVITS_weights/gsvfix_e1_s2.pth", "--base", "logs/gsvfix/logs_s2_v2/G_233333333333.pth"],
        ["do not fit together", "change --base to the v1 base", "s2G488k.pth"],
    ),
    "GPT file given as SoVITS": (["GPT_weights_v2/gsvfix-e1.ckpt", "--stage", "sovits"], ["GPT", "SoVITS"]),
    "discriminator of another version": (
        ["SoVITS_weights_v2Pro/gsvfix_e1_s2.pth", "--base-d", "logs/gsvfix/logs_s2_v2/D_233333333333.pth"],
        ["do not fit together", "change --base-d to the v2Pro discriminator"],
    ),
    "GPT file with a SoVITS base": (
        ["GPT_weights_v2/gsvfix-e1.ckpt", "--base", "SoVITS_weights_v2/gsvfix_e1_s2.pth"],
        ["do not fit together", "change --base to the GPT (stage 1) base", "or drop it"],
    ),
    "SoVITS file with a GPT base": (
        ["SoVITS_weights_v2/gsvfix_e1_s2.pth", "--base", "GPT_weights_v2/gsvfix-e1.ckpt"],
        ["do not fit together", "change --base to the SoVITS (stage 2) base"],
    ),
    "GPT file as the discriminator": (
        ["SoVITS_weights_v2/gsvfix_e1_s2.pth", "--base-d", "GPT_weights_v2/gsvfix-e1.ckpt"],
        ["do not fit together", "change --base-d to a SoVITS discriminator"],
    ),
    "LoRA file without its base": (
        ["SoVITS_weights_v4/gsvfix_e1_s2_l32.pth", "--task", "semantic"],
        ["ssl_proj", "--base"],
    ),
    "discriminator given as OLD": (["logs/gsvfix/logs_s2_v2/D_233333333333.pth"], ["discriminator", "--base-d"]),
    "GPT file for semantic": (["GPT_weights_v2/gsvfix-e1.ckpt", "--task", "semantic"], ["semantic", "SoVITS"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_rebuild_bad_input(case, fixtures_dir, tmp_path):
    args, needles = BAD[case]
    paths = [fixtures_dir / a for a in args if not a.startswith("-") and (fixtures_dir / a).exists()]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}
    full = [str(fixtures_dir / a) if (fixtures_dir / a).exists() and not a.startswith("-") else a for a in args]
    r = run_cli(
        "rebuild", *full, "-o", str(tmp_path / "out"), env={"GSV_RAY_CACHE": str(tmp_path / "cache")}, in_process=True
    )
    _one_line_exit_2(r, *needles)
    if "do not fit together" in needles:  # a conflict names every input, and starts with the one to change
        assert all(str(p) in r.stderr for p in paths), r.stderr
        assert r.stderr.startswith(f"gsv-ray: error: {paths[-1]}:"), r.stderr
    assert not (tmp_path / "out").exists()
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths} == before


def test_rebuild_missing_keys_cli(fixtures_dir, tmp_path):
    from gsv_ray.io import read
    from gsv_ray.io.writers import write_sovits_export

    src = read(fixtures_dir / "SoVITS_weights_v2/gsvfix_e1_s2.pth")
    p = write_sovits_export(
        tmp_path / "nodec.pth",
        {k: v for k, v in src.state_dict.items() if not k.startswith("dec.")},
        config=src.config,
        info=src.info,
        version="v2",
    )
    r = run_cli("rebuild", str(p), env={"GSV_RAY_CACHE": str(tmp_path / "cache")}, in_process=True)
    _one_line_exit_2(r, "missing from nodec.pth", "--base")


def test_failed_write_leaves_no_partial_directory(fixtures_dir, tmp_path):
    good = rebuild(fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt")
    t = torch.zeros(4)
    broken = Rebuilt(
        stage="gpt",
        version="v2",
        task="train",
        kind="gpt-export",
        weights={"gpt": {"a": t, "b": t}},  # shared memory: safetensors refuses mid-write
        config=good.config,
        report=good.report,
    )
    with pytest.raises(Exception):
        write_result(broken, tmp_path / "result")
    assert os.listdir(tmp_path) == []
    with pytest.raises(GsvError, match="already exists"):
        write_result(good, tmp_path)
