"""Both stages train on the generated folder, the validation loss goes down, and the exports are
files GPT-SoVITS's formats describe (identified by our reader, strict-loadable into our models)."""

from __future__ import annotations

import pytest
import torch

from gsv_ray.io import read
from gsv_ray.models.gpt import T2SConfig, Text2SemanticDecoder, from_upstream_keys
from gsv_ray.models.sovits import SoVITSConfig, SoVITSGenerator
from gsv_ray.rebuild import rebuild
from gsv_ray.train import load_config, train


def test_gpt_trains_and_exports(gpt_init, synth_v2, tmp_path):
    cfg = load_config(
        None,
        init=gpt_init,
        data=str(synth_v2),
        output_dir=str(tmp_path / "myvoice"),
        max_steps=36,
        batch_size=4,
        lr_scale=2.0,
        warmup_steps=6,
        val_every=12,
        save_every=12,
        val_fraction=0.2,
    )
    r = train(cfg, progress=False, say=lambda s: None)
    losses = [v["loss"] for v in r.val_history]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2] and losses[-1] < 0.9 * losses[0], losses
    (export,) = r.exports
    # the init file is "GPT-e1": the export continues its epoch count
    assert export.relative_to(tmp_path).as_posix() == f"myvoice/GPT_weights_v2/myvoice-e{1 + r.epochs}.ckpt"
    f = read(export)
    assert (f.kind, f.version, f.info) == ("gpt-export", "v2", f"GPT-e{1 + r.epochs}")
    assert all(t.dtype == torch.float16 for t in f.state_dict.values()) and f.config["data"]["max_sec"]
    model = Text2SemanticDecoder(T2SConfig.from_s1_config(f.config))
    model.load_state_dict(from_upstream_keys(f.state_dict), strict=True)
    assert not torch.equal(
        f.state_dict["model.ar_predict_layer.weight"], read(gpt_init).state_dict["model.ar_predict_layer.weight"]
    )


@pytest.mark.slow
def test_sovits_trains_and_exports(sovits_files, synth_v2, tmp_path):
    cfg = load_config(
        None,
        **sovits_files,
        data=str(synth_v2),
        output_dir=str(tmp_path / "myvoice"),
        max_steps=24,
        batch_size=4,
        lr_scale=2.0,
        warmup_steps=4,
        val_every=12,
        save_every=12,
        val_fraction=0.2,
    )
    r = train(cfg, progress=False, say=lambda s: None)
    losses = [v["loss"] for v in r.val_history]
    assert losses[-1] < losses[0], losses
    (export,) = r.exports
    # the init file is gsvfix_e1_s2.pth ("1epoch_2iteration"): the export continues both counters
    e = 1 + r.epochs
    assert export.relative_to(tmp_path).as_posix() == f"myvoice/SoVITS_weights_v2/myvoice_e{e}_s26.pth"
    f = read(export)
    assert (f.kind, f.version, f.header, f.info) == ("sovits-export", "v2", "PK", f"{e}epoch_26iteration")
    assert not any("enc_q" in k for k in f.state_dict) and f.config_type == "utils.HParams"
    # strict load into our generator minus enc_q, via the rebuild step (which reads the narrow widths)
    back = rebuild(export, task="infer")
    assert back.report.counts()["generator"]["loaded"] == len(f.state_dict)
    g = SoVITSGenerator(SoVITSConfig.from_s2_config(back.config["s2"], **back.config["widths"]))
    missing, unexpected = g.load_state_dict({k: v.float() for k, v in f.state_dict.items()}, strict=False)
    assert not unexpected and set(missing) == {k for k in g.state_dict() if k.startswith("enc_q.")}


def test_bad_lr_scale_and_stage(gpt_init, synth_v2, tmp_path):
    from gsv_ray.errors import GsvError

    with pytest.raises(GsvError, match="lr-scale"):
        load_config(None, init=gpt_init, data=str(synth_v2), output_dir=str(tmp_path), max_steps=1, lr_scale=0)
    cfg = load_config(
        None, init=gpt_init, data=str(synth_v2), output_dir=str(tmp_path / "x"), max_steps=1, stage="sovits"
    )
    with pytest.raises(GsvError, match="GPT"):
        train(cfg, progress=False, say=lambda s: None)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_gradient_accumulation_and_bf16(gpt_init, synth_v2, tmp_path):
    """grad_accum=2 through the CLI: each optimizer step consumes two micro-batches; bf16 autocast
    trains with finite losses. (Equal weights to the bigger batch: test_accumulation.py.)"""
    import json

    from gsv_ray.track import read_metrics
    from gsv_ray.train.checkpoint import TrainState
    from tests.conftest import run_cli

    run = tmp_path / "acc"
    r = run_cli(
        "train",
        "--init",
        gpt_init,
        "--data",
        str(synth_v2),
        "-o",
        str(run),
        "--max-steps",
        "3",
        "--batch-size",
        "2",
        "--grad-accum",
        "2",
        "--precision",
        "bf16",
        "--val-fraction",
        "0",
        "--warmup-steps",
        "0",
        "--wandb-mode",
        "disabled",
        in_process=True,
    )
    assert r.returncode == 0, r.stderr
    assert "= 2 x 1 process(es) x 2 accumulation = 4" in r.stdout
    rows = [x for x in read_metrics(run / "metrics.jsonl") if x["split"] == "train"]
    assert [x["step"] for x in rows] == [1, 2, 3] and all(torch.isfinite(torch.tensor(x["loss"])) for x in rows)
    # 16 utterances x6 (upstream's epoch) / global batch 4 = 24 batches per epoch; ScaledAdam's 3 steps
    # summed 5 + 4 + 4 of them, each split into 2 micro-batches: 26 micro-batches consumed
    state = TrainState()
    state.load_state_dict(json.loads((run / "checkpoints/step_00000003/state.json").read_text())["train"])
    assert (state.step, state.batch_in_epoch) == (3, 26)


def test_restart_counters(gpt_init, synth_v2, tmp_path):
    cfg = load_config(
        None,
        init=gpt_init,
        data=str(synth_v2),
        output_dir=str(tmp_path / "v"),
        max_steps=2,
        val_fraction=0.0,
        restart_counters=True,
        wandb_mode="disabled",
    )
    (export,) = train(cfg, progress=False, say=lambda s: None).exports
    assert export.name == "v-e1.ckpt" and read(export).info == "GPT-e1"
