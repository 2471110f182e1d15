"""The driver -> worker contract: everything a Ray worker (or tune trial) needs to run the training
loop, as one frozen, picklable value. ``train_on_ray`` and tune's trial body build it; the worker
reads it (:func:`gsv_ray.distributed.worker.run_worker`). Nothing else crosses that boundary.

Ray Train passes ``train_loop_config`` as a dict, so a ``TorchTrainer`` gets ``{"job": WorkerJob}``
(:data:`JOB_KEY`); Tune's ``with_parameters`` passes the ``WorkerJob`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gsv_ray.train.config import TrainConfig

#: the one key of a ``TorchTrainer``'s ``train_loop_config`` (Ray requires a dict there)
JOB_KEY = "job"


@dataclass(frozen=True)
class WorkerJob:
    """One run's (or one trial's) work for its Ray workers."""

    train: TrainConfig
    """The training config, as the loop runs it (``output_dir`` is replaced by the worker's scratch)."""
    rebuild: Any
    """The shared rebuild (:func:`gsv_ray.distributed.shared.share`): object-store references, never paths."""
    run_name: str
    """The Ray run's name: names the node scratch shared by this run's workers on a node."""
    run_uri: str
    """Where the run's checkpoints are on storage (:mod:`gsv_ray.distributed.layout`)."""
    storage_fs: Any
    """The pyarrow filesystem of ``run_uri`` (a restarted worker looks for checkpoints there)."""
    output_dir_shown: str
    """Where the outputs end up (``-o``, or a trial's ``trials/<id>``): W&B config and error lines name it."""
    forbidden_paths: tuple[str, ...] = ()
    """Input weight files a worker must never open (the rebuild is shared)."""
    experiment: Any = None
    """The data folder scanned once on the driver (None: the data is a URI; each node scans it)."""
    driver_node: str | None = None
    """The driver's Ray node id: a worker on it can reach ``output_dir_shown`` (W&B artifacts)."""
    group: str | None = None
    """The W&B group (a tune search's name)."""
    job_type: str | None = None
    """The W&B job type (``trial``, ``refit``; None for a train run)."""
    wandb_run_id: str | None = None
    """The W&B run id (the same on every resume of the run)."""
    wandb_name: str | None = None
    """The W&B run name (None: the run's name, after ``-o``)."""
    relay: Any = None
    """The driver's console queue (:class:`gsv_ray.distributed.relay.Relay`); None: lines only in the log."""
    relay_run: str | None = None
    """The tag of this run's events on the relay (a trial id; None for a train run)."""
    stop_board: str | None = None
    """The named actor holding ASHA's stop decisions (a tune trial under ASHA; else None)."""
