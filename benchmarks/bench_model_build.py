"""Construction time of the full-size v2 SoVITS generator on CPU (goal: < 2 s).

Run: ``python benchmarks/bench_model_build.py [--version v2] [--repeat 5]``. Prints the first
(cold) build and the median of the following ones, plus the parameter count.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gsv_ray.models.sovits import SoVITSConfig, SoVITSGenerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="v2", choices=["v1", "v2", "v2Pro", "v2ProPlus"])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    config = SoVITSConfig.default(args.version)
    times = []
    for _ in range(max(1, args.repeat)):
        start = time.perf_counter()
        model = SoVITSGenerator(config)
        times.append(time.perf_counter() - start)
    n_params = sum(p.numel() for p in model.parameters())
    warm = statistics.median(times[1:]) if len(times) > 1 else times[0]
    print(
        f"SoVITSGenerator {args.version} full size ({n_params:,} parameters, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads): first build {times[0]:.3f} s, median of next "
        f"{len(times) - 1}: {warm:.3f} s (goal < 2 s)"
    )


if __name__ == "__main__":
    main()
