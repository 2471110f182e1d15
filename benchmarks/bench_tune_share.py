"""Memory of concurrent trials sharing one rebuild vs each loading old.pth, and tune start-up time.

Run: ``python benchmarks/bench_tune_share.py [--schemas DIR]``. On one node (a local Ray):
  1. resident memory (sum of private memory of the trial processes + the object store's copy) with
     1, 2 and 4 concurrent consumers that map the shared full-size v2 rebuild (export + base G + D),
     next to the same number of consumers that each safe-load and rebuild the files themselves;
  2. the time from starting `gsv-ray tune` (demo inputs, 2 trials) to the first training step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROBE = r"""
import json, sys, time, ray
from gsv_ray.rebuild import rebuild
from gsv_ray.distributed.shared import share, materialise

def anon():
    f = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
    return int(f["RssAnon"].split()[0]) / 1024

@ray.remote(num_cpus=0.5)
class Trial:
    def load(self, how, shared, files):
        before = anon()
        self.rb = materialise(shared) if how == "shared" else rebuild(files[0], base_g=files[1], base_d=files[2])
        sum(float(t.sum()) for sd in self.rb.weights.values() for t in sd.values())  # touch every page
        return anon() - before

files = sys.argv[1:4]
ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR", object_store_memory=1200 * 2**20)
rb = rebuild(*files[:1], base_g=files[1], base_d=files[2])
shared = share(rb)
store_mb = sum(t.numel() * t.element_size() for sd in rb.weights.values() for t in sd.values()) / 2**20
out = {"store_mb": store_mb}
for n in (1, 2, 4):
    for how in ("shared", "own"):
        actors = [Trial.remote() for _ in range(n)]
        out[f"{how}_{n}"] = sum(ray.get([a.load.remote(how, shared, files) for a in actors]))
        for a in actors:
            ray.kill(a)
        time.sleep(0.5)
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemas", default=str(ROOT / "tests/reference/gpt_sovits/schemas"))
    args = ap.parse_args()
    from tests.support.schemafiles import SchemaFiles

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        env = {
            **os.environ,
            "GSV_RAY_CACHE": str(d / "cache"),
            "GSV_RAY_SCRATCH": str(d / "scratch"),
            "RAY_AUTH_MODE": "disabled",
            "WANDB_MODE": "disabled",
        }
        sf = SchemaFiles(Path(args.schemas), d / "files")
        files = [
            sf.path("sovits-export", "v2"),
            sf.path("sovits-pretrained-g", "v2"),
            sf.path("sovits-pretrained-d", "v2"),
        ]
        r = subprocess.run([sys.executable, "-c", PROBE, *map(str, files)], env=env, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
        m = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"full-size v2 rebuild: {m['store_mb']:.0f} MB fp32 in the object store (once per node)")
        for n in (1, 2, 4):
            shared = m[f"shared_{n}"] + m["store_mb"]
            print(
                f"{n} concurrent trial(s): shared rebuild {shared:6.0f} MB resident "
                f"(store {m['store_mb']:.0f} + private {m[f'shared_{n}']:.0f})   each loading old.pth "
                f"{m[f'own_{n}']:6.0f} MB"
            )

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
                "-o",
                str(out),
                "--max-steps",
                "4",
                "--val-every",
                "2",
                "--num-samples",
                "2",
                "--warmup-choices",
                "0",
                "--max-concurrent",
                "2",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
        first = min(
            json.loads(line)["time"]
            for p in out.glob("trials/*/metrics.jsonl")
            for line in p.read_text().splitlines()[:1]
        )
        print(f"gsv-ray tune to the first training step: {first - t0:.1f} s (2 trials, local Ray, CPU)")


if __name__ == "__main__":
    main()
