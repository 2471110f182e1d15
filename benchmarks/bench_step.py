"""Per-step time of gsv-ray's training loop next to a bare PyTorch loop, both stages, one run.

Run: ``python benchmarks/bench_step.py [--steps 30] [--fixtures DIR]``. Both loops train the same
model (SoVITS: GPT-SoVITS's own narrow v2 fixture export with its base G and D; GPT: a 6-layer,
256-wide text-to-semantic decoder saved as a GPT export — the 32-wide fixture GPT would measure
Python overhead, not training), on the same batches (the same synthetic
experiment, dataset, bucket sampler and collate, loaded from disk each step), with the same optimizer
and losses. The bare loop is plain torch: no Accelerate, no LR schedule, no checkpoints, no metrics.
Prints the median step time of each after warm-up and the ratio. Goal: <= 1.05x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def bare_gpt(rebuilt, ds, sampler, collate, steps: int, lr: float) -> list[float]:
    from gsv_ray.rebuild import build_models

    model = build_models(rebuilt.config)["gpt"]
    model.load_state_dict(rebuilt.gpt)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8)
    times, epoch = [], 0
    while len(times) < steps:
        sampler.set_epoch(epoch)
        for idx in sampler:
            t = time.perf_counter()
            b = collate([ds[i] for i in idx])
            out = model(*b.model_inputs())
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
            if len(times) == steps:
                break
        epoch += 1
    return times


def bare_sovits(rebuilt, ds, sampler, collate, steps: int, lr: float) -> list[float]:
    from gsv_ray.audio import AudioFrontend
    from gsv_ray.models.sovits.commons import slice_segments
    from gsv_ray.models.sovits.losses import discriminator_loss, generator_total_loss
    from gsv_ray.rebuild import build_models

    models = build_models(rebuilt.config)
    g, d = models["generator"], models["discriminator"]
    g.load_state_dict(rebuilt.generator)
    d.load_state_dict(rebuilt.discriminator)
    g.train(), d.train()
    s2 = rebuilt.config["s2"]
    fe = AudioFrontend.from_data_config(s2["data"])
    hop, seg = int(s2["data"]["hop_length"]), g.config.segment_frames
    opt_g = torch.optim.AdamW(g.parameters(), lr=lr, betas=(0.8, 0.99), eps=1e-9)
    opt_d = torch.optim.AdamW(d.parameters(), lr=lr, betas=(0.8, 0.99), eps=1e-9)
    times, epoch = [], 0
    while len(times) < steps:
        sampler.set_epoch(epoch)
        for idx in sampler:
            t = time.perf_counter()
            b = collate([ds[i] for i in idx])
            out = g(b.ssl, b.spec, b.spec_lengths, b.text, b.text_lengths, b.sv_emb)
            z, z_p, m_p, logs_p, m_q, logs_q = out.stats
            y_mel = slice_segments(fe.spec_to_mel(b.spec), out.ids_slice, seg)
            y_hat_mel = fe.mel(out.y_hat.squeeze(1))
            y = slice_segments(b.wav, out.ids_slice * hop, seg * hop)
            r, f, _, _ = d(y, out.y_hat.detach())
            loss_d = discriminator_loss(r, f)[0]
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            r, f, fr, fg = d(y, out.y_hat)
            loss = generator_total_loss(
                f, fr, fg, y_mel, y_hat_mel, z_p, logs_q, m_p, logs_p, out.z_mask, kl_ssl=out.kl_ssl
            ).total
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            times.append(time.perf_counter() - t)
            if len(times) == steps:
                break
        epoch += 1
    return times


def _medium_gpt_export(d: Path) -> Path:
    from gsv_ray.io.writers import write_gpt_export
    from gsv_ray.models.gpt import T2SConfig, Text2SemanticDecoder, to_upstream_keys
    from gsv_ray.resources import s1_config

    cfg = s1_config("v2")
    cfg["model"].update(embedding_dim=256, hidden_dim=256, head=8, n_layer=6, linear_units=1024)
    torch.manual_seed(0)
    model = Text2SemanticDecoder(T2SConfig.from_s1_config(cfg))
    return write_gpt_export(
        d / "GPT_weights_v2" / "medium-e1.ckpt", to_upstream_keys(model.state_dict()), config=cfg, info="GPT-e1"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5, help="first steps excluded from the median")
    ap.add_argument("--fixtures", default=str(ROOT / "tests/reference/gpt_sovits/fixtures"))
    args = ap.parse_args()
    from gsv_ray.data.synthetic import make_synthetic_experiment
    from gsv_ray.rebuild import rebuild
    from gsv_ray.train import load_config, train
    from gsv_ray.train.loop import RECIPES, make_accelerator
    from gsv_ray.train.precision import Precision

    fx = Path(args.fixtures)
    tmp = tempfile.TemporaryDirectory()
    gpt_file = _medium_gpt_export(Path(tmp.name))
    cases = {
        "gpt": {"init": str(gpt_file)},
        "sovits": {
            "init": str(fx / "SoVITS_weights_v2/gsvfix_e1_s2.pth"),
            "base_g": str(fx / "logs/gsvfix/logs_s2_v2/G_233333333333.pth"),
            "base_d": str(fx / "logs/gsvfix/logs_s2_v2/D_233333333333.pth"),
        },
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu, {args.steps} steps "
        f"(median after {args.warmup})"
    )
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        os.environ["GSV_RAY_CACHE"] = str(d / "cache")
        data = make_synthetic_experiment(d / "exp", version="v2", num_utterances=24)
        for stage, files in cases.items():
            cfg = load_config(
                None,
                **files,
                data=str(data),
                output_dir=str(d / f"run_{stage}"),
                max_steps=args.steps,
                batch_size=4,
                warmup_steps=0,
                val_fraction=0.0,
                val_every=10**9,
                save_every=10**9,
                log_every=1,
                num_workers=0,  # both load in-process: this compares the step
                optimizer="adamw" if stage == "gpt" else None,
            )  # the bare loop's: a step per batch
            ours: list[float] = []
            train(cfg, on_step=lambda s, m: ours.append(m["step_time"]), progress=False, say=lambda s: None)
            rebuilt = rebuild(cfg.init, base_g=cfg.base_g, base_d=cfg.base_d)
            acc = make_accelerator(cfg)
            recipe = RECIPES[stage](
                rebuilt,
                cfg,
                acc,
                __import__("gsv_ray.data.experiment", fromlist=["open_experiment"]).open_experiment(data, stage, "v2"),
                Precision(cfg.precision, acc.device),
            )
            ds = recipe.dataset(recipe.experiment.names)
            sampler = recipe.plan(ds, seed=cfg.seed).sampler  # global batches = batches of one process
            bare = (bare_gpt if stage == "gpt" else bare_sovits)(
                rebuilt, ds, sampler, recipe.collate, args.steps, cfg.peak_lr(stage)
            )
            o, b = statistics.median(ours[args.warmup :]), statistics.median(bare[args.warmup :])
            print(
                f"{stage:6s}: gsv-ray loop {o * 1000:8.1f} ms/step   bare torch {b * 1000:8.1f} ms/step   "
                f"ratio {o / b:.3f}x (goal <= 1.05x)"
            )


if __name__ == "__main__":
    main()
