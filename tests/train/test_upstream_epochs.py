"""#25 items 2 and 3 as `train` meets them: a small set is repeated per epoch as upstream's loaders
do (said in the data line, and what the steps per epoch count), nothing is held out unless asked,
and a run recorded before either change is not resumed into a different trajectory."""

from __future__ import annotations

import json

import pytest

from gsv_ray.train import load_config, train
from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # full training runs and resumes


def _train(gpt_init, data, out, **kw):
    lines: list[str] = []
    cfg = load_config(
        None,
        init=gpt_init,
        data=str(data),
        output_dir=str(out),
        batch_size=4,
        warmup_steps=0,
        val_every=1000,
        save_every=2,
        wandb_mode="disabled",
        num_workers=0,
        **kw,
    )
    return train(cfg, progress=False, say=lines.append), lines


def test_small_set_is_repeated_per_epoch_and_nothing_is_held_out(gpt_init, synth_v2, tmp_path):
    """16 utterances (synth_v2), no validation option: all 16 train, x6 per epoch (96 items), so an
    epoch is 24 GPT batches at batch 4, i.e. 5 ScaledAdam steps (5 + 4 x 4 batches, 3 carried); no
    validation runs."""
    r, lines = _train(gpt_init, synth_v2, tmp_path / "run", max_steps=2)
    data = next(s for s in lines if s.startswith("data: "))
    assert data.startswith("data: 16 train utterances x6 per epoch, as upstream (96 items); 0 val of 16 usable"), data
    assert any("5 steps/epoch" in s for s in lines), lines
    assert r.val_history == [] and r.steps == 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs_are"] == "upstream"


def test_run_of_an_older_version_is_not_resumed_into_other_epochs(gpt_init, synth_v2, tmp_path):
    """A config.json as versions before #25 wrote it (--val-fraction 0.1 by default, epochs of one
    pass, no epochs_are): resuming with today's defaults is refused naming --val-fraction 0.1; with
    it, the epoch (now 14 utterances x7) is refused too, one line each, exit 2, nothing changed."""
    run = tmp_path / "run"
    _train(gpt_init, synth_v2, run, max_steps=2, val_fraction=0.1)
    record = json.loads((run / "config.json").read_text())
    del record["epochs_are"]
    (run / "config.json").write_text(json.dumps(record))
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    args = [
        "train",
        "--init",
        gpt_init,
        "--data",
        str(synth_v2),
        "-o",
        str(run),
        "--max-steps",
        "4",
        "--warmup-steps",
        "0",
        "--resume",
        "--wandb-mode",
        "disabled",
    ]
    env = {"GSV_RAY_CACHE": str(tmp_path / "cache")}
    r = run_cli(*args, env=env, in_process=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--val-fraction 0.0, but this run was started with --val-fraction 0.1" in r.stderr, r.stderr
    r = run_cli(*args, "--val-fraction", "0.1", env=env, in_process=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "one pass" in r.stderr and "14 training utterances now make an epoch of x7" in r.stderr, r.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    assert json.loads((run / "config.json").read_text()) == record
