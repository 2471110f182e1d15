"""The shared weight-reconstruction step: any GPT-SoVITS file -> complete fp32 weights + a report.

``rebuild`` works in memory; ``rebuild_cached`` stores the result content-addressed (safetensors,
``config.json``, ``report.json``) so every worker and trial reuses the same bytes.
"""

from gsv_ray.cache import default_cache_root
from gsv_ray.rebuild.core import TASKS, RebuildPolicy, RebuildSpec, Rebuilt, rebuild
from gsv_ray.rebuild.report import FATES, KeyFate, RebuildReport
from gsv_ray.rebuild.store import export_result, load_result, rebuild_cached
from gsv_ray.rebuild.targets import build_models

__all__ = [
    "FATES",
    "TASKS",
    "KeyFate",
    "RebuildPolicy",
    "RebuildReport",
    "RebuildSpec",
    "Rebuilt",
    "build_models",
    "default_cache_root",
    "export_result",
    "load_result",
    "rebuild",
    "rebuild_cached",
]
