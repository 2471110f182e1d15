"""Gradient accumulation is the bigger batch, dropout included: ``--grad-accum 2 --batch-size 2`` takes
the step ``--batch-size 4`` takes (both stages; every model: G, D, GPT), and G's loss never leaves a
gradient in D. Dropout masks are keyed per utterance, so they are the same in either configuration
and in G's recomputed pass; the EMA codebook (``freeze_quantizer: false``) is refused with accumulation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gsv_ray.data.experiment import UPSTREAM_MIN_ITEMS
from gsv_ray.train import load_config, train

#: Upstream's dropout rate: the tests must exercise the masks (at 0 every configuration agrees).
DROPOUT = 0.1
#: One step's gradient of ``2 x 2`` vs ``4`` (L2 of the difference / L2 of the gradient, per model).
#: Measured (CPU fp32, dropout 0.1): GPT 2.1e-7, D 2.0e-7, G 1.4e-6, v4 CFM 5.5e-7 (summation order);
#: a broken replay, weighting or keying is >= 1e-2.
GRAD_REL = 1e-5
#: After 3 optimizer steps through ``train()``: |w(2 x 2) - w(4)| / |w - w0| (L2, key biases aside).
#: Measured (CPU fp32, dropout 0.1): GPT 2.8e-6 (ScaledAdam, 13 batches), SoVITS 3.7e-4 (Adam turns float
#: noise on near-zero gradients into full-size steps); the bounds are ~2-3x that.
E2E_REL = {"gpt": 6e-6, "sovits": 1e-3}


def weights(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """Every model of a checkpoint (``model.safetensors`` = G or GPT, ``model_1`` = D)."""
    return {
        f"{f.stem}/{k}": v for f in sorted(ckpt_dir.glob("model*.safetensors")) for k, v in load_file(str(f)).items()
    }


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
            v = torch.cat([v[:third], v[2 * third :]])
        out[k] = v
    return out


def weight_gap(a: dict, b: dict, start: dict) -> tuple[float, float]:
    """``(|a - b|, |a - start|)`` over all parameters (L2): how far apart two runs' updates are,
    and how far training moved them."""
    a, b, start = without_key_biases(a), without_key_biases(b), without_key_biases(start)
    assert a.keys() == b.keys() == start.keys() and a
    diff = sum(float((a[k] - b[k]).double().pow(2).sum()) for k in a) ** 0.5
    moved = sum(float((a[k] - start[k]).double().pow(2).sum()) for k in a) ** 0.5
    return diff, moved


def rebuilt_weights(cfg) -> dict[str, torch.Tensor]:
    """The weights training starts from, named as in a checkpoint (``model`` = G or GPT, ``model_1`` = D)."""
    from gsv_ray.rebuild import rebuild

    rebuilt = rebuild(cfg.init, base_g=cfg.base_g, base_d=cfg.base_d, task="train")
    models = [rebuilt.gpt] if rebuilt.stage == "gpt" else [rebuilt.generator, rebuilt.discriminator]
    return {f"model{f'_{i}' if i else ''}/{k}": v for i, sd in enumerate(models) for k, v in sd.items()}


def assert_same_weights(a: dict, b: dict, start: dict, rel: float = 1e-2) -> None:
    """Two runs' updates agree to ``rel`` of how far training moved the weights (L2, key biases
    aside), and training really moved them."""
    diff, moved = weight_gap(a, b, start)
    assert moved > 1e-3 and diff <= rel * moved, (diff / moved, diff, moved)


def _files(stage, gpt_init, sovits_files):
    return {"init": gpt_init} if stage == "gpt" else sovits_files


def _config(stage, gpt_init, sovits_files, data, out, **kw):
    base = dict(
        _files(stage, gpt_init, sovits_files),
        data=str(data),
        output_dir=str(out),
        max_steps=3,
        dropout=DROPOUT,
        val_fraction=0.0,
        val_every=1000,
        save_every=1000,
        warmup_steps=0,
        lr_scale=1.0,
        seed=5,
        num_workers=0,
        wandb_mode="disabled",
    )
    base.update(kw)
    return load_config(None, **base)


def _recipe(cfg, data):
    """The stage's recipe as ``train`` builds it (CPU, fp32), in process."""
    from gsv_ray.rebuild import rebuild
    from gsv_ray.train.loop import RECIPES, make_accelerator, open_run_experiment
    from gsv_ray.train.precision import Precision

    rebuilt = rebuild(cfg.init, base_g=cfg.base_g, base_d=cfg.base_d, task="train")
    acc = make_accelerator(cfg)
    experiment = open_run_experiment(data, rebuilt)
    return RECIPES[rebuilt.resolved.family](rebuilt, cfg, acc, experiment, Precision("no", acc.device))


