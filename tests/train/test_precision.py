"""fp16: both optimizers of a GAN step share one loss scaler with one update per iteration (upstream's
s2_train.py), on CPU where torch runs fp16 autocast and GradScaler; bf16 trains with finite losses."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gsv_ray.track import read_metrics
from gsv_ray.train import load_config, train
from gsv_ray.train.common import frozen
from gsv_ray.train.precision import Precision


def test_one_scaler_update_per_iteration_whatever_overflows():
    """D overflows: D's step is skipped, G's is taken, and the scale halves once (not twice, as two
    per-optimizer updates would make it)."""
    torch.manual_seed(0)
    g, d = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)
    opt_g, opt_d = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (g, d))
    prec = Precision("fp16", torch.device("cpu"))
    assert prec.scale == 65536.0
    g0, d0 = g.weight.detach().clone(), d.weight.detach().clone()
    x = torch.randn(8, 4)
    with prec.autocast():
        y = g(x)
        d_out = d(y.detach())
    assert y.dtype == torch.float16
    prec.backward(d_out.float().sum() * float("inf"))  # D's gradients are inf
    prec.step(opt_d, d.parameters())
    with frozen(d), prec.autocast():  # as the SoVITS recipe does: G's loss leaves nothing in D
        g_loss = d(y).float().pow(2).mean()
    prec.backward(g_loss)
    norm_g = prec.step(opt_g, g.parameters())
    prec.update()
    assert torch.equal(d.weight, d0)  # skipped
    assert not torch.equal(g.weight, g0) and math.isfinite(float(norm_g))
    assert prec.scale == 32768.0  # one halving for the iteration
    assert all(p.grad is None for p in (*g.parameters(), *d.parameters()))


def _scaler_trace(rows: list[dict]) -> int:
    """The growth tracker that one GradScaler.update() per step implies for the logged scales."""
    tracker = 0
    for prev, cur in zip([65536.0] + [r["loss_scale"] for r in rows], [r["loss_scale"] for r in rows]):
        assert cur in (prev, prev / 2), (prev, cur)  # at most one halving per iteration
        tracker = 0 if cur < prev else tracker + 1
    return tracker


@pytest.mark.slow
def test_sovits_fp16_trains_with_one_update_per_step(sovits_files, synth_v2, tmp_path):
    cfg = load_config(
        None,
        **sovits_files,
        data=str(synth_v2),
        output_dir=str(tmp_path / "fp16"),
        max_steps=3,
        batch_size=2,
        grad_accum=2,
        precision="fp16",
        val_fraction=0.0,
        save_every=3,
        num_workers=0,
        wandb_mode="disabled",
    )
    from gsv_ray.train.tracking import Tracking

    with Tracking.for_run(cfg) as tracking:
        r = train(cfg, tracking=tracking, progress=False, say=lambda s: None)
    rows = [x for x in read_metrics(r.run_dir / "metrics.jsonl") if x["split"] == "train"]
    assert [x["step"] for x in rows] == [1, 2, 3]
    assert all(math.isfinite(x["loss_mel"]) for x in rows)
    # the scaler's own state in the checkpoint
    state = json.loads((r.last_checkpoint / "state.json").read_text())["scaler"]
    assert state["_growth_tracker"] == _scaler_trace(rows) and state["scale"] == rows[-1]["loss_scale"]


def test_gpt_bf16_trains(gpt_init, synth_v2, tmp_path):
    cfg = load_config(
        None,
        init=gpt_init,
        data=str(synth_v2),
        output_dir=str(tmp_path / "bf16"),
        max_steps=3,
        batch_size=2,
        grad_accum=2,
        precision="bf16",
        val_fraction=0.0,
        num_workers=0,
        wandb_mode="disabled",
    )
    losses: list[float] = []
    r = train(cfg, on_step=lambda s, m: losses.append(m["loss"]), progress=False, say=lambda s: None)
    assert r.steps == 3 and len(losses) == 3 and all(math.isfinite(v) for v in losses)
