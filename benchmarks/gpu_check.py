"""GPU check: full-size training of both stages on one CUDA GPU, locally and on one Ray worker.

Run: ``python benchmarks/gpu_check.py`` on a machine with CUDA (no network needed; < 8 min on one
H200). It builds full-size GPT-SoVITS v2 inputs from scratch (a SoVITS export + base D, a GPT
export, a synthetic experiment folder with real-size features), then trains each stage for
``--steps`` optimizer steps at batch ``--batch-size`` in three modes: local with the defaults
(``--precision`` not given: fp16 with TF32 on CUDA, as upstream; GPT with ScaledAdam), local bf16, and
one Ray Train worker with one GPU in bf16. One row per run: samples/s and step time (medians after
warm-up), the share of step time spent waiting for data, peak GPU memory (local runs; "n/a" on Ray,
whose worker does not report it), whether every loss was finite and whether the loss fell (mean of
the first 5 steps vs the last 5), the run's non-step time (rebuild, build, checkpoint, export; for
Ray: wall time minus steps, Ray start-up included) and wall time. Also prints torch/CUDA versions,
the GPU and NCCL availability. A failed run prints one line and the next run goes on; exit status 1
if any run failed. With ``$OUT`` set, the table is also written to ``$OUT/gpu_check.json``.

Without CUDA it prints one line and exits 0, unless ``--cpu-smoke``: then the same code paths run
on CPU with 2 steps at batch 2 and narrowed models (full-size SoVITS takes minutes per fp16 step on
a CPU): it checks the script itself, not the numbers. ``--stages`` / ``--modes`` pick a subset.
The table is printed again at the end, after Ray's log lines.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)  # Ray workers

import torch  # noqa: E402

COLUMNS = [
    ("stage", 7),
    ("mode", 13),
    ("samples/s", 10),
    ("step ms", 9),
    ("data wait %", 12),
    ("peak GiB", 9),
    ("loss finite", 12),
    ("loss falling", 13),
    ("non-step s", 11),
    ("wall s", 8),
]


def make_inputs(root: Path, utterances: int, narrow: bool = False) -> dict[str, Path]:
    """Full-size v2 files in GPT-SoVITS's formats (random weights) and a synthetic experiment.
    ``narrow``: the demo's narrowed widths (CPU smoke only: full size takes minutes per CPU step)."""
    from gsv_ray.atomic import atomic_write
    from gsv_ray.data.synthetic import make_synthetic_experiment
    from gsv_ray.io.writers import write_gpt_export, write_sovits_export
    from gsv_ray.models.gpt import T2SConfig, Text2SemanticDecoder, to_upstream_keys
    from gsv_ray.models.sovits import MultiPeriodDiscriminator, SoVITSConfig, SoVITSGenerator
    from gsv_ray.resources import s1_config, s2_config

    torch.manual_seed(0)
    s2, s1 = s2_config("v2"), s1_config("v2")
    s2.update(name="gpucheck", version="v2")
    narrowed = {}
    if narrow:
        s2["model"].update(
            inter_channels=32,
            hidden_channels=32,
            filter_channels=64,
            n_layers=2,
            upsample_initial_channel=32,
            gin_channels=32,
        )
        s1["model"].update(embedding_dim=64, hidden_dim=64, head=4, n_layer=2, linear_units=256)
        narrowed = dict(mrte_hidden_channels=32, ref_hidden_channels=32, kmeans_iters=1)
    sd = SoVITSGenerator(SoVITSConfig.from_s2_config(s2, "v2", **narrowed)).state_dict()
    sd["quantizer.vq.layers.0._codebook.inited"].fill_(1.0)  # a trained model's codebook is initialised
    sd["quantizer.vq.layers.0._codebook.embed"].normal_()
    sovits = write_sovits_export(
        root / "SoVITS_weights_v2" / "gpucheck_e8_s200.pth", sd, config=s2, info="8epoch_200iteration", version="v2"
    )
    base_d = root / "pretrained" / "s2D_gpucheck.pth"
    d_sd = MultiPeriodDiscriminator("v2", **({"width_divisor": 32} if narrow else {})).state_dict()
    atomic_write(base_d, lambda f: torch.save({"weight": d_sd}, f))
    gpt_sd = to_upstream_keys(Text2SemanticDecoder(T2SConfig.from_s1_config(s1)).state_dict())
    gpt = write_gpt_export(root / "GPT_weights_v2" / "gpucheck-e15.ckpt", gpt_sd, config=s1, info="GPT-e15")
    data = make_synthetic_experiment(root / "logs" / "gpucheck", version="v2", num_utterances=utterances)
    return {"sovits": Path(sovits), "base_d": base_d, "gpt": Path(gpt), "data": data}