def step_gradients(recipe) -> tuple[dict[str, torch.Tensor], list]:
    """The recipe's ``train_step`` on the first planned step's micro-batches (``recipe.plan`` +
    ``make_batch``, as the loader makes them); returns the gradient each optimizer stepped with
    (its first group's name -> every parameter's gradient, flattened), recorded by a step pre-hook
    (public ``Optimizer.register_step_pre_hook``) before the step and ``zero_grad``, and the micro-batches."""
    ds = recipe.dataset(recipe.experiment.names, min_items=UPSTREAM_MIN_ITEMS)  # as train() builds it
    micro = recipe.plan(ds, seed=recipe.cfg.seed).steps(0)[0]
    batches = [(recipe.make_batch([ds[j] for j in mb.indices], mb), mb) for mb in micro]
    seen: dict[str, torch.Tensor] = {}

    def record(opt, args, kwargs) -> None:
        params = [p for group in opt.param_groups for p in group["params"]]
        seen[opt.param_groups[0]["name"]] = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().double().flatten() for p in params]
        )

    hooks = [getattr(opt, "optimizer", opt).register_step_pre_hook(record) for opt in recipe.optimizers]
    try:
        recipe.train_step(batches, step=0)
    finally:
        for h in hooks:
            h.remove()
    return seen, micro


def relative_gaps(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per model: L2 of the difference / L2 of ``b``'s gradient."""
    assert a.keys() == b.keys() and a
    return {k: float((a[k] - b[k]).norm() / b[k].norm()) for k in b}


MODELS = {"gpt": {"gpt"}, "sovits": {"generator", "discriminator"}, "cfm": {"generator"}}


@pytest.mark.parametrize("stage", [pytest.param(s, marks=pytest.mark.slow) if s != "gpt" else s for s in MODELS])
def test_one_step_gradient_of_accumulation_is_the_bigger_batchs(
    stage, gpt_init, sovits_files, synth_v2, tmp_path, request
):
    """With dropout on (the GPT; SoVITS G with its reference encoder; the v4 DiT), one optimizer step of
    ``--grad-accum 2 --batch-size 2`` steps every model with the gradient of ``--batch-size 4`` on
    the same global batch, to :data:`GRAD_REL`."""
    if stage == "cfm":
        v4 = request.getfixturevalue("v4_inputs")
        files, data = {"init": str(v4["init"]), "base_g": str(v4["base"])}, v4["data"]
    else:
        files, data = _files(stage, gpt_init, sovits_files), synth_v2

    def gradients(name: str, **kw):
        cfg = load_config(
            None,
            **files,
            data=str(data),
            output_dir=str(tmp_path / name),
            max_steps=1,
            dropout=DROPOUT,
            val_fraction=0.0,
            warmup_steps=0,
            lr_scale=1.0,
            seed=5,
            **kw,
        )
        return step_gradients(_recipe(cfg, data))

    full, full_micro = gradients("full", batch_size=4, grad_accum=1)
    accum, accum_micro = gradients("accum", batch_size=2, grad_accum=2)
    batches = 5 if stage == "gpt" else 1  # the GPT's first step sums 5 global batches (upstream's cadence)
    assert [len(mb.indices) for mb in full_micro] == [4] * batches
    assert [len(mb.indices) for mb in accum_micro] == [2] * (2 * batches)
    for k in range(batches):  # each global batch split in two, in order
        assert sorted(full_micro[k].indices) == sorted(accum_micro[2 * k].indices + accum_micro[2 * k + 1].indices)
    assert set(full) == MODELS[stage]
    assert all(float(g.norm()) > 0 for g in full.values())
    gaps = relative_gaps(accum, full)
    assert all(gap <= GRAD_REL for gap in gaps.values()), gaps


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["gpt", "sovits"])
def test_accumulation_trains_like_the_bigger_batch(stage, gpt_init, sovits_files, synth_v2, tmp_path):
    """End to end through ``train()``: after 3 steps with dropout, the weights of ``2 x 2`` are those of
    ``4`` (to :data:`E2E_REL` of how far training moved them)."""

    def run(name, **kw):
        return train(
            _config(stage, gpt_init, sovits_files, synth_v2, tmp_path / name, **kw), progress=False, say=lambda s: None
        )

    full = run("full", batch_size=4, grad_accum=1)
    accum = run("accum", batch_size=2, grad_accum=2)
    assert full.steps == accum.steps == 3
    assert_same_weights(
        weights(full.last_checkpoint),
        weights(accum.last_checkpoint),
        rebuilt_weights(_config(stage, gpt_init, sovits_files, synth_v2, tmp_path / "x")),
        rel=E2E_REL[stage],
    )


