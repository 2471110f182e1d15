"""A Ray run's storage layout, in one place: where its checkpoints and outputs are on storage and
what the folders inside are called. Every other module asks here.

* ``<storage>/<name>``: a ``train --workers N`` run (Ray Train's ``RunConfig(name, storage_path)``);
  its checkpoints are ``step_<N>`` folders, the last report's is ``final``.
* ``<storage>/<name>/run``: the one trial of ``train --workers 1`` (:data:`ACTOR_TRIAL`); a trial's
  checkpoints are Tune's ``checkpoint_<i>`` folders (their step is read from ``state.json``).
* ``<storage>/<tune name>/<trial id>``: a tune trial in its own actor; ``<storage>/<tune name>-<trial id>``:
  a trial's Ray Train run (``--workers-per-trial`` > 1).
* In a checkpoint: :data:`OUTPUTS` (rank 0's outputs so far: metrics.jsonl, samples, run config);
  in the final report's: :data:`FINAL_RUN` (the run's outputs for ``-o``: exports, metrics, W&B files).
* Without ``--storage``: ``-o/ray`` (:func:`default_storage`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from gsv_ray.atomic import copy_sparse, make_sparse

#: the last report's checkpoint (a Train run's is named so; a trial's is its newest) holds the run's
#: outputs in FINAL_RUN; every step checkpoint holds its outputs so far in OUTPUTS
FINAL, FINAL_RUN, OUTPUTS = "final", "run", "outputs"
#: the folder of a one-actor run's only trial: its checkpoints are ``<storage>/<run>/run/checkpoint_<i>``
ACTOR_TRIAL = "run"
#: a trial's checkpoint folders (Tune chooses these names)
TRIAL_CHECKPOINT_PREFIX = "checkpoint_"


def default_storage(out: str | Path) -> str:
    """Checkpoints without ``--storage``: ``-o/ray`` (not recorded: it moves with ``-o``)."""
    return str(Path(out).resolve() / "ray")


def experiment_uri(storage_path: str, name: str) -> str:
    """The folder a Ray run (or Tune experiment) ``name`` has on storage."""
    return f"{storage_path.rstrip('/')}/{name}"


def step_checkpoint(step: int) -> str:
    """The name of a Train run's checkpoint at ``step`` (what :func:`gsv_ray.train.checkpoint.step_of` reads)."""
    return f"step_{step:08d}"


def run_uri(storage_path: str, name: str, *, in_actor: bool) -> str:
    """Where a train run's checkpoints are on storage: the Train run ``RunConfig(name, storage_path)``
    makes, or the folder of its one trial (``in_actor``: ``--workers 1``)."""
    root = experiment_uri(storage_path, name)
    return f"{root}/{ACTOR_TRIAL}" if in_actor else root


def trial_run_uri(storage_path: str, tune_name: str, trial_id: str, *, in_actor: bool) -> str:
    """Where a tune trial's checkpoints and outputs are on storage: its Tune trial folder when it runs in
    its own actor, else its Ray Train run (named after the trial, so a restored search continues it)."""
    if in_actor:
        return f"{experiment_uri(storage_path, tune_name)}/{trial_id}"
    return experiment_uri(storage_path, trial_train_run(tune_name, trial_id))


def trial_train_run(tune_name: str, trial_id: str) -> str:
    """The name of a tune trial's Ray Train run (and of its node scratch)."""
    return f"{tune_name}-{trial_id}"


def checkpoint_folders(fs, root: str) -> list[tuple[int, str]]:
    """(step, folder name) of the training-state checkpoints under ``root``, the newest first: a
    Train run's ``step_<N>`` folders, a trial's ``checkpoint_<i>`` folders (their step read from
    ``state.json``: Tune chooses those names). Folders being written or unreadable are left out."""
    from gsv_ray.train.checkpoint import step_of
    from gsv_ray.train.state import STATE

    found = []
    for name in _listdir(fs, root):
        step = step_of(name)
        if step is None and name.startswith(TRIAL_CHECKPOINT_PREFIX):
            try:
                with fs.open_input_stream(f"{root}/{name}/{STATE}") as f:
                    step = int(json.loads(f.read(1 << 20))["train"]["step"])
            except (OSError, ValueError, KeyError, TypeError):
                step = None
        if step is not None:
            found.append((step, name))
    return sorted(found, reverse=True)


def latest_outputs(fs, root: str) -> str | None:
    """A run's outputs on storage: the final report's ``run`` when it finished, else the newest
    checkpoint's ``outputs`` (rank 0 attaches metrics.jsonl and its samples to every checkpoint)."""
    from pyarrow.fs import FileType

    def is_dir(path: str) -> bool:
        return fs.get_file_info(path).type == FileType.Directory

    if is_dir(f"{root}/{FINAL}/{FINAL_RUN}"):
        return f"{root}/{FINAL}/{FINAL_RUN}"
    finals = sorted(
        n for n in _listdir(fs, root) if n.startswith(TRIAL_CHECKPOINT_PREFIX) and is_dir(f"{root}/{n}/{FINAL_RUN}")
    )
    if finals:
        return f"{root}/{finals[-1]}/{FINAL_RUN}"
    for _, name in checkpoint_folders(fs, root):
        if is_dir(f"{root}/{name}/{OUTPUTS}"):
            return f"{root}/{name}/{OUTPUTS}"
    return None


def is_final_outputs(path: str) -> bool:
    """Whether a :func:`latest_outputs` path is a finished run's outputs (not a checkpoint's so far)."""
    return path.endswith(f"/{FINAL_RUN}")


def _listdir(fs, path: str) -> list[str]:
    import pyarrow.fs as pafs

    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    return [i.base_name for i in infos if i.type == pafs.FileType.Directory]


def place_outputs(src: Path, out: Path, *, move: bool) -> None:
    """The run's outputs (``final/run`` of its last report) into ``out``: moved when the storage is
    a local folder (the run is over; its ``final`` checkpoint is no longer needed), else copied.
    Files are replaced by rename, never written into in place (a W&B artifact or a ``best/`` hard
    link may name them), and keep their zero padding as holes: Ray's checkpoint upload writes
    the zeros of a v2 export's padding out (84 MB on disk for a 5 MB demo export)."""
    out.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        dest = out / item.name
        if item.is_dir() and not item.is_symlink() and dest.is_dir():  # merge into it, file by file
            place_outputs(item, dest, move=move)
            continue
        placed = False
        if move and (not dest.exists() or (item.is_file() and dest.is_file())):
            try:
                os.replace(item, dest)  # same filesystem: a rename, nothing written again
                placed = True
            except OSError:  # another filesystem: copy below
                pass
        if not placed and item.is_dir():
            shutil.copytree(
                item,
                dest,
                symlinks=True,
                dirs_exist_ok=True,
                copy_function=lambda s, d: copy_sparse(s, d, overwrite=True),
            )
        elif not placed:
            copy_sparse(item, dest, overwrite=True)
        for f in [dest] if dest.is_file() else dest.rglob("*"):
            if f.is_file() and not f.is_symlink():
                make_sparse(f)
