"""Non-finite training never reaches a checkpoint or an export: non-finite options are refused, and a
run whose gradients become NaN/inf stops with one line, keeping the last good checkpoint."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from tests.support.cli import run_cli_in_process


def _run(args, tmp_path):
    """The CLI in-process (its output and exit status are the point), in the environment a user has."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(GSV_RAY_CACHE=str(tmp_path / "cache"), WANDB_API_KEY="")
    return run_cli_in_process(*args, env=env, replace_env=True)


@pytest.mark.parametrize("how", ["flag", "yaml"])
def test_non_finite_options_are_refused(how, gpt_init, synth_v2, tmp_path):
    run = tmp_path / "run"
    if how == "flag":
        extra = ["--lr-scale", "inf"]
    else:
        (tmp_path / "c.yaml").write_text("lr_scale: .inf\n")
        extra = ["--config", str(tmp_path / "c.yaml")]
    r = _run(
        ["train", "--init", gpt_init, "--data", str(synth_v2), "-o", str(run), "--max-steps", "2", *extra], tmp_path
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "finite" in r.stderr
    assert not run.exists()


@pytest.mark.parametrize(
    "yaml_text, word",
    [
        ("max_steps: three\n", "whole number"),
        ("lr_scale: true\n", "number"),
        ("batch_size: 2.5\n", "whole number"),
        ("lr_scale: [1]\n", "number"),
    ],
)
def test_wrongly_typed_yaml_is_one_line(yaml_text, word, gpt_init, synth_v2, tmp_path):
    (tmp_path / "c.yaml").write_text(yaml_text)
    r = _run(
        [
            "train",
            "--config",
            str(tmp_path / "c.yaml"),
            "--init",
            gpt_init,
            "--data",
            str(synth_v2),
            "-o",
            str(tmp_path / "run"),
            "--epochs",
            "1",
        ],
        tmp_path,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and word in r.stderr, r.stderr


def test_non_utf8_yaml_is_one_line(gpt_init, synth_v2, tmp_path):
    (tmp_path / "c.yaml").write_bytes(b"lr_scale: 0.1\nname: \xff\xfe\n")
    r = _run(
        [
            "train",
            "--config",
            str(tmp_path / "c.yaml"),
            "--init",
            gpt_init,
            "--data",
            str(synth_v2),
            "-o",
            str(tmp_path / "run"),
            "--max-steps",
            "1",
        ],
        tmp_path,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "UTF-8" in r.stderr


@pytest.mark.slow
def test_diverging_run_stops_before_saving_non_finite_weights(gpt_init, synth_v2, tmp_path):
    run = tmp_path / "run"
    r = _run(
        [
            "train",
            "--init",
            gpt_init,
            "--data",
            str(synth_v2),
            "-o",
            str(run),
            "--max-steps",
            "6",
            "--lr-scale",
            "1e30",
            "--warmup-steps",
            "0",
            "--save-every",
            "1",
            "--keep-last",
            "10",
            "--val-fraction",
            "0",
            "--wandb-mode",
            "disabled",
        ],
        tmp_path,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "diverged at step" in line and "last good checkpoint" in line and "lr-scale" in line
    assert not list(run.glob("GPT_weights*/*.ckpt"))  # nothing exported
    ckpts = sorted((run / "checkpoints").glob("step_*"))
    assert ckpts, "the steps before the divergence were checkpointed"
    for c in ckpts:  # every checkpoint written holds finite weights
        assert all(torch.isfinite(t).all() for t in load_file(str(c / "model.safetensors")).values()), c.name