def test_generator_loss_leaves_no_gradient_in_d(sovits_files, synth_v2, tmp_path):
    """After a step, D holds no gradient: G's adversarial loss went through a frozen D."""
    from gsv_ray.data.loader import MicroBatch

    recipe = _recipe(_config("sovits", None, sovits_files, synth_v2, tmp_path, max_steps=1, dropout=0.0), synth_v2)
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


def _ema_codebook_init(sovits_files, tmp_path) -> Path:
    """The v2 fixture export, re-saved as upstream saves it, with ``freeze_quantizer: false``."""
    from gsv_ray.io.safeload import safe_load
    from gsv_ray.io.writers import write_sovits_export

    obj = safe_load(sovits_files["init"]).obj
    config = dict(obj["config"])
    config["model"] = dict(config["model"], freeze_quantizer=False)
    return write_sovits_export(tmp_path / "ema_e1_s2.pth", obj["weight"], config=config, info=obj["info"], version="v2")


@pytest.mark.parametrize("flags", [("--grad-accum", "2"), ("--workers", "2")], ids=["accumulation", "workers"])
def test_ema_codebook_with_accumulation_or_workers_is_refused_in_one_line(flags, sovits_files, synth_v2, tmp_path):
    """``freeze_quantizer: false`` + ``--grad-accum 2`` would update the codebook 4 times per step (each
    micro-batch, twice), + ``--workers 2`` once per worker with DDP keeping rank 0's: exit 2, one line
    naming the init file and the fix, nothing written (the workers case before Ray starts)."""
    from gsv_ray.owned import RUN_LOCK
    from tests.conftest import run_cli

    init = _ema_codebook_init(sovits_files, tmp_path)
    before = init.read_bytes()
    out = tmp_path / "run"
    r = run_cli(
        "train",
        "--init",
        str(init),
        "--base",
        sovits_files["base_g"],
        "--base-d",
        sovits_files["base_d"],
        "--data",
        str(synth_v2),
        "--batch-size",
        "2",
        *flags,
        "--max-steps",
        "1",
        "-o",
        str(out),
        env={"GSV_RAY_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled"},
        in_process=True,
    )
    assert r.returncode == 2, (r.stdout, r.stderr)
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and str(init) in line, line
    assert "freeze_quantizer: false" in line and "--grad-accum 1 on one worker" in line, line
    assert ("--grad-accum 2" if flags[0] == "--grad-accum" else "2 processes") in line, line
    assert not [p for p in out.rglob("*") if p.name != RUN_LOCK] and init.read_bytes() == before  # the CLI's lock only
