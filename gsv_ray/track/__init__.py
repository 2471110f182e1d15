"""Tracking: the local ``metrics.jsonl`` (always) and one W&B run (when enabled).

The two are separate on purpose; a trainer composes them::

    metrics = MetricsWriter(run_dir)                      # always
    tracker = Tracker().start(cfg, project=..., mode=..., dir=run_dir, rank=world_rank)
    metrics.log(step, losses, split="train"); tracker.log(step, {f"train/{k}": v for k, v in losses.items()})
"""

from gsv_ray.track.metrics import MetricsWriter, iter_metrics, read_metrics, series
from gsv_ray.track.wandb_run import Tracker, has_api_key, rebuild_config, rebuild_table_rows, resolve_mode, write_wav

__all__ = [
    "MetricsWriter",
    "Tracker",
    "has_api_key",
    "iter_metrics",
    "read_metrics",
    "rebuild_config",
    "rebuild_table_rows",
    "resolve_mode",
    "series",
    "write_wav",
]
