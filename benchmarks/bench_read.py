"""Time and memory of ``gsv_ray.io.read`` on full-size files, plain zip vs version-tagged.

Run: ``python benchmarks/bench_read.py [--schemas DIR]``. Generates a full-size v2 export (plain,
mmap path) and a v2ProPlus export (tagged "06", streamed path) plus a v3 base (770 MB), then reads
each in a fresh process and prints wall time and peak RSS growth next to the file size. The goal:
plain zips add ~0 private memory (memory-mapped, shared page cache), tagged files at most one
private copy of their tensors.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = r"""
import json, sys, time
from gsv_ray.io import read

def mem():  # kB: private (anonymous) vs file-backed (shared page cache) resident memory
    fields = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
    return {k: int(fields[k].split()[0]) for k in ("RssAnon", "RssFile", "VmHWM")}

base = mem()
t = time.perf_counter()
f = read(sys.argv[1])
dt = time.perf_counter() - t
after_read = mem()
for v in f.state_dict.values():  # touch every page, one tensor at a time
    float(v[(0,) * v.dim()]) if v.numel() else None
    v.sum()
after_touch = mem()
print(json.dumps({"kind": f.kind, "version": f.version, "read_s": dt,
                  "anon_mb": (after_touch["RssAnon"] - base["RssAnon"]) / 1024,
                  "file_mb": (after_touch["RssFile"] - base["RssFile"]) / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemas", default=str(ROOT / "tests/reference/gpt_sovits/schemas"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.support.schemafiles import SchemaFiles

    with tempfile.TemporaryDirectory() as d:
        sf = SchemaFiles(Path(args.schemas), Path(d))
        for kind, version in [("sovits-export", "v2"), ("sovits-export", "v2ProPlus"), ("sovits-pretrained-g", "v3")]:
            p = sf.path(kind, version)
            out = subprocess.run([sys.executable, "-c", PROBE, str(p)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout)
            size_mb = p.stat().st_size / 2**20
            print(
                f"{kind:20s} {version:10s} header {'tagged' if version in ('v2Pro', 'v2ProPlus') else 'PK':6s} "
                f"file {size_mb:7.1f} MB  read {r['read_s']:.3f} s  after touching every tensor: "
                f"private +{r['anon_mb']:6.1f} MB ({r['anon_mb'] / size_mb:.2f}x file), "
                f"shared page cache +{r['file_mb']:6.1f} MB"
            )
            sf.delete(kind, version)


if __name__ == "__main__":
    main()
