"""`verify`: losses of the rebuilt model next to the base's on real data, with a verdict."""

from __future__ import annotations

import math

import pytest
import torch

from gsv_ray.data.synthetic import make_synthetic_experiment
from gsv_ray.io import read
from gsv_ray.io.writers import write_gpt_export, write_sovits_export
from gsv_ray.train.verify import verify


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_experiment(tmp_path_factory.mktemp("verify") / "exp", version="v2", num_utterances=12)


@pytest.mark.slow
def test_sovits_export_passes_against_its_base(fixtures_dir, data, tmp_path):
    torch.manual_seed(1234)
    rng = torch.random.get_rng_state()
    r = verify(
        fixtures_dir / "SoVITS_weights_v2/gsvfix_e1_s2.pth",
        data=data,
        base_g=fixtures_dir / "logs/gsvfix/logs_s2_v2/G_233333333333.pth",
        batches=2,
        batch_size=4,
        train_steps=2,
        cache_root=tmp_path,
    )
    assert r.verdict == "pass" and not r.reasons
    assert set(r.rebuilt) == {"mel_l1", "kl", "loss"} and r.batches == 2 and r.items == 8
    # the export is the base checkpoint's own generator in fp16: the losses agree closely
    assert math.isclose(r.rebuilt["loss"], r.base["loss"], rel_tol=0.01)
    assert r.after_training["loss"] < r.rebuilt["loss"]  # two reduced-LR steps on these batches help
    assert "103 from base" in r.rebuild_message
    assert torch.equal(torch.random.get_rng_state(), rng)  # the caller's global RNG is left as it was (was reseeded)


@pytest.mark.slow
def test_damaged_sovits_export_fails(fixtures_dir, data, tmp_path):
    src = read(fixtures_dir / "SoVITS_weights_v2/gsvfix_e1_s2.pth")
    g = torch.Generator().manual_seed(0)
    damaged = {
        k: (v.float() + 3 * torch.randn(v.shape, generator=g)).half() if k.startswith("dec.") else v
        for k, v in src.state_dict.items()
    }
    p = write_sovits_export(tmp_path / "damaged.pth", damaged, config=src.config, info=src.info, version="v2")
    r = verify(
        p,
        data=data,
        base_g=fixtures_dir / "logs/gsvfix/logs_s2_v2/G_233333333333.pth",
        batches=2,
        batch_size=4,
        cache_root=tmp_path / "cache",
    )
    assert r.verdict == "fail"
    assert any("worse than the base" in reason for reason in r.reasons)
    assert r.rebuilt["mel_l1"] > 1.1 * r.base["mel_l1"]


def test_gpt_pass_and_fail(fixtures_dir, data, tmp_path):
    base = fixtures_dir / "logs/gsvfix/logs_s1_v2/ckpt/epoch=0-step=6.ckpt"
    ok = verify(
        fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt",
        data=data,
        base_g=base,
        batches=2,
        batch_size=4,
        train_steps=3,
        cache_root=tmp_path,
    )
    assert ok.verdict == "pass" and ok.metric == "cross-entropy per token"
    assert math.isclose(ok.rebuilt["loss"], ok.base["loss"], rel_tol=1e-3)
    assert ok.after_training["loss"] < ok.rebuilt["loss"]

    src = read(fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt")
    g = torch.Generator().manual_seed(1)
    noisy = {k: (v.float() + 2 * torch.randn(v.shape, generator=g)).half() for k, v in src.state_dict.items()}
    p = write_gpt_export(tmp_path / "noisy-e1.ckpt", noisy, config=src.config, info="GPT-e1")
    bad = verify(p, data=data, base_g=base, batches=2, batch_size=4, cache_root=tmp_path)
    assert bad.verdict == "fail" and bad.rebuilt["loss"] > 1.1 * bad.base["loss"]


@pytest.mark.slow
def test_without_base_only_finiteness_is_checked(fixtures_dir, data, tmp_path):
    r = verify(
        fixtures_dir / "SoVITS_weights_v2Pro/gsvfix_e1_s2.pth",
        data=make_synthetic_experiment(tmp_path / "pro", version="v2Pro", num_utterances=8),
        batches=1,
        batch_size=4,
        cache_root=tmp_path,
    )
    assert r.base is None and r.verdict == "pass"
    assert all(math.isfinite(v) for v in r.rebuilt.values())


def test_verify_cli_exit_codes(fixtures_dir, data, tmp_path):
    import json

    from tests.conftest import run_cli

    env = {"GSV_RAY_CACHE": str(tmp_path / "cache")}
    ok = run_cli(
        "verify",
        str(fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt"),
        "--data",
        str(data),
        "--base",
        str(fixtures_dir / "logs/gsvfix/logs_s1_v2/ckpt/epoch=0-step=6.ckpt"),
        "--batches",
        "1",
        "--json",
        env=env,
        in_process=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["verdict"] == "pass"
    table = run_cli(
        "verify",
        str(fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt"),
        "--data",
        str(data),
        "--batches",
        "1",
        env=env,
        in_process=True,
    )
    assert (
        table.returncode == 0
        and "verdict: PASS" in table.stdout
        and "only finiteness" in " ".join(table.stdout.split())
    )
    missing = run_cli(
        "verify",
        str(fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt"),
        "--data",
        str(tmp_path / "nope"),
        env=env,
        in_process=True,
    )
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_verify_names_data_problems_like_train(fixtures_dir, tmp_path):
    """A missing, a zero-length and a garbage wav: verify names all three (it used to evaluate the
    rest silently and pass), with the same report lines train prints."""
    import json
    import os

    from tests.conftest import run_cli

    exp = make_synthetic_experiment(tmp_path / "exp", version="v2", num_utterances=12)
    wavs = sorted((exp / "5-wav32k").iterdir())
    wavs[0].unlink()
    wavs[1].write_bytes(b"")
    wavs[2].write_bytes(os.urandom(5000))
    init = str(fixtures_dir / "SoVITS_weights_v2/gsvfix_e1_s2.pth")
    env = {"GSV_RAY_CACHE": str(tmp_path / "cache")}
    table = run_cli("verify", init, "--data", str(exp), "--batches", "1", env=env, in_process=True)
    assert table.returncode == 0, table.stderr
    for w in wavs[:3]:
        assert w.name in table.stdout, (w.name, table.stdout)
    as_json = json.loads(
        run_cli("verify", init, "--data", str(exp), "--batches", "1", "--json", env=env, in_process=True).stdout
    )
    report = "\n".join(as_json["data_report"])
    assert all(w.name in report for w in wavs[:3])
    from gsv_ray.data.experiment import open_experiment

    assert as_json["data_report"] == open_experiment(exp, "sovits", "v2").report.lines()  # what train prints
