"""Resumed training of both stages: one Accelerate loop (``loop.train``), a recipe per stage."""

from gsv_ray.train.config import TrainConfig, load_config
from gsv_ray.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_config", "train"]
