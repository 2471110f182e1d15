"""Ray glue: the local training loop on Ray workers, from one shared rebuild.

``launch.train_on_ray`` runs on the driver (rebuild once, share it, start a Ray Train
``TorchTrainer`` for N > 1 workers, one Tune trial for one worker); ``worker.run_worker`` runs in
each worker (the unchanged ``gsv_ray.train.loop.train``). What a worker gets is one
:class:`~gsv_ray.distributed.job.WorkerJob`; where a run lives on storage is
:mod:`gsv_ray.distributed.layout`'s.

The public face of this package is ``__all__`` below: ``gsv_ray.tune`` imports only those names,
and only from here (tests/test_architecture.py checks it). They are loaded on first use (PEP 562
``__getattr__``): importing this package (e.g. for ``RayOptions``) does not import Ray, torch or
the training loop.
"""

from __future__ import annotations

import importlib
from typing import Any

#: each public name and the module of this package that defines it
_HOME = {
    "RayOptions": "options",
    "own_signal_handlers": "signals",
    "connect": "cluster",
    "end_local_ray": "cluster",
    "RaySession": "cluster",
    "shutdown_local_ray": "cluster",
    "joined_address": "cluster",
    "local_cpus": "cluster",
    "share": "shared",
    "Relay": "relay",
    "StopBoard": "stopboard",
    "board_name": "stopboard",
    "start_board": "stopboard",
    "WorkerJob": "job",
    "default_storage": "layout",
    "experiment_uri": "layout",
    "trial_run_uri": "layout",
    "trial_train_run": "layout",
    "latest_outputs": "layout",
    "is_final_outputs": "layout",
    "place_outputs": "layout",
    "train_on_ray": "launch",
    "torch_trainer": "launch",
    "worker_resources": "launch",
    "trial_checkpoints": "launch",
    "driver_experiment": "launch",
    "forbidden_inputs": "launch",
    "worker_cause": "launch",
    "recorded_run_name": "launch",
    "wandb_run_id": "launch",
    "trial_loop": "worker",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
