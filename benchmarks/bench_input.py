"""Input pipeline throughput and how long a fast (GPU-speed) step waits for data.

For full-size v2 features (32 kHz wavs, HuBERT [1, 768, T], BERT [1024, phones]) and batches of 8:
1. batches/s the pipeline delivers (WAV decode, spectrogram, feature loads, collate) with 0, 1 and 2
   DataLoader worker processes, for SoVITS and GPT;
2. the ``data_wait`` share of a step when the model step takes ``--step-ms`` (default 150) of GPU
   time. The step is a sleep: while a GPU computes, the training process's CPU is free, which is
   what a sleep leaves to the loader workers. Measured with the default worker count
   (``default_loader_workers``: the process's CPUs minus one, at most 8).

Utterances are the synthetic generator's, tiled ``--tile`` times (default 4: ~8 s, a typical
GPT-SoVITS slice) so the audio work per item is realistic. Run: ``python benchmarks/bench_input.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import wave
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gsv_ray.data.experiment import HUBERT_DIR, WAV_DIR, open_experiment  # noqa: E402
from gsv_ray.data.gpt import GPTBucketSampler, GPTDataset  # noqa: E402
from gsv_ray.data.loader import (  # noqa: E402
    MicroBatchSource,
    PlannedSampler,
    StepPlan,
    available_cpus,
    default_loader_workers,
    make_loader,
)
from gsv_ray.data.sovits import (  # noqa: E402
    SoVITSBucketSampler,
    SoVITSDataset,
    SoVITSPadding,  # noqa: E402
)
from gsv_ray.data.synthetic import make_synthetic_experiment  # noqa: E402
from gsv_ray.train.gpt import gpt_micro_batch  # noqa: E402
from gsv_ray.train.sovits import SoVITSStep, sovits_micro_batch  # noqa: E402


def tile_experiment(root: Path, times: int) -> None:
    """Make every utterance ``times`` as long: wav samples and HuBERT frames repeated."""
    for wav_path in (root / WAV_DIR).iterdir():
        with wave.open(str(wav_path), "rb") as w:
            params, frames = w.getparams(), w.readframes(w.getnframes())
        with wave.open(str(wav_path), "wb") as w:
            w.setparams(params)
            w.writeframes(frames * times)
        hubert = root / HUBERT_DIR / f"{wav_path.name}.pt"
        ssl = torch.load(hubert, weights_only=True)
        n = (len(frames) // 2 * times) // 640
        torch.save(torch.cat([ssl] * times, dim=-1)[..., :n].clone(), hubert)


def plans(root: Path, batch: int):
    sov = SoVITSDataset(open_experiment(root, "sovits", "v2"))
    frames = [u.num_samples // 640 for u in sov.utterances]
    samples = [u.num_samples for u in sov.utterances]
    phones = [len(u.phone_ids) for u in sov.utterances]
    sov_plan = StepPlan(
        SoVITSBucketSampler(sov.lengths, batch, seed=0),
        world=1,
        rank=0,
        accum=1,
        context=lambda idx: SoVITSStep(
            sum(frames[i] for i in idx),
            SoVITSPadding(max(frames[i] for i in idx), max(samples[i] for i in idx), max(phones[i] for i in idx)),
        ),
    )
    gpt = GPTDataset(open_experiment(root, "gpt", "v2"))
    p = [len(u.phone_ids) for u in gpt.utterances]
    s = [len(u.semantic_ids) for u in gpt.utterances]
    gpt_plan = StepPlan(
        GPTBucketSampler(gpt.durations, batch, seed=0),
        world=1,
        rank=0,
        accum=1,
        context=lambda idx: (max(p[i] for i in idx), max(s[i] for i in idx)),
    )
    return {"sovits": (sov, sov_plan, sovits_micro_batch), "gpt": (gpt, gpt_plan, gpt_micro_batch)}


def run(ds, plan, make_batch, workers: int, epochs: int, step_s: float = 0.0):
    """Consume ``epochs`` epochs the way the training loop does (one iterator for the whole run);
    (batches/s from the second epoch on, per-batch waits, per-step times)."""
    planned = PlannedSampler()
    planned.start(plan, epoch=0)
    loader = make_loader(MicroBatchSource(ds, make_batch), planned, num_workers=workers, seed=0)
    per_epoch = sum(len(s) for s in plan.steps(0))
    waits, steps = [], []
    it = iter(loader)
    t0 = time.perf_counter()
    for k in range(epochs * per_epoch):
        if k == per_epoch:  # the first epoch pays for starting the workers: throughput from the second on
            t0 = time.perf_counter()
        t = time.perf_counter()
        next(it)
        waits.append(time.perf_counter() - t)
        if step_s:
            time.sleep(step_s)
        steps.append(time.perf_counter() - t)
    rate = (epochs - 1) * per_epoch / (time.perf_counter() - t0)
    del it, loader
    return rate, waits, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", type=int, default=96)
    ap.add_argument("--tile", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--step-ms", type=float, default=150.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        root = make_synthetic_experiment(Path(d) / "exp", version="v2", num_utterances=args.utterances)
        tile_experiment(root, args.tile)
        cases = plans(root, args.batch)
        mean_s = statistics.mean(u.num_samples for u in cases["sovits"][0].utterances) / 32000
        default = default_loader_workers(available_cpus())
        print(
            f"{available_cpus()} CPUs; {args.utterances} utterances of {mean_s:.1f} s mean, full-size v2 features; "
            f"batch {args.batch}; default loader workers here: {default}"
        )
        print("pipeline throughput (batches/s, one epoch after a warm-up epoch):")
        for stage, (ds, plan, make_batch) in cases.items():
            rates = [run(ds, plan, make_batch, w, epochs=2)[0] for w in (0, 1, 2)]
            print(f"  {stage:6s}  0 workers {rates[0]:6.1f}   1 worker {rates[1]:6.1f}   2 workers {rates[2]:6.1f}")
        print(f"data_wait share of a {args.step_ms:.0f} ms GPU-time step, {default} loader worker(s) (default):")
        for stage, (ds, plan, make_batch) in cases.items():
            _, waits, steps = run(ds, plan, make_batch, default, epochs=3, step_s=args.step_ms / 1000)
            skip = len(plan.steps(0))  # the first epoch includes worker start-up
            share = sum(waits[skip:]) / sum(steps[skip:])
            first = sum(waits[:skip]) / sum(steps[:skip])
            verdict = "ok" if share <= 0.05 else "ABOVE GOAL"
            print(
                f"  {stage:6s}  data_wait {100 * share:5.2f} % of step time (goal <= 5 %: {verdict}); "
                f"first epoch incl. worker start {100 * first:5.2f} %"
            )


if __name__ == "__main__":
    main()
