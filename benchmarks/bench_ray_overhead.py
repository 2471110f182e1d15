"""What Ray costs over local mode, measured in one run.

Run: ``python benchmarks/bench_ray_overhead.py [--cycles 30] [--slice 2] [--schemas DIR]``. Prints:
  1. steady-state step time of `gsv-ray train --workers 1 --cpus-per-worker <cores>` (one Ray actor
     trains: launch.runs_in_actor) vs local mode (same model, batch, data, threads) — goal <= 1.05x.
     The two runs are **interleaved**: both are started (one at a time, each alone on the machine) and
     then take turns, ``--slice`` seconds each for ``--cycles`` cycles, the other one frozen whole
     (SIGSTOP/SIGCONT to every process of its session: the CLI, and for Ray its GCS, raylet, agents, the
     training actor and the data workers). On a shared VM the speed of the host drifts by ~20 % on a
     scale of seconds to minutes; runs one after the other measured that drift (two runs of the *same*
     local command differed by 0.85-1.20x), turns of a few seconds share it. A step counts when it
     began and ended inside its run's turn, less the first of each turn (caches cold after the other
     run). Figures: the median over cycles of (the Ray turn's median step / the adjacent local turn's),
     and the ratio of the medians of every counted step (pooled). Four pairs, each the same way:
       - local vs local (A/A control: what the method resolves; should be 1.00x),
       - local vs Ray, torch on every core in both modes (Ray's own processes then take CPU from the
         training threads) — the goal,
       - torch on one thread in both modes (a core left for Ray's processes: what the Ray path itself
         adds to a step; with Ray's default 1 CPU per worker torch runs on 1 thread, Ray sets
         OMP_NUM_THREADS),
       - local mode alone vs local mode beside an idle local Ray (no job at all, frozen with it): what a
         running Ray costs a job that uses every core.
     Each run ends by Ctrl-C to its process group (exit 130, as a user stops it).
  2. time from starting the command to the first training step, both modes (each started alone), and
     for `gsv-ray tune` (the demo's inputs and search, 2 trials at once; goal: tune within 20 s);
  3. private memory per worker for a full-size v2 rebuild (export + base G + D, 361 MB of files):
     mapping the shared rebuild from the object store vs each worker loading and rebuilding itself.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.procs import session_processes  # noqa: E402 -- after the path: the repository's tests


def _medium_gpt(d: Path) -> Path:
    from benchmarks.bench_step import _medium_gpt_export

    return _medium_gpt_export(d)


def signal_sessions(sessions: list[int], sig: int) -> None:
    """``sig`` to every process of these sessions (each run, and the idle Ray, is started in its own)."""
    for session in sessions:
        for pid in session_processes(session):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


@dataclass
class Run:
    """One `gsv-ray train` command into ``out``, frozen and thawed as a whole (with ``beside``: the
    sessions of other processes that belong to its side, e.g. an idle Ray)."""

    name: str
    args: list[str]  # all but -o
    env: dict
    out: Path
    metrics: tuple[Path, str]  # (folder, glob) of the metrics.jsonl that grows while it runs (Ray: the actor's)
    beside: list[int] = field(default_factory=list)
    turns: list[tuple[float, float]] = field(default_factory=list)

    def start(self) -> None:
        self.log = self.out.with_name(self.out.name + ".console")  # a file, not a pipe: nothing blocks on it
        self.t0 = time.time()
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gsv_ray", "train", *self.args, "-o", str(self.out)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # its own process group: Ctrl-C reaches it alone

    def console(self) -> str:
        return self.log.read_text()[-3000:]

    def rows(self) -> list[dict]:
        files = sorted(self.metrics[0].glob(self.metrics[1]))
        if not files:
            return []
        lines = files[0].read_text().splitlines()
        return [r for r in map(json.loads, (x for x in lines if x.endswith("}"))) if r["split"] == "train"]

    def wait_steps(self, n: int) -> None:
        while len(self.rows()) < n:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} ended before training:\n{self.console()}")
            time.sleep(0.2)

    def freeze(self) -> None:
        signal_sessions([self.proc.pid, *self.beside], signal.SIGSTOP)

    def thaw(self) -> None:
        signal_sessions([self.proc.pid, *self.beside], signal.SIGCONT)

    def turn(self, seconds: float) -> None:
        self.thaw()
        t0 = time.time()
        time.sleep(seconds)
        self.freeze()
        self.turns.append((t0, time.time()))

    def stop(self) -> None:
        """Ctrl-C, the way a user stops a run (our CLI exits 130)."""
        self.thaw()
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            stuck = subprocess.run(
                ["ps", "-o", "pid,stat,wchan:24,args", "--sid", str(self.proc.pid)], capture_output=True, text=True
            )
            signal_sessions([self.proc.pid], signal.SIGKILL)
            raise SystemExit(
                f"{self.name} did not stop 120 s after Ctrl-C:\n{stuck.stdout}\n{self.console()}"
            ) from None
        if self.proc.returncode not in (0, 130):
            raise SystemExit(f"{self.name}: exit {self.proc.returncode}:\n{self.console()}")

    def per_turn(self, rows: list[dict]) -> list[list[float]]:
        """Step times of the steps that began and ended inside each turn, less each turn's first."""
        return [
            [r["step_time"] for r in rows if r["time"] - r["step_time"] >= t0 and r["time"] <= t1][1:]
            for t0, t1 in self.turns
        ]


