"""Utterances per second of ``gsv-ray prepare``'s audio half (decode, peak filter, loudness mix, 16 kHz
resampling, full-size HuBERT, ``5-wav32k`` and ``4-cnhubert`` written) in-process vs on Ray Data with 1
and 2 workers.

Run: ``python benchmarks/bench_prepare.py [--copies 4] [--threads 1] [--batch-size 8]``. The model is
chinese-hubert-base's real size (12 layers, 94 M parameters) with the goldens' rule weights (the 2-layer
golden manifest's rule, extended to every layer), saved as a user's Hugging Face folder; the clips are
the goldens' six kept clips (0.3-4 s), each listed ``--copies`` times. Every mode starts from an empty
folder. Figures: wall time of the stages alone, and for Ray also with the local Ray's start; CUDA is used
when present (one GPU per worker, or shared by two). Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from gsv_ray.preparation import run_on_ray  # noqa: E402
from gsv_ray.prepare.pipeline import StageConfig, new_row, run_in_process  # noqa: E402
from tests.support.goldens import SV_CLIPS, rule_tensor  # noqa: E402 -- the goldens' weight rule and clips

GOLDENS = ROOT / "tests" / "reference" / "gpt_sovits" / "goldens"
KEPT = SV_CLIPS  # the six clips GPT-SoVITS keeps


def full_hubert(folder: Path) -> Path:
    """chinese-hubert-base's size (12 layers) with the rule weights: layer i's tensors follow layer 1's
    offsets and scales under their own keys."""
    config = json.loads((GOLDENS / "hubert_small.config.json").read_text())
    manifest = json.loads((GOLDENS / "hubert_small.weights.json").read_text())
    entries = manifest["tensors"] if isinstance(manifest, dict) else manifest
    layer1 = [e for e in entries if e["key"].startswith("encoder.layers.1.")]
    entries = [e for e in entries if not e["key"].startswith("encoder.layers.1.")]
    for i in range(1, 12):
        for e in layer1:
            e = copy.deepcopy(e)
            e["key"] = e["key"].replace("encoder.layers.1.", f"encoder.layers.{i}.")
            entries.append(e)
    state = {e["key"]: torch.from_numpy(rule_tensor(e["key"], e["shape"], e["offset"], e["scale"])) for e in entries}
    folder.mkdir(parents=True, exist_ok=True)
    config["num_hidden_layers"] = 12
    (folder / "config.json").write_text(json.dumps(config))
    save_file(state, str(folder / "model.safetensors"))
    return folder


def rows(copies: int, wavs: Path) -> list[dict]:
    """Each kept clip ``copies`` times under its own name; the text line given (the text step is not timed)."""
    out = []
    for k in range(copies):
        for c in KEPT:
            name = f"{k:03d}_{c}"
            shutil.copy(GOLDENS / "prepare_inputs" / c, wavs / name)
            row = new_row(len(out) + 1, name, str(wavs / name), "en", "")
            row["line"] = f"{name}\t, AA1 .\tNone\ta."
            out.append(row)
    return out


def run(mode: str, todo: list[dict], base: StageConfig, tmp: Path, batch: int) -> tuple[float, float]:
    """(seconds of the stages, seconds including Ray's start) for one mode, from an empty folder."""
    import logging

    cfg = StageConfig(**{**base.__dict__, "out": str(tmp / mode)})
    t0 = time.perf_counter()
    if mode == "in-process":
        run_in_process(todo, cfg, batch)
        t = time.perf_counter() - t0
        return t, t
    import ray

    workers = int(mode.split()[1])
    ray.init(num_cpus=workers * cfg.threads + 1, logging_level=logging.ERROR, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        t1 = time.perf_counter()
        out = run_on_ray(todo, cfg, batch, workers, min(1.0, gpus / workers) if gpus else 0.0)
        t = time.perf_counter() - t1
    finally:
        ray.shutdown()
    assert not [r for r in out if r["problem"]], [r["problem"] for r in out if r["problem"]]
    return t, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per model worker")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--modes", default="in-process,ray 1,ray 2")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as d:
        tmp = Path(d)
        (tmp / "wavs").mkdir()
        todo = rows(args.copies, tmp / "wavs")
        base = StageConfig(
            out="", version="v2", hubert=str(full_hubert(tmp / "chinese-hubert-base")), threads=args.threads
        )
        device = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"{len(todo)} utterances, full-size HuBERT (rule weights), {device}, {args.threads} thread(s)/worker")
        for mode in args.modes.split(","):
            stages, total = run(mode, todo, base, tmp, args.batch_size)
            print(f"{mode:>11}: {len(todo) / stages:6.2f} utt/s ({stages:6.1f} s stages, {total:6.1f} s with start)")


if __name__ == "__main__":
    main()
