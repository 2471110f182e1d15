"""`gsv-ray train --stage gpt` trains with upstream's recipe unless told otherwise: ScaledAdam, one step
per 4 batches (5 for an epoch's first) on summed gradients, 0.002 x --lr-scale then constant;
`--optimizer adamw` keeps the AdamW recipe; precision defaults per device; what a resume compares."""

from __future__ import annotations

import json
import os

import pytest
import torch

from gsv_ray.errors import ConfigError
from gsv_ray.train import load_config, train
from tests.support.cli import run_cli_in_process


def _cli(args, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(GSV_RAY_CACHE=str(tmp_path / "cache"), WANDB_API_KEY="")
    return run_cli_in_process(*args, env=env, replace_env=True)


def _state(run_dir):
    (ckpt,) = sorted((run_dir / "checkpoints").glob("step_*"))
    return json.loads((ckpt / "state.json").read_text()), torch.load(ckpt / "optimizer.pt", weights_only=True)


def test_gpt_cli_defaults_to_upstreams_recipe(gpt_init, synth_v2, tmp_path):
    out = tmp_path / "run"
    r = _cli(
        [
            "train",
            "--init",
            gpt_init,
            "--data",
            str(synth_v2),
            "-o",
            str(out),
            "--max-steps",
            "1",
            "--batch-size",
            "2",
            "--save-every",
            "1",
            "--wandb-mode",
            "disabled",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    said = " ".join(r.stdout.split())  # the console wraps long lines
    assert "scaledadam steps once per 4 batches (5 for an epoch's first), summing their gradients" in said
    assert "then constant" in said and "peak LR 0.0002" in said
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["optimizer"] == "scaledadam" and recorded["precision"] == "no"  # CPU: fp32
    state, opt = _state(out)
    assert state["train"]["batch_in_epoch"] == 5  # the first step of an epoch summed 5 batches
    holder = next(s for s in opt["state"].values() if "param_rms" in s)
    assert {"delta", "exp_avg_sq", "param_rms", "scale_grads"} <= set(holder)
    group = opt["param_groups"][0]  # peak 0.002 x 0.1; saved after the schedule's step 1 of a 100-step warmup
    assert group["initial_lr"] == pytest.approx(2e-4) and group["lr"] == pytest.approx(2e-4 * (0.1 + 0.9 / 100))


def test_adamw_keeps_one_step_per_batch(gpt_init, synth_v2, tmp_path):
    cfg = load_config(
        None,
        init=gpt_init,
        data=str(synth_v2),
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        batch_size=2,
        save_every=1,
        optimizer="adamw",
        wandb_mode="disabled",
    )
    result = train(cfg, progress=False, say=lambda s: None)
    state, opt = _state(result.run_dir)
    assert state["train"]["batch_in_epoch"] == 1
    assert {"exp_avg", "exp_avg_sq"} <= set(next(iter(opt["state"].values())))
    assert opt["param_groups"][0]["weight_decay"] == 0.01


def test_sovits_refuses_scaledadam(sovits_files, synth_v2, tmp_path):
    r = _cli(
        [
            "train",
            "--init",
            sovits_files["init"],
            "--base",
            sovits_files["base_g"],
            "--base-d",
            sovits_files["base_d"],
            "--data",
            str(synth_v2),
            "-o",
            str(tmp_path / "run"),
            "--max-steps",
            "1",
            "--optimizer",
            "scaledadam",
        ],
        tmp_path,
    )
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "--optimizer scaledadam is upstream's GPT optimizer" in line and "drop --optimizer" in line
    assert "gsvfix_e1_s2.pth" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("stage", ["sovits", "gpt"])
def test_precision_defaults_to_upstreams_on_cuda(stage, gpt_init, synth_v2, tmp_path):
    cfg = load_config(None, init=gpt_init, data=str(synth_v2), output_dir=str(tmp_path), max_steps=1)
    assert cfg.precision is None
    assert cfg.resolved(stage, "cuda").precision == "fp16"
    assert cfg.resolved(stage, "cpu").precision == "no"
    for given in ("no", "bf16", "fp16"):
        cfg2 = load_config(
            None, init=gpt_init, data=str(synth_v2), output_dir=str(tmp_path), max_steps=1, precision=given
        )
        assert cfg2.resolved(stage, "cuda").precision == given
    with pytest.raises(ConfigError):
        load_config(
            None, init=gpt_init, data=str(synth_v2), output_dir=str(tmp_path), max_steps=1, optimizer="scaledadam"
        ).resolved("sovits", "cpu")


def test_resume_of_a_run_recorded_before_optimizer_existed(gpt_init, synth_v2, tmp_path):
    """A run written before ``--optimizer`` existed trained its GPT with AdamW: resuming it with the new
    default is refused naming the option; with ``--optimizer adamw`` it resumes."""
    out = tmp_path / "run"
    common = dict(
        init=gpt_init, data=str(synth_v2), output_dir=str(out), batch_size=2, save_every=1, wandb_mode="disabled"
    )
    train(load_config(None, **common, max_steps=1, optimizer="adamw"), progress=False, say=lambda s: None)
    record = json.loads((out / "config.json").read_text())
    del record["optimizer"]
    record["precision"] = "no"
    (out / "config.json").write_text(json.dumps(record))
    with pytest.raises(
        ConfigError, match="--resume with --optimizer scaledadam, but this run was started with --optimizer adamw"
    ):
        train(load_config(None, **common, max_steps=2, resume="latest"), progress=False, say=lambda s: None)
    result = train(
        load_config(None, **common, max_steps=2, resume="latest", optimizer="adamw"), progress=False, say=lambda s: None
    )
    assert result.steps == 2 and result.resumed_from is not None
