"""Resumed training of both stages: one Accelerate loop (``loop.train``), a recipe per stage.

``train`` and ``TrainResult`` are imported on first use: the options (``config``) are needed by
light commands (``gsv-ray --help`` builds its help from their defaults) that must not pay for
torch and Accelerate.
"""

from typing import Any

from gsv_ray.train.config import TrainConfig, load_config

__all__ = ["TrainConfig", "TrainResult", "load_config", "train"]


def __getattr__(name: str) -> Any:
    if name in ("TrainResult", "train"):
        from gsv_ray.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
