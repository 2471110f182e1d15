"""NaN / inf weights in an input file (issue #24 item 6): ``inspect`` says so in a warning line, every
command that rebuilds (rebuild, train, verify, semantic, tune) refuses in one line naming the file, the
count and the first keys, exit 2; nothing refused is cached. Real exports written in GPT-SoVITS's
formats (``gsv_ray.io.writers``) with the bad values planted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gsv_ray.io.safeload import safe_load
from gsv_ray.io.writers import write_gpt_export, write_sovits_export
from tests.conftest import run_cli
from tests.test_semantic import make_experiment

SOVITS = "SoVITS_weights_v2/gsvfix_e1_s2.pth"
GPT = "GPT_weights_v2/gsvfix-e1.ckpt"
FIX = "logs/gsvfix/logs_s2_v2/"


def _planted(fixtures_dir: Path, tmp_path: Path, stage: str, value: float, keys: int = 1) -> tuple[Path, list[str]]:
    """A copy of the fixture export of ``stage`` with ``value`` planted into its first ``keys`` tensors
    (two values each); returns the path and the keys, as stored."""
    src = fixtures_dir / (SOVITS if stage == "sovits" else GPT)
    obj = safe_load(src).obj
    sd = {k: v.clone() for k, v in obj["weight"].items()}
    planted = [k for k, v in sd.items() if v.is_floating_point() and v.numel() >= 2][:keys]
    for k in planted:
        sd[k].view(-1)[:2] = value
    out = tmp_path / f"bad-{stage}{src.suffix}"
    if stage == "sovits":
        write_sovits_export(out, sd, config=obj["config"], info=obj["info"], version="v2")
    else:
        write_gpt_export(out, sd, config=obj["config"], info=obj["info"])
    return out, planted


def _one_line_exit_2(r, *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-4000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gsv-ray: error: "), r.stderr
    assert "Fix:" in lines[0] and "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("stage,value", [("sovits", float("nan")), ("gpt", float("inf"))])
def test_inspect_warns_and_rebuild_train_refuse(stage, value, fixtures_dir, tmp_path):
    bad, keys = _planted(fixtures_dir, tmp_path, stage, value)
    before = bad.read_bytes()
    cache = tmp_path / "cache"
    env = {"GSV_RAY_CACHE": str(cache)}

    r = run_cli("inspect", str(bad), env=env, in_process=True)  # describes, does not refuse
    assert r.returncode == 0, r.stderr
    assert "non-finite" in r.stdout and keys[0] in " ".join(r.stdout.split()), r.stdout
    r = run_cli("inspect", "--json", str(bad), env=env, in_process=True)
    assert r.returncode == 0, r.stderr
    warns = json.loads(r.stdout)["warnings"]
    assert any("2 non-finite values" in w and keys[0] in w for w in warns), warns

    r = run_cli("rebuild", str(bad), "-o", str(tmp_path / "out"), env=env, in_process=True)
    line = _one_line_exit_2(r, str(bad), "2 non-finite", keys[0], "earlier checkpoint")
    assert len(line) < 400, line
    assert not (tmp_path / "out").exists()
    assert not any((cache / "rebuild").glob("*")) if (cache / "rebuild").exists() else True  # nothing cached

    data = tmp_path / "exp"
    data.mkdir()
    r = run_cli(
        "train",
        "--init",
        str(bad),
        "--data",
        str(data),
        "-o",
        str(tmp_path / "run"),
        "--max-steps",
        "2",
        env=env,
        in_process=True,
    )
    _one_line_exit_2(r, str(bad), "non-finite", keys[0])
    assert bad.read_bytes() == before


@pytest.mark.slow
def test_nan_in_the_base_is_named_and_first_keys_listed(fixtures_dir, tmp_path):
    """A NaN planted in --base (a real upstream training checkpoint G_*.pth): the base is named, with
    the total count and only the first few keys (a one-line message, however many tensors)."""
    from gsv_ray.errors import GsvError
    from gsv_ray.rebuild import rebuild_cached

    g = safe_load(fixtures_dir / FIX / "G_233333333333.pth").obj
    sd = {k: v.clone() for k, v in g["model"].items()}
    bad_keys = [k for k, v in sd.items() if v.is_floating_point()][:7]
    for k in bad_keys:
        sd[k].view(-1)[0] = float("nan")
    base = tmp_path / "G_nan.pth"
    torch.save({**g, "model": sd}, base)
    with pytest.raises(GsvError) as e:
        rebuild_cached(str(fixtures_dir / SOVITS), base_g=str(base), cache_root=tmp_path / "cache")
    msg = str(e.value)
    assert str(base) in msg and "7 non-finite values in 7 tensors" in msg and bad_keys[0] in msg, msg
    assert bad_keys[-1] not in msg and "..." in msg and "\n" not in msg
    assert not (tmp_path / "cache" / "rebuild").exists() or not any((tmp_path / "cache" / "rebuild").iterdir())


@pytest.mark.slow
def test_verify_semantic_and_tune_refuse(fixtures_dir, tmp_path):
    bad, keys = _planted(fixtures_dir, tmp_path, "sovits", float("nan"))
    env = {"GSV_RAY_CACHE": str(tmp_path / "cache")}
    data = tmp_path / "exp"
    data.mkdir()
    r = run_cli("verify", str(bad), "--data", str(data), env=env, in_process=True)
    _one_line_exit_2(r, str(bad), "non-finite", keys[0])
    exp = make_experiment(tmp_path / "logs-exp", {"a.wav": torch.randn(1, 768, 30)})
    r = run_cli("semantic", "--data", str(exp), "--model", str(bad), env=env, in_process=True)
    _one_line_exit_2(r, str(bad), "non-finite")
    assert not (exp / "6-name2semantic.tsv").exists()
    r = run_cli(
        "tune",
        "--init",
        str(bad),
        "--data",
        str(data),
        "-o",
        str(tmp_path / "tune"),
        "--max-steps",
        "2",
        env={**env, "RAY_AUTH_MODE": "disabled"},
    )
    _one_line_exit_2(r, str(bad), "non-finite", keys[0])
