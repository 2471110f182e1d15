"""Where the time of a short run goes: a 4-step ``gsv-ray train`` (SoVITS and GPT) and ``gsv-ray verify``
on the demo data, each the real CLI in a fresh process (cold cache, as a first run on a machine).

For train, the run itself prints ``time: <phase> <s>, ...`` (rebuild, scan, build, resume, tracking,
steps, validation, audio samples, checkpoint, export); what the process spent outside those
phases (Python start-up and imports, argument parsing, W&B start/finish, exit) is the rest of the
wall time. Goal: everything but the steps <= 15 s on an idle 2-core machine.
Run: ``python benchmarks/bench_startup.py [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return wall, r.stdout


def phases(stdout: str) -> dict[str, float]:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("time: "))
    return {k.strip(): float(v) for k, v in re.findall(r"([a-z ]+) ([0-9.]+) s", line[len("time: ") :])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from gsv_ray.demo import make_demo_inputs

    py = sys.executable
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        inputs = make_demo_inputs(d / "demo")
        env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
        imports = [timed([py, "-c", "import gsv_ray.cli, gsv_ray.train.loop"], env)[0] for _ in range(args.repeat)]
        print(f"python start + imports of the CLI and the training loop: {statistics.median(imports):.2f} s")
        jobs = {
            "sovits train": ["train", "--init", str(inputs["init"]), "--base-d", str(inputs["base_d"])],
            "gpt train": ["train", "--init", str(inputs["gpt"])],
        }
        for name, head in jobs.items():
            rows = []
            for i in range(args.repeat):
                cache = d / f"cache-{name.split()[0]}-{i}"  # empty: a first run on this machine
                out = d / f"run-{name.split()[0]}-{i}"
                cmd = [
                    py,
                    "-m",
                    "gsv_ray",
                    *head,
                    "--data",
                    str(inputs["data"]),
                    "-o",
                    str(out),
                    "--max-steps",
                    "4",
                    "--batch-size",
                    "4",
                    "--val-every",
                    "4",
                    "--save-every",
                    "4",
                    "--val-fraction",
                    "0.15",
                ]
                wall, stdout = timed(cmd, {**env, "GSV_RAY_CACHE": str(cache)})
                p = phases(stdout)
                rows.append({**p, "rest (imports, W&B, exit)": wall - sum(p.values()), "wall": wall})
            med = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in rows[0]}
            non_step = med["wall"] - med.get("steps", 0.0)
            print(
                f"{name} (4 steps, median of {args.repeat}): wall {med['wall']:.1f} s, "
                f"everything but the steps {non_step:.1f} s (goal <= 15 s: {'ok' if non_step <= 15 else 'ABOVE'})"
            )
            for k, v in med.items():
                if k != "wall":
                    print(f"    {k:28s} {v:6.2f} s")
        walls = []
        for i in range(args.repeat):
            cmd = [py, "-m", "gsv_ray", "verify", str(inputs["init"]), "--data", str(inputs["data"])]
            walls.append(timed(cmd, {**env, "GSV_RAY_CACHE": str(d / f"cache-verify-{i}")})[0])
        print(f"verify (evaluation only, cold cache): {statistics.median(walls):.1f} s median of {args.repeat}")


if __name__ == "__main__":
    main()
