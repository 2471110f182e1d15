"""Ray options of ``gsv-ray train --workers N`` (light: ``--help`` builds from them), also
declared once for ``tune``'s trials (:func:`gsv_ray.options.same_as`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsv_ray.options import check, option, split_mapping
from gsv_ray.train.config import TrainConfig, load_config, read_options_file

RAY = "many GPUs / nodes (Ray)"
PLACEMENT_STRATEGIES = ("PACK", "SPREAD")  # Ray's ScalingConfig.placement_strategy values we offer


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray job runs."""

    workers: int = option(
        low=1,
        group=RAY,
        metavar="N",
        help="train on N Ray workers (N > 1: Ray Train, DDP; 1: one Ray actor); without it: local mode, no Ray",
    )
    gpus_per_worker: float = option(0.0, low=0, group=RAY, help="GPUs per worker; 0 trains on CPU")
    cpus_per_worker: float = option(1.0, low=0, low_open=True, group=RAY, help="CPUs per worker")
    address: str | None = option(
        None,
        metavar="ADDR",
        group=RAY,
        help="join a Ray cluster ('auto' or 'ray://host:10001'); default: start a local one",
    )
    storage: str | None = option(
        None,
        metavar="PATH_OR_URI",
        group=RAY,
        help="checkpoint storage shared by all nodes (s3://..., gs://..., a shared path); default -o/ray",
    )
    max_failures: int = option(0, low=0, group=RAY, help="restarts of failed workers before the job fails")
    placement_strategy: str = option(
        "PACK",
        choices=PLACEMENT_STRATEGIES,
        group=RAY,
        help="PACK: workers on as few nodes as fit; SPREAD: one per node where possible",
    )
    resume: bool = False  # continue this -o's Ray run (train's --resume, never a flag of its own)

    def validate(self) -> None:
        check(self)


def load_run_config(
    yaml_path: str | Path | None = None, *, train: dict[str, Any] | None = None, ray: dict[str, Any] | None = None
) -> tuple[TrainConfig, RayOptions | None]:
    """``gsv-ray train``'s options from one YAML file (training and Ray options side by side) updated
    by flag values. The Ray options are None without ``workers`` (local mode). With workers,
    ``resume`` continues this -o's Ray run (a checkpoint folder to start from is refused: the run's
    record in -o names its checkpoints)."""
    from gsv_ray.errors import ConfigError

    loaded = read_options_file(yaml_path) if yaml_path is not None else {}
    train_yaml, ray_yaml = split_mapping(loaded, TrainConfig, RayOptions, path=yaml_path or "<config>")
    ray_values = {**ray_yaml, **{k: v for k, v in (ray or {}).items() if v is not None}}
    train = {k: v for k, v in (train or {}).items() if v is not None}
    if not ray_values.get("workers"):
        if ray_values:
            raise ConfigError(
                f"{', '.join('--' + k.replace('_', '-') for k in sorted(ray_values))} only apply with --workers",
                fix="add --workers N, or drop them",
            )
        return load_config(None, mapping=train_yaml, **train), None
    wanted = train.pop("resume", None) or train_yaml.pop("resume", None)
    if wanted not in (None, "latest"):  # one meaning: continue this -o's run from its newest checkpoint
        raise ConfigError(
            f"--resume {wanted}: with --workers, --resume takes no folder (it continues the "
            "Ray run of this -o from its newest checkpoint)",
            fix="drop the folder, or drop --workers",
        )
    cfg = load_config(None, mapping=train_yaml, **train)
    opts = RayOptions(**ray_values, resume=wanted is not None)
    opts.validate()
    return dataclasses.replace(cfg, resume=None), opts