@dataclass(frozen=True)
class Pair:
    ratio: float  # median over cycles of b's turn median / a's adjacent turn median
    lo: float
    hi: float
    pooled: float  # median of every counted step of b / of a
    ms_a: float
    ms_b: float
    first_a: float  # command to first training step, s
    first_b: float


def interleaved(a: Run, b: Run, cycles: int, seconds: float) -> Pair:
    """Start b, then a (each alone: the other is frozen), then alternate turns; a's turn first in even
    cycles, b's in odd ones, so each pair of turns is adjacent in time."""
    b.start()
    b.wait_steps(10)
    b.freeze()
    a.start()
    a.wait_steps(10)
    a.freeze()
    for k in range(cycles):
        for run in (a, b) if k % 2 == 0 else (b, a):
            run.turn(seconds)
    rows_a, rows_b = a.rows(), b.rows()
    for run in (a, b):
        run.stop()
    ta, tb = a.per_turn(rows_a), b.per_turn(rows_b)
    ratios = [statistics.median(y) / statistics.median(x) for x, y in zip(ta, tb) if x and y]
    ms_a = statistics.median(s for turn in ta for s in turn)
    ms_b = statistics.median(s for turn in tb for s in turn)
    return Pair(
        statistics.median(ratios),
        min(ratios),
        max(ratios),
        ms_b / ms_a,
        ms_a,
        ms_b,
        rows_a[0]["time"] - a.t0,
        rows_b[0]["time"] - b.t0,
    )


def helper_env(env: dict) -> dict:
    """For this script's own Ray helpers: their Ray session folder inside our temp dir (our CLI puts its own
    there already), not in /tmp/ray."""
    return {**env, "RAY_TMPDIR": str(Path(env["GSV_RAY_CACHE"]).parent / "ray")}


IDLE_RAY = r"""
import sys, ray
ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
print("up", flush=True)
sys.stdin.read()  # until the benchmark closes our stdin
"""


