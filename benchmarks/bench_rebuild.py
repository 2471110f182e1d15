"""Whole-process cost of ``gsv-ray rebuild`` next to a plain-torch script doing the same I/O.

Run: ``python benchmarks/bench_rebuild.py [--schemas DIR] [--repeat 5]``. Generates a full-size v2
export with its base G and D (in the real formats), then runs, each in a fresh process, interleaved
and measured in the same run:
  * cold: ``gsv-ray rebuild EXPORT --base G --base-d D -o OUT`` with an empty ``GSV_RAY_CACHE``
    (a fresh temp dir per run: the first rebuild on a machine, CLI start-up included);
  * warm: the same command with a cache a previous run left, less its stored rebuild and input
    hashes (so the rebuild itself is redone; only per-machine model schemas could be reused);
  * a plain-torch script: safe-load the three files, take enc_q from the base, cast to fp32, write
    G and D as safetensors.
Prints the median (and min) wall time and the peak RSS of each, and the ratios of the medians.
Goals: <= 1.3x time cold and warm, peak RSS <= 2x the three files' size. Model key/shape schemas
for upstream's default configs ship with the package, so a cold run should compute none: the
"schemas computed" count (files the cold runs left in their cache's ``schemas/``) says so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(dt, ru.ru_maxrss / 1024, ru.ru_utime + ru.ru_stime, rc)
"""


def measure(cmd: list[str], env: dict) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MB) and CPU seconds (user + sys) of ``cmd`` in a fresh process."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, env=env, check=True)
    dt, rss, cpu, rc = out.stdout.split()
    if rc != "0":
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return float(dt), float(rss), float(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemas", default=str(ROOT / "tests/reference/gpt_sovits/schemas"))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.support.schemafiles import SchemaFiles

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        sf = SchemaFiles(Path(args.schemas), d / "files")
        export, g, dsc = (
            sf.path("sovits-export", "v2"),
            sf.path("sovits-pretrained-g", "v2"),
            sf.path("sovits-pretrained-d", "v2"),
        )
        size_mb = sum(p.stat().st_size for p in (export, g, dsc)) / 2**20
        cmd = [sys.executable, "-m", "gsv_ray", "rebuild", str(export), "--base", str(g), "--base-d", str(dsc), "-o"]
        warm_cache = d / "warm-cache"
        warm_env = dict(os.environ, GSV_RAY_CACHE=str(warm_cache))
        measure(cmd + [str(d / "prime")], warm_env)  # leaves what a previous run on this machine leaves
        cold, warm, plain = [], [], []
        schemas_computed = 0
        for i in range(args.repeat):
            cold_cache = d / f"cold-cache{i}"  # empty: the first rebuild on a machine
            cold.append(measure(cmd + [str(d / f"cold{i}")], dict(os.environ, GSV_RAY_CACHE=str(cold_cache))))
            schemas_computed += len(list((cold_cache / "schemas").glob("*.json")))
            shutil.rmtree(warm_cache / "rebuild", ignore_errors=True)
            (warm_cache / "sha256-index.json").unlink(missing_ok=True)
            warm.append(measure(cmd + [str(d / f"warm{i}")], warm_env))
            (d / f"plain{i}").mkdir()
            plain.append(
                measure([sys.executable, "-c", PLAIN, str(export), str(g), str(dsc), str(d / f"plain{i}")], warm_env)
            )
        runs = {"cold": cold, "warm": warm, "plain": plain}
        med = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
        cpu = {k: statistics.median(r[2] for r in v) for k, v in runs.items()}
        print(
            f"inputs: v2 export + base G + base D = {size_mb:.0f} MB (full size); {args.repeat} runs each, "
            "fresh processes, interleaved"
        )
        labels = {
            "cold": "gsv-ray rebuild, cold cache",
            "warm": "gsv-ray rebuild, warm cache",
            "plain": "plain torch, same I/O",
        }
        for key, label in labels.items():
            print(
                f"{label:28s}: median {med[key]:6.2f} s (min {min(r[0] for r in runs[key]):5.2f})  "
                f"CPU {cpu[key]:5.2f} s  peak RSS {max(r[1] for r in runs[key]):6.0f} MB"
            )
        print(
            f"ratio (medians): cold {med['cold'] / med['plain']:.2f}x, warm {med['warm'] / med['plain']:.2f}x "
            f"(goal <= 1.3x); CPU cold {cpu['cold'] / cpu['plain']:.2f}x, warm {cpu['warm'] / cpu['plain']:.2f}x; "
            f"peak RSS {max(r[1] for r in cold + warm) / size_mb:.2f}x the files' size (goal <= 2x)"
        )
        print(f"schemas computed by the cold runs: {schemas_computed} (shipped ones cover upstream's default configs)")
        hit_and_verify(export, g, dsc, d / "hit-cache", args.repeat)


def hit_and_verify(export: Path, g: Path, dsc: Path, cache: Path, repeat: int) -> None:
    """In one process: the first rebuild, a cache hit (verified by sizes, and checksums of any file
    whose identity changed), a hit with full checksums (``--verify-inputs``), and the checksum pass
    alone on the full-size entry."""
    import time

    from gsv_ray.rebuild import rebuild_cached
    from gsv_ray.rebuild.store import entry_problem

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    first = timed(lambda: rebuild_cached(export, base_g=g, base_d=dsc, cache_root=cache))
    entry = rebuild_cached(export, base_g=g, base_d=dsc, cache_root=cache).path
    size = sum(p.stat().st_size for p in entry.iterdir()) / 2**20
    hit = statistics.median(
        timed(lambda: rebuild_cached(export, base_g=g, base_d=dsc, cache_root=cache)) for _ in range(repeat)
    )
    full = statistics.median(
        timed(lambda: rebuild_cached(export, base_g=g, base_d=dsc, cache_root=cache, verify_inputs=True))
        for _ in range(repeat)
    )
    crc = statistics.median(timed(lambda: entry_problem(entry, full=True)) for _ in range(repeat))
    print(
        f"in-process, entry {size:.0f} MB: first rebuild {first:.2f} s; hit {hit:.3f} s ({first / hit:.0f}x faster, "
        f"goal >= 10x); hit with full checksums {full:.3f} s ({first / full:.1f}x); the checksum pass alone "
        f"{crc:.3f} s"
    )


if __name__ == "__main__":
    main()
