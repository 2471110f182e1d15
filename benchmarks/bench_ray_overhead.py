"""What Ray costs over local mode, measured in one run.

Run: ``python benchmarks/bench_ray_overhead.py [--steps 150] [--rounds 5] [--schemas DIR]``. Prints:
  1. steady-state step time of `gsv-ray train --workers 1 --cpus-per-worker <cores>` (one Ray actor
     trains: launch.runs_in_actor) vs local mode (same model, batch, data, threads; medians from each
     run's metrics.jsonl after warm-up) — goal <= 1.05x. Each round runs local, Ray, local again: the
     Ray run is compared with the mean of the local runs around it (a machine speeding up or slowing
     down hits both sides), and the two local runs with each other (an A/A control: how far two runs
     of the *same* command differ on this machine, i.e. the precision of one round). Figures: the
     median of the rounds' ratios, and the ratio of the medians of every step of every run of each
     mode (pooled). Twice: torch on every core in both modes
     (Ray's own processes then take CPU from the training threads), and torch on one thread in both
     modes (a core left for Ray's processes: what the Ray path itself adds to a step); and local
     mode beside an idle local Ray (no job at all): what a running Ray costs a job that uses every
     core of the machine. (With Ray's default 1 CPU per worker, torch runs on 1 thread: Ray sets
     OMP_NUM_THREADS.)
  2. time from starting the command to the first training step, both modes, and for `gsv-ray tune`
     (the demo's inputs and search, 2 trials at once; goal: tune within 20 s);
  3. private memory per worker for a full-size v2 rebuild (export + base G + D, 361 MB of files):
     mapping the shared rebuild from the object store vs each worker loading and rebuilding itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _medium_gpt(d: Path) -> Path:
    from benchmarks.bench_step import _medium_gpt_export

    return _medium_gpt_export(d)


def run_cli(args: list[str], env: dict) -> tuple[float, list[dict]]:
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "gsv_ray", "train", *args], env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    out = Path(args[args.index("-o") + 1])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return t0, [x for x in rows if x["split"] == "train"]


IDLE_RAY = r"""
import sys, ray
ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
print("up", flush=True)
sys.stdin.read()  # until the benchmark closes our stdin
"""


@contextlib.contextmanager
def idle_ray(env: dict):
    """A local Ray started as ours is (``ray.init(address="local")``) with nothing to run."""
    p = subprocess.Popen([sys.executable, "-c", IDLE_RAY], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    try:
        assert p.stdout.readline().strip() == "up"
        time.sleep(3)  # its prestarted workers settle
        yield
    finally:
        p.stdin.close()
        p.wait(timeout=60)


def tune_first_step(d: Path, env: dict) -> tuple[float, float]:
    """(command start, first training step of any trial) of a 2-trial tune on the demo's inputs."""
    from gsv_ray.demo import make_demo_inputs

    inputs = make_demo_inputs(d / "demo")
    out = d / "tune"
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "gsv_ray", "tune", "--init", str(inputs["init"]),
                        "--base-d", str(inputs["base_d"]), "--data", str(inputs["data"]), "--max-steps", "4",
                        "--val-every", "2", "--batch-size", "4", "--num-samples", "2", "--max-concurrent", "2",
                        "--wandb-mode", "offline", "-o", str(out)], env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stdout[-3000:] + r.stderr[-3000:])
    firsts = [next(row["time"] for row in map(json.loads, p.read_text().splitlines()) if row["split"] == "train")
              for p in out.glob("trials/*/metrics.jsonl")]
    return t0, min(firsts)