@contextlib.contextmanager
def idle_ray(env: dict):
    """A local Ray started as ours is (``ray.init(address="local")``) with nothing to run."""
    p = subprocess.Popen(
        [sys.executable, "-c", IDLE_RAY],
        env=helper_env(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )  # its session: frozen as one
    try:
        assert p.stdout.readline().strip() == "up"
        time.sleep(3)  # its prestarted workers settle
        yield p.pid
    finally:
        p.stdin.close()
        p.wait(timeout=60)


def tune_first_step(d: Path, env: dict) -> tuple[float, float]:
    """(command start, first training step of any trial) of a 2-trial tune on the demo's inputs."""
    from gsv_ray.demo import make_demo_inputs

    inputs = make_demo_inputs(d / "demo")
    out = d / "tune"
    t0 = time.time()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gsv_ray",
            "tune",
            "--init",
            str(inputs["init"]),
            "--base-d",
            str(inputs["base_d"]),
            "--data",
            str(inputs["data"]),
            "--max-steps",
            "4",
            "--val-every",
            "2",
            "--batch-size",
            "4",
            "--num-samples",
            "2",
            "--max-concurrent",
            "2",
            "--wandb-mode",
            "offline",
            "-o",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if r.returncode:
        raise SystemExit(r.stdout[-3000:] + r.stderr[-3000:])
    firsts = [
        next(row["time"] for row in map(json.loads, p.read_text().splitlines()) if row["split"] == "train")
        for p in out.glob("trials/*/metrics.jsonl")
    ]
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
    ap.add_argument("--cycles", type=int, default=30, help="turns each run takes in each pair (default 30)")
    ap.add_argument("--slice", type=float, default=2.0, help="seconds of one turn (default 2)")
    ap.add_argument("--schemas", default=str(ROOT / "tests/reference/gpt_sovits/schemas"))
    args = ap.parse_args()
    from gsv_ray.data.synthetic import make_synthetic_experiment
    from tests.support.schemafiles import SchemaFiles

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        env = {
            **os.environ,
            "GSV_RAY_CACHE": str(d / "cache"),
            "GSV_RAY_SCRATCH": str(d / "scratch"),
            "RAY_AUTH_MODE": "disabled",
        }
        data = make_synthetic_experiment(d / "exp", version="v2", num_utterances=24)
        gpt = _medium_gpt(d)
        common = [
            "--init",
            str(gpt),
            "--data",
            str(data),
            "--max-steps",
            "100000",
            "--batch-size",
            "4",
            "--val-fraction",
            "0",
            "--save-every",
            "100000",
            "--val-every",
            "100000",
            "--wandb-mode",
            "disabled",
        ]
        cores = os.cpu_count() or 1
        runs = itertools.count()

        def local(threads: int | None = None) -> Run:
            o = d / f"run{next(runs)}"
            extra = {"OMP_NUM_THREADS": str(threads)} if threads else {}
            return Run("local", common, {**env, **extra}, o, (o, "metrics.jsonl"))

        def on_ray(cpus: int) -> Run:
            o = d / f"run{next(runs)}"
            scratch = d / f"{o.name}-scratch"  # the node scratch of this run alone: its live metrics.jsonl
            return Run(
                "Ray",
                common + ["--workers", "1", "--cpus-per-worker", str(cpus)],
                {**env, "GSV_RAY_SCRATCH": str(scratch)},
                o,
                (scratch, "*/run/metrics.jsonl"),
            )

        def show(label: str, r: Pair) -> None:
            print(
                f"  {label}: {r.ms_b * 1000:.1f} / {r.ms_a * 1000:.1f} ms per step -> {r.ratio:.3f}x (cycles "
                f"{r.lo:.2f}-{r.hi:.2f}; pooled steps {r.pooled:.3f}x)",
                flush=True,
            )

        print(
            f"step time (GPT 6x256, batch 4, CPU, {cores} cores), {args.cycles} cycles of {args.slice:g} s "
            f"turns per pair, second run / first:",
            flush=True,
        )
        aa = interleaved(local(), local(), args.cycles, args.slice)
        show("local / local (A/A control)", aa)
        full = interleaved(local(), on_ray(cores), args.cycles, args.slice)
        show(f"train --workers 1 / local, torch on all {cores} cores (goal <= 1.05x)", full)
        one = interleaved(local(1), on_ray(1), args.cycles, args.slice)
        show("train --workers 1 / local, torch on 1 thread (a core left for Ray)", one)
        with idle_ray(env) as idle:
            beside = local()
            beside.beside = [idle]
            signal_sessions([idle], signal.SIGSTOP)  # frozen and thawed with the run beside it (its stop thaws it)
            idle_pair = interleaved(local(), beside, args.cycles, args.slice)
        show("local beside an idle local Ray / local alone", idle_pair)
        print(
            f"command to first step (each started alone): local {full.first_a:.1f} s, --workers 1 "
            f"{full.first_b:.1f} s (goal: within 20 s)"
        )
        t_tune, first = tune_first_step(d, env)
        print(
            f"gsv-ray tune (demo inputs, 2 trials at once): first training step {first - t_tune:.1f} s after "
            f"the command (goal <= 20 s)"
        )

        sf = SchemaFiles(Path(args.schemas), d / "files")
        files = [
            sf.path("sovits-export", "v2"),
            sf.path("sovits-pretrained-g", "v2"),
            sf.path("sovits-pretrained-d", "v2"),
        ]
        r = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, *map(str, files)], env=helper_env(env), capture_output=True, text=True
        )
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
        mem = json.loads(r.stdout.strip().splitlines()[-1])
        size = sum(p.stat().st_size for p in files) / 2**20
        print(
            f"private memory per worker, full-size v2 rebuild ({size:.0f} MB of files, 398 MB fp32): shared via "
            f"object store {statistics.mean(mem['shared']):.0f} MB vs each worker rebuilding itself "
            f"{statistics.mean(mem['own']):.0f} MB"
        )


if __name__ == "__main__":
    main()
