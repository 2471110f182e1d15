"""The cost of one validation next to the training steps between two validations (issue #26, item 5).

For full-size v2 SoVITS and the full-size v2 GPT (random weights in GPT-SoVITS's formats, built from
scratch by ``gpu_check.make_inputs``; no network), on ``--utterances`` held-out utterances (default 8)
of ~4 s (the synthetic experiment's utterances tiled twice), it prints:

* the time of one validation as the training loop calls it (``recipe.evaluate``: the training path's
  losses **and** the inference-path metrics), and of the training path's losses alone (the old cost);
* the time of a training step at the defaults (``--batch-size 4``; the GPT's ScaledAdam step sums 4
  batches, 5 for an epoch's first), measured over ``--steps`` real steps of ``train()`` (the first
  left out when there are more than one: it pays for warm-up) and extrapolated to ``--val-every``
  (default 50) steps;
* the validation's share of (50 steps + one validation). Goal: <= 20 %.

``--stages cfm``: the same for a full-size v4 generator (random weights, a fresh rank-32 LoRA as the
WebUI trains) on the v3/v4 validation (the CFM loss and the inference path, ``--cfm-eval-utterances``
= ``--utterances``). Its sampling is ``--cfm-eval-steps`` DiT passes per utterance; full-size passes
take tens of seconds each on a CPU, so the validation is measured at the ``--cfm-fit`` step counts
(default 1 and 3) and the line through them gives the time at each of ``--cfm-steps`` (4, 8, 16, 32).

W&B audio samples (SoVITS, only with tracking on) are not included. Run:
``python benchmarks/bench_eval.py [--steps 2] [--utterances 8] [--cpu-threads N] [--stages sovits,gpt]``.
The default measures 2 steps and 1 validation per stage: 5-9 minutes on a 2-core CPU (9 when shared
with other jobs; ``--stages gpt`` or ``sovits`` runs one stage). It runs on
CUDA when there is one (not yet tried on a GPU), else on the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.bench_input import tile_experiment  # noqa: E402
from benchmarks.gpu_check import make_inputs  # noqa: E402

GOAL = 0.20


def make_v4_base(root: Path) -> Path:
    """A full-size v4 base generator (``s2Gv4.pth``-like, random weights, fp16 "weight" + config): as
    ``--init`` alone it trains a fresh rank-32 LoRA, as the WebUI does."""
    from gsv_ray.atomic import atomic_write
    from gsv_ray.models.sovits.v3 import SoVITSV3Config, SoVITSV3Generator
    from gsv_ray.resources import s2_config

    torch.manual_seed(0)
    s2 = s2_config("v4")
    sd = SoVITSV3Generator(SoVITSV3Config.from_s2_config(s2, "v4")).state_dict()
    sd["quantizer.vq.layers.0._codebook.inited"].fill_(1.0)
    sd["quantizer.vq.layers.0._codebook.embed"].normal_()
    path = root / "pretrained" / "s2Gv4.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(
        path,
        lambda f: torch.save({"weight": {k: v.half() for k, v in sd.items()}, "config": s2, "info": "pretrained"}, f),
    )
    return path


def step_seconds(stage: str, inputs: dict[str, Path], out: Path, args) -> list[float]:
    """Wall time of each of ``args.steps`` real training steps at the defaults (no validation)."""
    from gsv_ray.train import train

    cfg = make_cfg(stage, inputs, out, args, max_steps=args.steps)
    times: list[float] = []
    train(cfg, on_step=lambda s, m: times.append(float(m["step_time"])), progress=False, say=lambda s: None)
    return times


def make_cfg(stage: str, inputs: dict[str, Path], out: Path, args, max_steps: int):
    from gsv_ray.train import load_config

    files = {
        "gpt": {"init": str(inputs["gpt"])},
        "cfm": {"init": str(inputs.get("v4"))},
        "sovits": {"init": str(inputs["sovits"]), "base_d": str(inputs["base_d"])},
    }[stage]
    extra = (
        {"cfm_eval_steps": args.cfm_eval_steps, "cfm_eval_utterances": args.utterances, "version": "v4"}
        if stage == "cfm"
        else {}
    )
    return load_config(
        None,
        **files,
        **extra,
        stage="gpt" if stage == "gpt" else "sovits",
        data=str(inputs["data"]),
        output_dir=str(out),
        max_steps=max_steps,
        batch_size=args.batch_size,
        warmup_steps=0,
        val_fraction=0.0,
        val_every=10**9,
        save_every=10**9,
        wandb_mode="disabled",
        num_workers=0,
        cpu=not torch.cuda.is_available(),
    )


def eval_seconds(stage: str, inputs: dict[str, Path], out: Path, args) -> tuple[float, float, dict[str, float]]:
    """(one ``evaluate`` as the loop calls it, the training-path losses alone, evaluate's metrics)
    on the first ``args.utterances`` utterances in ``args.batch_size`` batches."""
    from gsv_ray.rebuild import rebuild
    from gsv_ray.train.cfm import cfm_loss
    from gsv_ray.train.gpt import gpt_eval_losses
    from gsv_ray.train.loop import RECIPES, fixed_batches, make_accelerator, open_run_experiment
    from gsv_ray.train.precision import Precision
    from gsv_ray.train.sovits import sovits_eval_losses

    cfg = make_cfg(stage, inputs, out, args, max_steps=1)
    rebuilt = rebuild(cfg.rebuild_spec())
    acc = make_accelerator(cfg)
    recipe = RECIPES[rebuilt.resolved.family](
        rebuilt, cfg, acc, open_run_experiment(inputs["data"], rebuilt), Precision(cfg.precision, acc.device)
    )
    names = sorted(recipe.experiment.names)[: args.utterances]
    batches = fixed_batches(
        recipe.dataset(names), recipe.collate, math.ceil(len(names) / args.batch_size), args.batch_size, acc.device
    )
    if stage == "cfm":  # the CFM's sampling steps: measured at a few counts, fitted by a line
        recipe.cfg = dataclasses.replace(cfg, cfm_eval_steps=args.cfm_fit[0])  # warm-up (first calls pay more)
        recipe.evaluate(batches, cfg.seed)
        args.cfm_times = []
        for n in args.cfm_fit:
            recipe.cfg = dataclasses.replace(cfg, cfm_eval_steps=n)
            t = time.perf_counter()
            metrics = recipe.evaluate(batches, cfg.seed)
            args.cfm_times.append(time.perf_counter() - t)
        full = args.cfm_times[-1]
    else:
        t = time.perf_counter()
        metrics = recipe.evaluate(batches, cfg.seed)
        full = time.perf_counter() - t
    t = time.perf_counter()
    with torch.no_grad():
        if stage == "gpt":
            gpt_eval_losses(acc.unwrap_model(recipe.model).eval(), batches)
        elif stage == "cfm":
            g = acc.unwrap_model(recipe.g).eval()
            [cfm_loss(g, b, seed=cfg.seed, step=f"val{i}", shortcut=False) for i, b in enumerate(batches)]
        else:
            sovits_eval_losses(
                acc.unwrap_model(recipe.g).eval(), batches, recipe.frontend, recipe.c_mel, recipe.c_kl, cfg.seed
            )
    return full, time.perf_counter() - t, metrics


def report(stage: str, steps: list[float], full: float, losses_only: float, val_every: int) -> None:
    """Print one stage's figures and the share of a validation in (val_every steps + one validation)."""
    kept = steps[1:] if len(steps) > 1 else steps
    step = statistics.mean(kept)
    between = val_every * step
    print(
        f"{stage}: step {step:.2f} s (mean of {len(kept)} of {len(steps)} measured: "
        f"{', '.join(f'{s:.2f}' for s in steps)} s) -> {val_every} steps {between:.0f} s (extrapolated)"
    )
    for what, secs in (
        ("validation (training-path losses + inference path)", full),
        ("training-path losses alone (before #26)", losses_only),
    ):
        share = secs / (between + secs)
        verdict = "ok" if share <= GOAL else "ABOVE GOAL"
        print(
            f"  {what}: {secs:.2f} s = {100 * share:.1f} % of {val_every} steps + it "
            f"(goal <= {100 * GOAL:.0f} %: {verdict})"
        )


def cfm_report(steps: list[float], args) -> None:
    """The CFM's validation at each of ``args.cfm_steps`` sampling steps, from the line through the
    measured (steps, seconds) points (sampling is that many DiT passes; the rest does not change)."""
    xs, ys = args.cfm_fit, args.cfm_times
    slope = (ys[-1] - ys[0]) / (xs[-1] - xs[0])
    fixed = ys[0] - slope * xs[0]
    print(
        f"  measured: {', '.join(f'{x} step(s) {y:.1f} s' for x, y in zip(xs, ys))} -> {slope:.2f} s per sampling "
        f"step for {args.utterances} utterances + {fixed:.1f} s"
    )
    between = args.val_every * statistics.mean(steps[1:] if len(steps) > 1 else steps)
    for n in args.cfm_steps:
        secs = fixed + slope * n
        share = secs / (between + secs)
        print(
            f"  --cfm-eval-steps {n} x {args.utterances} utterances: {secs:.0f} s = {100 * share:.1f} % "
            f"(goal <= {100 * GOAL:.0f} %: {'ok' if share <= GOAL else 'ABOVE GOAL'})"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2, help="training steps measured per stage (default 2)")
    ap.add_argument("--utterances", type=int, default=8, help="held-out utterances (default 8)")
    ap.add_argument("--cpu-threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--val-every", type=int, default=50, help="steps between validations (gsv-ray's default 50)")
    ap.add_argument("--batch-size", type=int, default=4, help="gsv-ray's default 4")
    ap.add_argument("--stages", default="sovits,gpt", help="sovits, gpt and/or cfm (full-size v4)")
    ap.add_argument("--cfm-fit", default="1,3", help="cfm: sampling steps measured (default 1,3)")
    ap.add_argument("--cfm-steps", default="4,8,16,32", help="cfm: sampling steps reported from the fit")
    args = ap.parse_args()
    args.cfm_fit, args.cfm_steps = ([int(x) for x in a.split(",")] for a in (args.cfm_fit, args.cfm_steps))
    args.cfm_eval_steps = args.cfm_fit[-1]
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    with tempfile.TemporaryDirectory(prefix="bench_eval-") as tmp:
        tmp = Path(tmp)
        os.environ["GSV_RAY_CACHE"] = str(tmp / "cache")
        os.environ["GSV_RAY_SCRATCH"] = str(tmp / "scratch")
        os.environ["WANDB_MODE"] = "disabled"
        inputs = make_inputs(tmp / "inputs", utterances=max(24, args.utterances))
        if "cfm" in args.stages:
            inputs["v4"] = make_v4_base(tmp / "inputs")
        tile_experiment(inputs["data"], 2)  # ~4 s utterances
        from gsv_ray.data.experiment import open_experiment
        from gsv_ray.data.sovits import SoVITSDataset

        utts = SoVITSDataset(open_experiment(inputs["data"], "sovits", "v2")).utterances
        secs = statistics.mean(u.num_samples for u in utts) / 32000
        print(
            f"bench_eval: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads, "
            f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}; full-size models; "
            f"{args.utterances} held-out utterances of {secs:.1f} s mean; batch {args.batch_size}; "
            f"{args.steps} step(s) measured per stage, extrapolated to --val-every {args.val_every}",
            flush=True,
        )
        for stage in args.stages.split(","):
            steps = step_seconds(stage, inputs, tmp / f"run-{stage}", args)
            full, losses_only, metrics = eval_seconds(stage, inputs, tmp / f"eval-{stage}", args)
            report(stage, steps, full, losses_only, args.val_every)
            if stage == "cfm":
                cfm_report(steps, args)
            shown = {k: v for k, v in metrics.items() if k in ("eos_rate", "len_ratio", "mel_dist")}
            print(
                f"  (metrics logged: {', '.join(sorted(k for k in metrics if '/' not in k))}; random weights: "
                f"{', '.join(f'{k} {v:.2f}' for k, v in shown.items())})",
                flush=True,
            )


if __name__ == "__main__":
    main()