MEMORY_PROBE = r"""
import json, sys, ray
from gsv_ray.rebuild import rebuild
from gsv_ray.distributed.shared import share, materialise

def anon():
    f = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
    return int(f["RssAnon"].split()[0]) / 1024

@ray.remote(num_cpus=1)
def shared_worker(shared):
    before = anon(); rb = materialise(shared)
    total = sum(float(t.sum()) for sd in rb.weights.values() for t in sd.values())  # touch every page
    return anon() - before

@ray.remote(num_cpus=1)
def own_worker(init, base_g, base_d):
    before = anon(); rb = rebuild(init, base_g=base_g, base_d=base_d)
    total = sum(float(t.sum()) for sd in rb.weights.values() for t in sd.values())
    return anon() - before

init, g, d = sys.argv[1:4]
ray.init(address="local", num_cpus=3, include_dashboard=False, logging_level="ERROR")
shared = share(rebuild(init, base_g=g, base_d=d))
a = ray.get([shared_worker.remote(shared) for _ in range(2)])
b = ray.get([own_worker.remote(init, g, d) for _ in range(2)])
print(json.dumps({"shared": a, "own": b}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)  # long enough to meet Ray's periodic work
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds of runs side by side (local, Ray, local again; the median ratio is the figure)")
    ap.add_argument("--schemas", default=str(ROOT / "tests/reference/gpt_sovits/schemas"))
    args = ap.parse_args()
    from gsv_ray.data.synthetic import make_synthetic_experiment
    from tests.support.schemafiles import SchemaFiles

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        env = {**os.environ, "GSV_RAY_CACHE": str(d / "cache"), "GSV_RAY_SCRATCH": str(d / "scratch"),
               "RAY_AUTH_MODE": "disabled"}
        data = make_synthetic_experiment(d / "exp", version="v2", num_utterances=24)
        gpt = _medium_gpt(d)
        common = ["--init", str(gpt), "--data", str(data), "--max-steps", str(args.steps), "--batch-size", "4",
                  "--val-fraction", "0", "--save-every", str(args.steps), "--val-every", str(10**6),
                  "--wandb-mode", "disabled"]
        cores = os.cpu_count() or 1
        one_thread = {**env, "OMP_NUM_THREADS": "1"}
        ratios: dict[str, list[float]] = {"all": [], "aa": [], "one": [], "idle": []}
        steps: dict[str, list[float]] = {"local": [], "ray": []}  # every step of every run, pooled
        firsts = []
        steady = lambda rows: [x["step_time"] for x in rows[args.warmup:]]  # noqa: E731 -- after warm-up
        for i in range(args.rounds):
            # (a) torch on every core in both modes (Ray sets OMP_NUM_THREADS to the worker's CPUs):
            # local, Ray, local again
            t_local, local = run_cli(common + ["-o", str(d / f"local{i}")], env)
            t_ray, ray_rows = run_cli(common + ["-o", str(d / f"ray{i}"), "--workers", "1",
                                               "--cpus-per-worker", str(cores)], env)
            _, local_b = run_cli(common + ["-o", str(d / f"local{i}b")], env)
            # (b) torch on one thread in both modes: a core is left for Ray's own processes
            _, local1 = run_cli(common + ["-o", str(d / f"local1-{i}")], one_thread)
            _, ray1 = run_cli(common + ["-o", str(d / f"ray1-{i}"), "--workers", "1", "--cpus-per-worker", "1"], env)
            # (c) local mode while an idle local Ray (no job at all) runs beside it
            with idle_ray(env):
                _, beside = run_cli(common + ["-o", str(d / f"beside{i}")], env)
            m_la, m_ray, m_lb, m1l, m1r, m_beside = (statistics.median(steady(rows)) for rows in
                                                     (local, ray_rows, local_b, local1, ray1, beside))
            m_local = (m_la + m_lb) / 2
            ratios["all"].append(m_ray / m_local)
            ratios["aa"].append(m_lb / m_la)
            ratios["one"].append(m1r / m1l)
            ratios["idle"].append(m_beside / m_local)
            steps["local"] += steady(local) + steady(local_b)
            steps["ray"] += steady(ray_rows)
            firsts.append((local[0]["time"] - t_local, ray_rows[0]["time"] - t_ray))
            print(f"  round {i + 1}: {cores} threads: local {m_la * 1000:.1f} ms, Ray {m_ray * 1000:.1f} ms, local "
                  f"{m_lb * 1000:.1f} ms -> {ratios['all'][-1]:.3f}x (local/local {ratios['aa'][-1]:.3f}x); "
                  f"1 thread: local {m1l * 1000:.1f} ms, Ray {m1r * 1000:.1f} ms -> {ratios['one'][-1]:.3f}x; "
                  f"local beside an idle Ray {m_beside * 1000:.1f} ms -> {ratios['idle'][-1]:.3f}x; "
                  f"first step local {firsts[-1][0]:.1f} s, Ray {firsts[-1][1]:.1f} s")
        span = lambda xs: f"{min(xs):.2f}-{max(xs):.2f}"  # noqa: E731
        pooled = statistics.median(steps["ray"]) / statistics.median(steps["local"])
        print(f"step time (GPT 6x256, batch 4, CPU), train --workers 1 / local over {args.rounds} rounds "
              f"(goal <= 1.05x): torch on all {cores} cores: median {statistics.median(ratios['all']):.3f}x "
              f"(rounds {span(ratios['all'])}), pooled steps {pooled:.3f}x; the same local command twice "
              f"(A/A): {statistics.median(ratios['aa']):.3f}x (rounds {span(ratios['aa'])}); on 1 thread, a "
              f"core left for Ray's processes: {statistics.median(ratios['one']):.3f}x (rounds "
              f"{span(ratios['one'])}); local mode beside an idle local Ray / local mode alone "
              f"{statistics.median(ratios['idle']):.3f}x (rounds {span(ratios['idle'])})")
        print(f"command to first step, median: local {statistics.median(f[0] for f in firsts):.1f} s, --workers 1 "
              f"{statistics.median(f[1] for f in firsts):.1f} s (goal: within 20 s)")
        t_tune, first = tune_first_step(d, env)
        print(f"gsv-ray tune (demo inputs, 2 trials at once): first training step {first - t_tune:.1f} s after "
              f"the command (goal <= 20 s)")

        sf = SchemaFiles(Path(args.schemas), d / "files")
        files = [sf.path("sovits-export", "v2"), sf.path("sovits-pretrained-g", "v2"), sf.path("sovits-pretrained-d", "v2")]
        r = subprocess.run([sys.executable, "-c", MEMORY_PROBE, *map(str, files)], env=env, capture_output=True,
                           text=True)
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
        mem = json.loads(r.stdout.strip().splitlines()[-1])
        size = sum(p.stat().st_size for p in files) / 2**20
        print(f"private memory per worker, full-size v2 rebuild ({size:.0f} MB of files, 398 MB fp32): shared via "
              f"object store {statistics.mean(mem['shared']):.0f} MB vs each worker rebuilding itself "
              f"{statistics.mean(mem['own']):.0f} MB")


if __name__ == "__main__":
    main()
