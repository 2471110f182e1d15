"""Validation scores the inference path (#26 item 1): SoVITS resynthesis from real tokens with another
held-out utterance as the reference, GPT generation prompted by another held-out utterance. The val/
keys reach metrics.jsonl, are finite and the same in two runs, and a model broken the way users hear
(garbage decoder, a GPT that never ends) scores a clearly worse val/quality."""

from __future__ import annotations

import math

import pytest
import torch

from gsv_ray.data.gpt import GPTDataset, collate_gpt
from gsv_ray.data.sovits import SoVITSDataset
from gsv_ray.errors import GsvError
from gsv_ray.rebuild import build_models, rebuild
from gsv_ray.track import read_metrics
from gsv_ray.train import load_config, train
from gsv_ray.train.gpt import generation_metrics
from gsv_ray.train.loop import open_run_experiment
from gsv_ray.train.sovits import inference_metrics
from gsv_ray.train.tracking import Tracking

SOVITS_KEYS = {"loss", "mel_l1", "kl", "mel_dist", "mrstft_dist", "quality"}
GPT_KEYS = {
    "loss",
    "top3_acc",
    "top1_acc",
    "eos_rate",
    "len_ratio",
    "len_error",
    "repeat_rate",
    "longest_run",
    "quality",
}


def val_rows(cfg, say=lambda s: None) -> list[dict]:
    """Train with metrics.jsonl written as the CLI writes it; the val rows without their timestamps."""
    with Tracking.for_run(cfg) as tracking:
        r = train(cfg, tracking=tracking, progress=False, say=say)
    rows = [x for x in read_metrics(r.run_dir / "metrics.jsonl") if x["split"] == "val"]
    return [{k: v for k, v in x.items() if k not in ("time", "timestamp", "wall")} for x in rows]


@pytest.mark.slow
def test_sovits_validation_scores_resynthesis(sovits_files, synth_v2, tmp_path):
    runs, lines = [], []
    for name in ("a", "b"):
        cfg = load_config(
            None,
            **sovits_files,
            data=str(synth_v2),
            output_dir=str(tmp_path / name),
            max_steps=1,
            batch_size=2,
            val_batches=1,
            val_every=1,
            save_every=1,
            val_fraction=0.25,
            audio_samples=0,
            num_workers=0,
            wandb_mode="disabled",
        )
        runs.append(val_rows(cfg, say=lines.append))
    assert any("val/spk_sim) is not scored: pass --sv-model" in s for s in lines)  # no speaker model given
    (row,) = runs[0]
    per_utt = {k for k in row if k.startswith("utt/")}
    assert SOVITS_KEYS <= set(row) and len(per_utt) == 2 * 2, sorted(row)  # 1 batch of 2 held-out utterances
    assert all(math.isfinite(row[k]) for k in SOVITS_KEYS | per_utt)
    assert row["quality"] == row["mel_dist"] > 0
    assert runs[0] == runs[1]  # fixed pairing, noise and seeds: the same numbers

    # a generator whose decoder makes garbage (zeroed weights: NaN through weight norm) scores clearly worse
    rb = rebuild(sovits_files["init"], base_g=sovits_files["base_g"], base_d=sovits_files["base_d"], task="train")
    g = build_models(rb.resolved)["generator"]
    g.load_state_dict(rb.generator)
    experiment = open_run_experiment(synth_v2, rb)
    ds = SoVITSDataset(experiment, experiment.names[:2], audio=rb.resolved.sovits.audio)
    items = [ds[0], ds[1]]
    with torch.no_grad():
        good = inference_metrics(g.eval(), items, 1234, ds.sampling_rate)
        for p in g.dec.parameters():
            p.zero_()
        broken = inference_metrics(g, items, 1234, ds.sampling_rate)
    assert broken["quality"] > 2 * good["quality"], (good["quality"], broken["quality"])
    assert broken["mrstft_dist"] > 2 * good["mrstft_dist"]


