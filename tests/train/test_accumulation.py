"""Gradient accumulation is the bigger batch: ``--grad-accum 2 --batch-size 2`` ends with the weights of
``--batch-size 4`` (both stages; every model: G, D, GPT), and G's loss never leaves a gradient in D."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gsv_ray.train import load_config, train


def weights(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """Every model of a checkpoint (``model.safetensors`` = G or GPT, ``model_1`` = D)."""
    return {f"{f.stem}/{k}": v for f in sorted(ckpt_dir.glob("model*.safetensors"))
            for k, v in load_file(str(f)).items()}


def without_key_biases(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Attention key biases have a mathematically zero gradient (softmax ignores a constant added to
    every key's logit); Adam normalises their float-noise gradients into full-size steps of random
    sign, so they differ between any two summation orders. Everything else must match."""
    out = {}
    for k, v in w.items():
        if re.search(r"(conv_k|w_ks)\.bias$", k):
            continue
        if k.endswith("self_attn.in_proj_bias"):  # [q; k; v] biases: keep q and v
            third = v.shape[0] // 3
            v = torch.cat([v[:third], v[2 * third:]])
        out[k] = v
    return out


def assert_same_weights(a: dict, b: dict, start: dict, rel: float = 1e-2) -> None:
    """The two runs' updates agree: ``|a - b| <= rel * |a - start|`` over all parameters (L2), and
    training really moved them. (Per element, zero-gradient parameters would only show noise; the old
    accumulation missed by 65 %.)"""
    a, b, start = without_key_biases(a), without_key_biases(b), without_key_biases(start)
    assert a.keys() == b.keys() == start.keys() and a
    diff = sum(float((a[k] - b[k]).double().pow(2).sum()) for k in a) ** 0.5
    moved = sum(float((a[k] - start[k]).double().pow(2).sum()) for k in a) ** 0.5
    worst = max(a, key=lambda k: float((a[k] - b[k]).abs().max()))
    assert moved > 1e-3 and diff <= rel * moved, (diff, moved, worst)


def _files(stage, gpt_init, sovits_files):
    return {"init": gpt_init} if stage == "gpt" else sovits_files


def _run(stage, gpt_init, sovits_files, data, out, **kw):
    base = dict(_files(stage, gpt_init, sovits_files), data=str(data), output_dir=str(out), max_steps=3, dropout=0.0,
                val_fraction=0.0, val_every=1000, save_every=1000, warmup_steps=0, lr_scale=1.0, seed=5,
                num_workers=0, wandb_mode="disabled")
    base.update(kw)
    return train(load_config(None, **base), progress=False, say=lambda s: None)


@pytest.mark.parametrize("stage", ["gpt", "sovits"])
def test_accumulation_equals_the_bigger_batch(stage, gpt_init, sovits_files, synth_v2, tmp_path):
    full = _run(stage, gpt_init, sovits_files, synth_v2, tmp_path / "full", batch_size=4, grad_accum=1)
    accum = _run(stage, gpt_init, sovits_files, synth_v2, tmp_path / "accum", batch_size=2, grad_accum=2)
    start = _run(stage, gpt_init, sovits_files, synth_v2, tmp_path / "start", batch_size=4, max_steps=1, lr_scale=1e-9)
    assert full.steps == accum.steps == 3
    assert_same_weights(weights(full.last_checkpoint), weights(accum.last_checkpoint), weights(start.last_checkpoint))


def test_generator_loss_leaves_no_gradient_in_d(sovits_files, synth_v2, tmp_path):
    """After a step, D holds no gradient: G's adversarial loss went through a frozen D."""
    from gsv_ray.data.experiment import open_experiment
    from gsv_ray.data.loader import MicroBatch
    from gsv_ray.rebuild import rebuild
    from gsv_ray.train.loop import make_accelerator
    from gsv_ray.train.precision import Precision
    from gsv_ray.train.sovits import SoVITSRecipe

    cfg = load_config(None, **sovits_files, data=str(synth_v2), output_dir=str(tmp_path), max_steps=1, dropout=0.0)
    rebuilt = rebuild(cfg.init, base_g=cfg.base_g, base_d=cfg.base_d, task="train")
    acc = make_accelerator(cfg)
    recipe = SoVITSRecipe(rebuilt, cfg, acc, open_experiment(synth_v2, "sovits", "v2"), Precision("no", acc.device))
    ds = recipe.dataset(recipe.experiment.names)
    plan = recipe.plan(ds, seed=0)
    for n in (1, 2):
        context = plan.context(list(range(2 * n)))
        micro = [MicroBatch((2 * i, 2 * i + 1), 2 * n, context) for i in range(n)]
        batches = [(recipe.make_batch([ds[j] for j in mb.indices], mb), mb) for mb in micro]
        before = {k: v.clone() for k, v in recipe.d.state_dict().items()}
        recipe.train_step(batches, step=0)
        assert all(p.grad is None for p in recipe.d.parameters()), n
        assert all(p.grad is None for p in recipe.g.parameters()), n
        assert all(p.requires_grad for p in recipe.d.parameters())  # unfrozen again
        assert any(not torch.equal(before[k], v) for k, v in recipe.d.state_dict().items())
