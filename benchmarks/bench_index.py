"""A fresh experiment scan vs a hit of the experiment index (``gsv_ray.data.index``).

Run: ``python benchmarks/bench_index.py [--utterances 300] [--version v2Pro] [--repeat 5]``.
Writes a synthetic experiment (full-size features: HuBERT ``[1, 768, T]``, SV ``[1, 20480]`` for
v2Pro, BERT ``[1024, n_phones]``; 32 kHz wavs) into a temp folder, then for each stage prints the
median over ``--repeat`` runs of:

* ``fresh``: ``open_experiment`` (every wav header read, every feature file ``torch.load``-ed);
* ``key``: ``experiment_key`` alone (one ``stat`` per file);
* ``hit``: ``open_experiment_cached`` on a warm entry (key + reading the JSON index).

Every run is warm (the files were just written, so they sit in the page cache): a real first scan
of a cold disk or a network filesystem is slower still, the hit is not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from gsv_ray.data.experiment import open_experiment  # noqa: E402
from gsv_ray.data.index import experiment_key, index_path, open_experiment_cached  # noqa: E402
from gsv_ray.data.synthetic import make_synthetic_experiment  # noqa: E402


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def folder_mb(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--utterances", type=int, default=300)
    ap.add_argument("--version", default="v2Pro")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (a data worker uses few)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench_index_") as tmp:
        root, cache = Path(tmp) / "exp", Path(tmp) / "cache"
        t = time.perf_counter()
        make_synthetic_experiment(root, version=args.version, num_utterances=args.utterances, seed=0)
        hub = torch.load(next((root / "4-cnhubert").iterdir()), weights_only=True)
        print(
            f"synthetic {args.version} experiment: {args.utterances} utterances, {folder_mb(root):.0f} MB "
            f"(HuBERT e.g. {list(hub.shape)}), written in {time.perf_counter() - t:.1f} s; "
            f"median of {args.repeat} warm runs, torch threads {args.threads}"
        )
        print(f"{'stage':<7} {'fresh scan':>11} {'key only':>9} {'cache hit':>10} {'speed-up':>9} {'index':>9}")
        for stage in ("sovits", "gpt"):
            fresh_exp = open_experiment(root, stage, args.version)
            assert open_experiment_cached(root, stage, args.version, cache_root=cache) == fresh_exp  # miss: stores
            assert open_experiment_cached(root, stage, args.version, cache_root=cache) == fresh_exp  # hit
            fresh = median_time(lambda: open_experiment(root, stage, args.version), args.repeat)
            key = median_time(lambda: experiment_key(root, stage, args.version), args.repeat)
            hit = median_time(lambda: open_experiment_cached(root, stage, args.version, cache_root=cache), args.repeat)
            size = index_path(cache, experiment_key(root, stage, args.version)).stat().st_size / 1024
            print(
                f"{stage:<7} {fresh * 1e3:9.1f} ms {key * 1e3:6.2f} ms {hit * 1e3:7.2f} ms {fresh / hit:8.0f}x "
                f"{size:6.0f} kB"
            )


if __name__ == "__main__":
    main()
