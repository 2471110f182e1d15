"""What keyed per-utterance dropout costs: one training step with keyed masks next to plain dropout.

Run: ``python benchmarks/keyed_dropout.py [--steps 20] [--batch-size 4]``. Builds the SoVITS (GPT-SoVITS's
narrow v2 fixture export with its base G and D) and GPT (the fixture GPT) recipes as ``train`` does, at
dropout 0.1, on a synthetic experiment, and times ``recipe.train_step`` on the same planned batches,
alternating keyed and plain steps (plain: ``utterance_dropout`` replaced by a no-op for this
measurement only, so every mask is drawn from the global RNG as ``nn.Dropout`` draws it). Prints the
median step time of each and the ratio, per stage, in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "reference" / "gpt_sovits" / "fixtures"
FILES = {
    "sovits": {
        "init": FIXTURES / "SoVITS_weights_v2/gsvfix_e1_s2.pth",
        "base_g": FIXTURES / "logs/gsvfix/logs_s2_v2/G_233333333333.pth",
        "base_d": FIXTURES / "logs/gsvfix/logs_s2_v2/D_233333333333.pth",
    },
    "gpt": {"init": FIXTURES / "GPT_weights_v2/gsvfix-e1.ckpt"},
}


def build_recipe(stage: str, data: Path, out: Path, batch_size: int):
    from gsv_ray.rebuild import rebuild
    from gsv_ray.train import load_config
    from gsv_ray.train.loop import RECIPES, make_accelerator, open_run_experiment
    from gsv_ray.train.precision import Precision

    files = {k: str(v) for k, v in FILES[stage].items()}
    cfg = load_config(
        None,
        **files,
        data=str(data),
        output_dir=str(out),
        max_steps=1,
        dropout=0.1,
        lr_scale=1e-6,
        warmup_steps=0,
        val_fraction=0.0,
        batch_size=batch_size,
        cpu=True,
    )
    rebuilt = rebuild(cfg.init, base_g=cfg.base_g, base_d=cfg.base_d, task="train")
    acc = make_accelerator(cfg, cpu=True)
    return RECIPES[rebuilt.resolved.family](
        rebuilt, cfg, acc, open_run_experiment(data, rebuilt), Precision("no", acc.device)
    )


def time_steps(stage: str, recipe, steps: int) -> tuple[list[float], list[float]]:
    """(keyed, plain) step times, alternating on the same batches after one warm-up step of each."""
    import gsv_ray.train.gpt as gpt_mod
    import gsv_ray.train.sovits as sovits_mod

    module = gpt_mod if stage == "gpt" else sovits_mod
    keyed_ctx = module.utterance_dropout
    ds = recipe.dataset(recipe.experiment.names)
    plan = recipe.plan(ds, seed=0).steps(0)
    batches = [[(recipe.make_batch([ds[j] for j in mb.indices], mb), mb) for mb in step] for step in plan]
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(steps + 1):
        for keyed in (True, False):
            # benchmark only: the recipe's own step with the keying switched off (plain nn.Dropout draws)
            module.utterance_dropout = keyed_ctx if keyed else (lambda *a, **k: contextlib.nullcontext())
            t = time.perf_counter()
            recipe.train_step(batches[i % len(batches)], step=i)
            if i:  # the first of each is warm-up
                times[keyed].append(time.perf_counter() - t)
    module.utterance_dropout = keyed_ctx
    return times[True], times[False]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    import torch

    from gsv_ray.data.synthetic import make_synthetic_experiment

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GSV_RAY_CACHE"] = str(Path(tmp) / "cache")
        data = make_synthetic_experiment(Path(tmp) / "exp", version="v2", num_utterances=16)
        print(
            f"CPU, {torch.get_num_threads()} threads, batch {args.batch_size}, dropout 0.1, "
            f"median of {args.steps} steps"
        )
        for stage in ("sovits", "gpt"):
            recipe = build_recipe(stage, data, Path(tmp) / stage, args.batch_size)
            keyed, plain = time_steps(stage, recipe, args.steps)
            k, p = statistics.median(keyed), statistics.median(plain)
            print(f"{stage:7s} keyed {k * 1e3:8.1f} ms   plain {p * 1e3:8.1f} ms   keyed/plain {k / p:.3f}")


if __name__ == "__main__":
    main()
