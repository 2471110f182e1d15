"""The LR schedule: exact warmup, decay, and lr_scale applied to every optimizer group."""

from __future__ import annotations

import math

import pytest

from gsv_ray.train import load_config, train
from gsv_ray.train.schedule import Schedule


def test_schedule_values():
    s = Schedule(warmup_steps=4, warmup_start=0.2, decay="cosine", total_steps=14, steps_per_epoch=5, min_lr_ratio=0.1)
    assert [s.factor(i) for i in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert s.factor(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert s.factor(14) == pytest.approx(0.1) and s.factor(100) == pytest.approx(0.1)
    e = Schedule(
        warmup_steps=0, warmup_start=0.0, decay="exponential", total_steps=100, steps_per_epoch=10, lr_decay=0.9
    )
    assert e.factor(0) == 1.0 and e.factor(10) == pytest.approx(0.9) and e.factor(25) == pytest.approx(0.9**2.5)
    assert Schedule(3, 0.0, "constant", 10, 1).factor(0) == 0.0


def _lrs(cfg):
    rows = []
    train(
        cfg,
        on_step=lambda step, m: rows.append({k: v for k, v in m.items() if k.startswith("lr/")}),
        progress=False,
        say=lambda s: None,
    )
    return rows


@pytest.mark.slow
def test_logged_lr_follows_warmup_exactly_gpt(gpt_init, synth_v2, tmp_path):
    cfg = load_config(
        None,
        init=gpt_init,
        data=str(synth_v2),
        output_dir=str(tmp_path / "run"),
        max_steps=8,
        lr_scale=0.5,
        warmup_steps=5,
        warmup_start=0.1,
        decay="constant",
        val_every=100,
        save_every=100,
    )
    lrs = [r["lr/gpt"] for r in _lrs(cfg)]
    peak = 0.002 * 0.5
    want = [peak * (0.1 + 0.9 * i / 5) for i in range(5)] + [peak] * 3
    assert lrs == pytest.approx(want, rel=1e-12)


@pytest.mark.slow
def test_lr_scale_scales_every_sovits_group(sovits_files, synth_v2, tmp_path):
    def run(scale, out):
        cfg = load_config(
            None,
            **sovits_files,
            data=str(synth_v2),
            output_dir=str(tmp_path / out),
            max_steps=3,
            lr_scale=scale,
            warmup_steps=2,
            warmup_start=0.5,
            val_every=100,
            save_every=100,
        )
        return _lrs(cfg)

    full, half = run(1.0, "a"), run(0.5, "b")
    assert set(full[0]) == {"lr/generator", "lr/generator_text", "lr/discriminator"}
    for a, b in zip(full, half):
        for k in a:
            assert b[k] == pytest.approx(a[k] * 0.5, rel=1e-12)
        assert a["lr/generator_text"] == pytest.approx(a["lr/generator"] * 0.4, rel=1e-12)  # text_low_lr_rate
    assert full[0]["lr/generator"] == pytest.approx(1e-4 * 0.5)  # warmup_start x peak
    assert full[1]["lr/generator"] == pytest.approx(1e-4 * 0.75)
    assert full[2]["lr/discriminator"] == pytest.approx(1e-4)  # warmup done; decay starts from the peak