def make_cfg(stage: str, precision: str, inputs: dict[str, Path], out: Path, args, cpu: bool):
    from gsv_ray.train.config import load_config

    files = (
        {"init": str(inputs["gpt"])}
        if stage == "gpt"
        else {"init": str(inputs["sovits"]), "base_d": str(inputs["base_d"])}
    )
    return load_config(
        None,
        **files,
        stage=stage,
        data=str(inputs["data"]),
        output_dir=str(out),
        max_steps=args.steps,
        batch_size=args.batch_size,
        precision=None if precision == "default" else precision,
        lr_scale=1.0,
        warmup_steps=0,
        val_fraction=0.0,
        val_every=10**9,
        save_every=10**9,
        wandb_mode="disabled",
        cpu=cpu,
    )


def summarize(
    stage: str, mode: str, steps: list[dict], warmup: int, peak: float | None, non_step: float, wall: float
) -> dict:
    if not steps:
        raise RuntimeError("no training steps were recorded")
    after = steps[warmup:] if len(steps) > warmup else steps
    losses = [float(m["loss"]) for m in steps]
    k = min(5, max(1, len(losses) // 2))
    first, last = statistics.fmean(losses[:k]), statistics.fmean(losses[-k:])
    wait = sum(m["data_wait"] for m in after) / max(1e-9, sum(m["step_time"] for m in after))
    row = {
        "stage": stage,
        "mode": mode,
        "steps": len(steps),
        "samples_per_s": statistics.median(m["samples_per_s"] for m in after),
        "step_ms": 1000 * statistics.median(m["step_time"] for m in after),
        "data_wait_pct": 100 * wait,
        "peak_gib": peak,
        "loss_finite": all(math.isfinite(x) for x in losses),
        "loss_falling": last < first,
        "loss_first": first,
        "loss_last": last,
        "non_step_s": non_step,
        "wall_s": wall,
        "error": None,
    }
    if "loss_scale" in steps[-1]:
        row["loss_scale_last"] = float(steps[-1]["loss_scale"])
    return row


def run_local(stage: str, precision: str, inputs, out: Path, args, cuda: bool) -> dict:
    from gsv_ray.train.loop import train

    cfg = make_cfg(stage, precision, inputs, out, args, cpu=not cuda)
    steps: list[dict] = []
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = train(cfg, on_step=lambda s, m: steps.append(dict(m)), progress=False, say=lambda s: None)
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    non_step = sum(v for k, v in result.timings.items() if k != "steps")
    row = summarize(stage, f"local {precision}", steps, args.warmup, peak, non_step, wall)
    row.update(
        timings=result.timings,
        untimed_s=wall - sum(result.timings.values()),  # outside every phase
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        matmul_precision=torch.get_float32_matmul_precision(),
    )
    return row


def run_ray(stage: str, inputs, out: Path, args, cuda: bool) -> dict:
    import ray

    from gsv_ray.distributed.launch import RayOptions, train_on_ray
    from gsv_ray.track.metrics import read_metrics

    cpus = os.cpu_count() or 1
    if not ray.is_initialized():
        import logging

        ray.init(
            address="local",
            num_cpus=cpus,
            num_gpus=1 if cuda else 0,
            include_dashboard=False,
            log_to_driver=True,
            logging_level=logging.WARNING,
        )
    cfg = make_cfg(stage, "bf16", inputs, out, args, cpu=not cuda)
    opts = RayOptions(workers=1, gpus_per_worker=1 if cuda else 0, cpus_per_worker=max(1, min(8, cpus - 2)))
    t0 = time.perf_counter()
    train_on_ray(cfg, opts, say=lambda s: None)
    wall = time.perf_counter() - t0
    steps = [r for r in read_metrics(out / "metrics.jsonl", split="train") if "step_time" in r]
    return summarize(stage, "ray 1w bf16", steps, args.warmup, None, wall - sum(m["step_time"] for m in steps), wall)


def fmt(row: dict, key: str) -> str:
    v = row.get(key)
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def print_row(row: dict) -> None:
    if row.get("error"):
        print(f"{row['stage']:<7} {row['mode']:<11} FAILED: {row['error']}", flush=True)
        return
    keys = [
        "stage",
        "mode",
        "samples_per_s",
        "step_ms",
        "data_wait_pct",
        "peak_gib",
        "loss_finite",
        "loss_falling",
        "non_step_s",
        "wall_s",
    ]
    print(" ".join(f"{fmt(row, k):<{w}}" for k, (_, w) in zip(keys, COLUMNS)), flush=True)


def environment() -> dict:
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "nccl_available": dist.is_available() and dist.is_nccl_available(),
        "nccl_version": ".".join(map(str, torch.cuda.nccl.version())) if cuda and dist.is_nccl_available() else None,
        "bf16_supported": torch.cuda.is_bf16_supported() if cuda else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="no CUDA: run every path on CPU with a few steps")
    ap.add_argument("--steps", type=int, help="optimizer steps per run (default 40; 2 with --cpu-smoke)")
    ap.add_argument("--batch-size", type=int, help="default 8; 2 with --cpu-smoke")
    ap.add_argument("--warmup", type=int, help="first steps left out of the medians (default 5; 1 with --cpu-smoke)")
    ap.add_argument("--stages", default="sovits,gpt")
    ap.add_argument("--modes", default="default,bf16,ray", help="any of default, bf16, fp16, ray")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_smoke:
        print("gpu_check: no CUDA device here; nothing to check (use --cpu-smoke to test the script on CPU)")
        return 0
    smoke = not cuda
    args.steps = args.steps or (2 if smoke else 40)
    args.batch_size = args.batch_size or (2 if smoke else 8)
    args.warmup = args.warmup if args.warmup is not None else (1 if smoke else 5)

    env = environment()
    print("gpu_check: " + ", ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    print(
        f"gpu_check: {'CPU SMOKE (numbers are meaningless) ' if smoke else ''}{args.steps} steps, batch "
        f"{args.batch_size}, medians after {args.warmup} warm-up steps, {'NARROW' if smoke else 'full-size'} v2 "
        "models",
        flush=True,
    )
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        tmp = Path(tmp)
        os.environ["GSV_RAY_CACHE"] = str(tmp / "cache")
        os.environ["GSV_RAY_SCRATCH"] = str(tmp / "scratch")
        os.environ["WANDB_MODE"] = "disabled"
        t0 = time.perf_counter()
        inputs = make_inputs(tmp / "inputs", utterances=max(16 if smoke else 48, 2 * args.batch_size), narrow=smoke)
        print(f"gpu_check: inputs built in {time.perf_counter() - t0:.1f} s", flush=True)
        print(" ".join(f"{name:<{w}}" for name, w in COLUMNS), flush=True)
        for stage in args.stages.split(","):
            for mode in args.modes.split(","):
                out = tmp / "runs" / f"{stage}-{mode}"
                try:
                    row = (
                        run_ray(stage, inputs, out, args, cuda)
                        if mode == "ray"
                        else run_local(stage, mode, inputs, out, args, cuda)
                    )
                except BaseException as e:  # noqa: BLE001 - one line per failure, then the next run
                    if isinstance(e, KeyboardInterrupt):
                        raise
                    first = (str(e).strip().splitlines() or [""])[0][:300]
                    row = {
                        "stage": stage,
                        "mode": "ray 1w bf16" if mode == "ray" else f"local {mode}",
                        "error": f"{type(e).__name__}: {first}",
                        "traceback": traceback.format_exc(),
                    }
                rows.append(row)
                print_row(row)
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except ImportError:
            pass
    print(
        "\ngpu_check summary (" + ", ".join(f"{k} {env[k]}" for k in ("gpu", "torch", "cuda", "nccl_available")) + ")"
    )
    print(" ".join(f"{name:<{w}}" for name, w in COLUMNS))  # again: Ray's log lines may have pushed it away
    for row in rows:
        print_row(row)
    failed = [r for r in rows if r.get("error")]
    print(f"gpu_check: {len(rows) - len(failed)}/{len(rows)} runs passed", flush=True)
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "gpu_check.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "environment": env,
                    "smoke": smoke,
                    "steps": args.steps,
                    "batch_size": args.batch_size,
                    "warmup": args.warmup,
                    "runs": rows,
                },
                indent=1,
            )
        )
        print(f"gpu_check: wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
