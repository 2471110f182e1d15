"""Whole-process cost of ``gsv-ray rebuild`` next to a plain-torch script doing the same I/O.

Run: ``python benchmarks/bench_rebuild.py [--schemas DIR] [--repeat 3]``. Generates a full-size v2
export with its base G and D (in the real formats), then runs, each in a fresh process, measured
in the same run:
  * ``gsv-ray rebuild EXPORT --base G --base-d D -o OUT`` (CLI start-up included, empty cache);
  * a plain-torch script: safe-load the three files, take enc_q from the base, cast to fp32, write
    G and D as safetensors.
Prints wall time and peak RSS of each (best of --repeat) and the ratios. Goals: <= 1.3x time,
peak RSS <= 2x the three files' size. Each measured rebuild is cold (no stored result, inputs
hashed again); the model key/shape schemas, computed once per machine and model config, are warm.
The very first run on a machine (schemas cold too) is printed separately.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PLAIN = r"""
import sys, torch
from safetensors.torch import save_file
class HP:
    def __setstate__(self, s): self.__dict__.update(s)
export, g, d, out = sys.argv[1:5]
with torch.serialization.safe_globals([(HP, "utils.HParams")]):
    e = torch.load(export, map_location="cpu", weights_only=True, mmap=True)["weight"]
    gb = torch.load(g, map_location="cpu", weights_only=True, mmap=True)["weight"]
    db = torch.load(d, map_location="cpu", weights_only=True, mmap=True)["weight"]
gen = {k: v.float().contiguous() for k, v in e.items()}
gen.update({k: v.float().contiguous() for k, v in gb.items() if k.startswith("enc_q.")})
save_file(gen, out + "/generator.safetensors")
save_file({k: v.float().contiguous() for k, v in db.items()}, out + "/discriminator.safetensors")
"""

MEASURE = r"""
import resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
dt = time.perf_counter() - t
print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, rc)
"""


def measure(cmd: list[str], env: dict) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, env=env, check=True)
    dt, rss, rc = out.stdout.split()
    if rc != "0":
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return float(dt), float(rss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemas", default=str(ROOT.parent / "shared/reference/gpt_sovits/schemas"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.support.schemafiles import SchemaFiles

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        sf = SchemaFiles(Path(args.schemas), d / "files")
        export, g, dsc = (sf.path("sovits-export", "v2"), sf.path("sovits-pretrained-g", "v2"),
                          sf.path("sovits-pretrained-d", "v2"))
        size_mb = sum(p.stat().st_size for p in (export, g, dsc)) / 2**20
        ours, plain = [], []
        cache = d / "cache"
        env = dict(os.environ, GSV_RAY_CACHE=str(cache))
        cmd = [sys.executable, "-m", "gsv_ray", "rebuild", str(export), "--base", str(g), "--base-d", str(dsc), "-o"]
        first = measure(cmd + [str(d / "first")], env)
        for i in range(args.repeat):
            shutil.rmtree(cache / "rebuild", ignore_errors=True)
            (cache / "sha256-index.json").unlink(missing_ok=True)
            ours.append(measure(cmd + [str(d / f"out{i}")], env))
            (d / f"plain{i}").mkdir()
            plain.append(measure([sys.executable, "-c", PLAIN, str(export), str(g), str(dsc), str(d / f"plain{i}")], env))
        t_o, t_p = min(ours)[0], min(plain)[0]
        print(f"inputs: v2 export + base G + base D = {size_mb:.0f} MB (full size)")
        print(f"gsv-ray rebuild, first run     : {first[0]:6.2f} s  peak RSS {first[1]:7.0f} MB  (model schemas cold)")
        print(f"gsv-ray rebuild (whole process): {t_o:6.2f} s  peak RSS {max(r for _, r in ours):7.0f} MB")
        print(f"plain torch, same I/O          : {t_p:6.2f} s  peak RSS {max(r for _, r in plain):7.0f} MB")
        print(f"ratio: time {t_o / t_p:.2f}x (goal <= 1.3x), peak RSS {max(r for _, r in ours) / size_mb:.2f}x the "
              f"files' size (goal <= 2x)")


if __name__ == "__main__":
    main()