def test_gpt_validation_scores_generation(gpt_init, synth_v2, tmp_path):
    runs = []
    for name in ("a", "b"):
        cfg = load_config(
            None,
            init=gpt_init,
            data=str(synth_v2),
            output_dir=str(tmp_path / name),
            max_steps=8,
            batch_size=4,
            optimizer="adamw",
            lr_scale=1.0,
            warmup_steps=2,
            val_every=8,
            save_every=8,
            val_fraction=0.25,
            num_workers=0,
            wandb_mode="disabled",
        )
        runs.append(val_rows(cfg))
    (row,) = runs[0]
    assert GPT_KEYS <= set(row) and all(math.isfinite(row[k]) for k in GPT_KEYS), row
    assert runs[0] == runs[1]
    assert row["eos_rate"] == 1.0 and row["quality"] > 0  # 8 steps teach it to end (too early, yet)

    # the trained export, and the same with its EOS logit forced to -inf: never ends, clearly worse
    rb = rebuild(next((tmp_path / "a").rglob("*.ckpt")), task="train")
    model = build_models(rb.resolved)["gpt"]
    model.load_state_dict({k: v.float() for k, v in rb.gpt.items()})
    experiment = open_run_experiment(synth_v2, rb)
    ds = GPTDataset(experiment, experiment.names[:4])
    batches = [collate_gpt([ds[i] for i in range(4)])]
    with torch.no_grad():
        good = generation_metrics(model.eval(), batches, 1234)
        model.ar_predict_layer.register_forward_hook(
            lambda mod, inputs, out: out.index_fill(-1, torch.tensor([model.eos]), float("-inf"))
        )
        endless = generation_metrics(model, batches, 1234)
    assert good["eos_rate"] > 0 and endless["eos_rate"] == 0.0
    assert endless["len_ratio"] > 2  # ran to the cap (2 x real + 25)
    assert endless["quality"] > good["quality"] + 0.5, (good, endless)


@pytest.mark.slow
def test_sovits_validation_scores_speaker_similarity_with_sv_model(sovits_files, synth_v2, goldens_dir, tmp_path):
    """``--sv-model``: upstream's speaker model (here the golden ERes2NetV2, saved as upstream ships it:
    a torch.save'd state_dict) adds val/spk_sim per utterance and averaged, and the composite counts it
    (without it, the test above: no spk_sim, and a line saying how to get it). A file that is no
    speaker model is one line naming it, before training starts."""
    from tests.support.goldens import eres2netv2_state_dict

    sv = tmp_path / "pretrained_eres2netv2w24s4ep4.ckpt"
    torch.save(eres2netv2_state_dict(goldens_dir), sv)
    common = dict(
        **sovits_files,
        data=str(synth_v2),
        max_steps=1,
        batch_size=2,
        val_batches=1,
        val_every=1,
        save_every=1,
        val_fraction=0.25,
        audio_samples=0,
        num_workers=0,
        wandb_mode="disabled",
    )
    (row,) = val_rows(load_config(None, **common, output_dir=str(tmp_path / "sv"), sv_model=str(sv)))
    sims = [v for k, v in row.items() if k.startswith("utt/") and k.endswith("/spk_sim")]
    assert len(sims) == 2 and all(-1.0 <= s <= 1.0 for s in sims)
    assert row["spk_sim"] == pytest.approx(sum(sims) / 2)
    assert row["quality"] == pytest.approx(row["mel_dist"] + 1 - row["spk_sim"])

    with pytest.raises(GsvError, match="D_233333333333.pth") as e:  # the discriminator is no speaker model
        train(
            load_config(None, **common, output_dir=str(tmp_path / "bad"), sv_model=sovits_files["base_d"]),
            progress=False,
            say=lambda s: None,
        )
    assert "pretrained_eres2netv2w24s4ep4.ckpt" in str(e.value)  # the fix names the file to give
    assert not (tmp_path / "bad" / "checkpoints").exists()
