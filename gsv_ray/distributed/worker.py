"""What each Ray Train worker runs: the local training loop, unchanged, fed the shared rebuild.

Per worker: refuse (audit hook) any attempt to open the job's input weight files — the rebuild is
shared, so a worker opening ``old.pth`` would be a bug that costs memory and time on every worker;
materialise the shared weights; restore from the run's newest complete checkpoint when Ray restarted
us; train; at every checkpoint each rank reports its own part of it (:class:`RayCheckpoints`);
finally rank 0 reports the run's outputs (exports, metrics.jsonl, W&B files) for the driver to place
in -o. Nothing is left in the node scratch after the run.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from gsv_ray.cache import scratch_root
from gsv_ray.distributed.job import JOB_KEY, WorkerJob
from gsv_ray.distributed.layout import FINAL, FINAL_RUN, OUTPUTS, checkpoint_folders, step_checkpoint
from gsv_ray.errors import GsvError

#: in the node scratch of a run: the run folder the loop writes (its ``-o``) and restored checkpoints
SCRATCH_RUN, SCRATCH_RESTORE = "run", "restore"
#: in the node scratch of a run: held by the rank 0 that writes the run's W&B records
WANDB_WRITER_LOCK = ".wandb-writer.lock"


def forbid_opening(paths: list[str]) -> None:
    """Install an audit hook that raises when this process opens any of ``paths``."""
    forbidden = {os.path.realpath(p) for p in paths if p}
    if not forbidden:
        return

    def hook(event: str, args: tuple) -> None:
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            target = os.fsdecode(args[0])
            if os.path.realpath(target) in forbidden:
                raise PermissionError(f"gsv-ray worker must not open input weights {target}: the rebuild is shared")

    sys.addaudithook(hook)


def scratch(run_name: str) -> Path:
    """A node-local run directory, the same path for every worker of this run on this node: all
    ranks then save their state (incl. their RNG states) into one checkpoint folder. Its workers hold
    it (:class:`gsv_ray.owned.Owner`); the last one out removes it, and a run that dies leaves an
    orphan the next run on the node removes."""
    return scratch_root() / run_name


def claim_scratch(run_name: str):
    from gsv_ray.owned import Owner, sweep

    sweep(scratch_root(), lambda n: True)  # runs that died on this node (only folders with our lock file)
    return Owner(scratch(run_name), shared=True)


class TrainSession:
    """A Ray Train worker's side of the run (``ray.train``): its ranks, its reports, its collectives.
    Checkpoints are the Train run's ``step_<N>`` folders in ``job.run_uri``."""

    def __init__(self, job: WorkerJob):
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world, self.local_rank = ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()
        self.run_uri = job.run_uri  # where the driver's RunConfig puts the run

    def report(self, metrics: dict[str, Any], directory: Path | None = None, name: str | None = None) -> None:
        import ray.train
        from ray.train import Checkpoint

        if directory is None:
            ray.train.report(metrics)
        else:  # Ray uploads every rank's folder into the one checkpoint ``name`` and deletes ours
            ray.train.report(
                metrics,
                checkpoint=Checkpoint.from_directory(str(directory)),
                checkpoint_dir_name=name,
                delete_local_checkpoint_after_upload=True,
            )

    def registered(self):
        import ray.train

        return ray.train.get_checkpoint()

    def broadcast(self, obj: Any) -> Any:
        from ray.train.collective import broadcast_from_rank_zero

        return broadcast_from_rank_zero(obj)


class TrialSession:
    """One worker that trains in its own Tune actor (``ray.tune``): a tune trial, or the one trial
    of ``train --workers 1``. No Train controller, helper actors and worker group to start
    (measured: they took ~10 s of the ~30 s before a tune's first step, and made each step ~10 %
    slower, on 2 cores). Checkpoints are the trial's (Tune names them ``checkpoint_<i>``) in
    ``job.run_uri``; the same retention (``CheckpointConfig``) and restore."""

    rank, world, local_rank = 0, 1, 0

    def __init__(self, job: WorkerJob):
        self.run_uri = job.run_uri

    def report(self, metrics: dict[str, Any], directory: Path | None = None, name: str | None = None) -> None:
        from ray import tune

        # Tune copies the folder to storage before report returns (we remove ours afterwards)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(directory)) if directory else None)

    def registered(self):
        from ray import tune

        return tune.get_checkpoint()

    def broadcast(self, obj: Any) -> Any:
        return obj


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """A Ray Train worker (``TorchTrainer``'s loop function; ``config`` is ``{JOB_KEY: WorkerJob}``)."""
    job = config[JOB_KEY]
    run_worker(job, TrainSession(job))


def trial_loop(job: WorkerJob) -> None:
    """A one-worker tune trial, run in the trial's own actor."""
    run_worker(job, TrialSession(job))


def one_actor_loop(config: dict[str, Any], *, job: WorkerJob) -> None:
    """``train --workers 1``: the run's one Tune trial (``tune.with_parameters`` gives ``job``;
    the trial's own ``config`` is empty: nothing is searched)."""
    run_worker(job, TrialSession(job))


def _worker_config(job: WorkerJob, run_dir: Path):
    """The training config this worker runs: in its node scratch, its data fetched on this node, its
    loader workers from the CPUs Ray gave it."""
    import ray

    from gsv_ray.cache import default_cache_root

    cfg = dataclasses.replace(job.train, output_dir=str(run_dir / SCRATCH_RUN), resume=None)
    cfg = cfg.localised(default_cache_root())  # a data URI: fetched once per node (a lock serialises workers)
    if cfg.num_workers is None:  # loader workers from the CPUs Ray gave this worker
        from gsv_ray.data.loader import default_loader_workers

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        cfg = dataclasses.replace(cfg, num_workers=default_loader_workers(cpus))
    return cfg


def _tracking(job: WorkerJob, cfg, rank: int, scratch_dir: Path):
    """Rank 0's W&B run (None on the other ranks); it writes only once no earlier rank 0 of this
    run on this node still lives (the lock in ``scratch_dir``, the run's node scratch)."""
    from gsv_ray.train.tracking import Tracking

    if rank != 0:
        return None
    return Tracking(
        cfg.output_dir,
        project=cfg.wandb_project,
        mode=cfg.wandb_mode,
        name=job.wandb_name or cfg.run_name,
        group=job.group,
        job_type=job.job_type,
        run_id=job.wandb_run_id,
        config_overrides={"output_dir": job.output_dir_shown or cfg.output_dir},
        replay_on_resume=True,
        stage_artifacts=True,
        final_dir=_final_dir(job),
        writer_lock=scratch_dir / WANDB_WRITER_LOCK,
    )


def run_worker(job: WorkerJob, session) -> None:
    """One worker's whole part of the run; see the module doc."""
    import logging

    from gsv_ray.distributed.shared import materialise
    from gsv_ray.train.loop import train

    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file is noise here
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # a TrainingReport(...) dump per checkpoint and rank
    forbid_opening(list(job.forbidden_paths))
    rank, world = session.rank, session.world
    rebuilt = materialise(job.rebuild)
    owner = claim_scratch(job.run_name)
    run_dir = owner.directory
    cfg = _worker_config(job, run_dir)
    progress: Any = False  # the driver's console (no relay: lines only in the worker's log)
    say = _silent  # ranks other than 0 say nothing
    if rank == 0:
        from gsv_ray.distributed.relay import RelayedProgress

        progress = RelayedProgress(job.relay, job.relay_run) if job.relay is not None else False
        say = _say(f"[rank 0/{world}] ", progress if job.relay is not None else None)
    restored = _restore(job, session, run_dir, say=say)
    if restored is not None:
        cfg.resume = str(restored)

    checkpoints = RayCheckpoints(
        run_dir, Path(cfg.output_dir), session=session, stop_board=job.stop_board, trial_id=job.relay_run
    )
    tracking = _tracking(job, cfg, rank, run_dir)
    try:
        result = train(
            cfg,
            rebuilt=rebuilt,
            tracking=tracking,
            checkpoints=checkpoints,
            progress=progress,
            experiment=job.experiment,  # scanned once on the driver (None: data is a URI)
            say=say,
        )
    except BaseException as e:
        if tracking is not None:
            tracking.finish(1)
        if isinstance(e, GsvError) and job.output_dir_shown:
            raise _as_shown(e, cfg.output_dir, job.output_dir_shown) from None
        raise
    if tracking is not None:
        tracking.finish()
    _report_final(result, cfg, session, run_dir, rank)
    owner.release_and_remove_if_last()  # the final report is on storage (uploads are synchronous)


def _report_final(result, cfg, session, run_dir: Path, rank: int) -> None:
    """Every rank's last report; rank 0's carries the run's outputs (:data:`FINAL_RUN`)."""
    last_val = {f"val/{k}": v for k, v in (result.val_history[-1] if result.val_history else {}).items() if k != "step"}
    final = {
        "step": result.steps,
        "epochs": result.epochs,
        "done": 1,
        "stopped_early": int(result.stopped_early),
        **last_val,
    }  # a Tune search requires its metric in every report
    if rank == 0:  # the run's outputs (exports, metrics.jsonl, W&B files), for the driver to place in -o;
        # the training state is already on storage in the last step_<N> checkpoint
        with _report_dir(run_dir) as out:  # moved, not copied: the run is over
            os.replace(cfg.output_dir, out / FINAL_RUN)
            for link in (out / FINAL_RUN).glob("wandb/latest-run"):  # a symlink W&B keeps; not an output
                link.unlink()
            session.report(final, out, FINAL)
    else:
        session.report(final)


def _as_shown(e: GsvError, scratch: str, shown: str) -> GsvError:
    """``e`` naming the run's real ``-o`` (or trial folder) where it named this worker's scratch copy
    of it: its fix may be a command to run (a divergence names a new ``-o`` beside the old one)."""
    return type(e)(str(e).replace(scratch, shown).rstrip("."))


def _final_dir(job: WorkerJob) -> Path | None:
    """Where this run's outputs end up (the driver's ``-o``, or its ``trials/<id>``) when this worker
    runs on the driver's node, else None (another node cannot reach it)."""
    import ray

    driver = job.driver_node
    same_node = driver is not None and driver == ray.get_runtime_context().get_node_id()
    return Path(job.output_dir_shown) if same_node and job.output_dir_shown else None


class RayCheckpoints:
    """Checkpoints the way Ray Train documents them: at each checkpoint every rank writes what it
    owns (rank 0: models, optimizers, schedulers, position, manifest; every rank: its RNG states)
    into its own temporary folder and hands it to ``ray.train.report``, which uploads every rank's
    folder into the one ``step_<N>`` checkpoint on storage (whichever node each rank is on) and
    deletes the local folder. ``CheckpointConfig(num_to_keep)`` is the only retention. Rank 0's
    folder also carries the run's small outputs so far (metrics.jsonl, W&B files): a run restarted on
    another node, or a trial stopped early, continues from them."""

    def __init__(
        self, scratch_dir: Path, outputs: Path, *, session, stop_board: str | None = None, trial_id: str | None = None
    ):
        self.scratch, self.outputs, self.session = scratch_dir, outputs, session
        self.rank, self.run_uri = session.rank, session.run_uri
        self.stop_board, self.trial_id = stop_board, trial_id
        self._stop = False

    def stop_requested(self) -> bool:
        """Whether the tune scheduler stopped this trial at the last checkpoint (every rank agrees)."""
        return self._stop

    def save(self, accelerator, step: int, *, models, optimizers, state: dict, metrics: dict) -> Path:
        from gsv_ray.train import state as state_io

        name = step_checkpoint(step)
        report = {"step": step, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
        with _report_dir(self.scratch) as tmp:
            state_io.save(accelerator, tmp, models=models, optimizers=optimizers, state=state, own_directory=True)
            if self.rank == 0:
                _snapshot_outputs(self.outputs, tmp / OUTPUTS)
            self.session.report(report, tmp, name)
        if self.stop_board is not None:  # a tune trial under ASHA: did the scheduler stop it here?
            from gsv_ray.distributed.stopboard import wait_for_decision

            stop = wait_for_decision(self.stop_board, self.trial_id, step) if self.rank == 0 else None
            self._stop = bool(self.session.broadcast(stop))
        return Path(f"{self.run_uri}/{name}")


class _report_dir:
    """A fresh folder in the run's node scratch for one report; gone afterwards (Ray deletes it after
    the upload; this removes it when the report never happened)."""

    def __init__(self, parent: Path):
        self.parent = parent

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(prefix=".report-", dir=self.parent))
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _say(prefix: str, relay=None):
    """Lines for people: to the driver's console through ``relay`` (when the driver has one), and to
    this worker's stdout, which Ray forwards to the driver's log file. (Not ``print``: Ray Train
    patches ``print`` to log through its root logger *and*, when something such as W&B wraps stdout,
    to print too, so every line reached the console twice.)"""

    def say(line: str) -> None:
        sys.stdout.write(f"{prefix}{line}\n")
        sys.stdout.flush()
        if relay is not None:
            relay.say(line)

    return say


def _silent(line: str) -> None:
    """A ``say`` that drops the line."""


# long: one protocol (pick on rank 0, broadcast, fetch on every rank, outputs back on rank 0) kept in one place
def _restore(job: WorkerJob, session, run_dir: Path, *, say) -> Path | None:
    """The state to continue from after Ray restarted the worker group, or None for a fresh start.

    Ray registers a reported checkpoint only when its controller next polls the workers (every
    ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``); a worker killed before that poll loses the newest reports
    although their folders are complete on storage, and ``ray.train.get_checkpoint()`` then gives an
    older checkpoint or None (seen: a SIGKILL after step_20 restarted from step 1). So rank 0 takes
    the newest ``step_<N>`` folder on storage that verifies against its manifest (Ray's registered
    checkpoint is one of them), tells every rank which one (``broadcast_from_rank_zero``), and each
    rank reads it. Rank 0 also puts back the run's outputs as of that checkpoint (metrics.jsonl, W&B
    files), so no metrics row is written twice; a fresh start begins from an empty run folder.
    """
    import pyarrow.fs as pafs
    from ray.train import Checkpoint

    from gsv_ray.train import state as state_io

    rank = session.rank
    if session.local_rank == 0:  # this node's copy of the run folder restarts from the checkpoint
        shutil.rmtree(run_dir / SCRATCH_RUN, ignore_errors=True)
        shutil.rmtree(run_dir / SCRATCH_RESTORE, ignore_errors=True)
    registered = session.registered()
    fs, root = job.storage_fs, session.run_uri

    def fetch(name: str, tag: str) -> Path:
        src = f"{root}/{name}"
        if isinstance(fs, pafs.LocalFileSystem):
            return Path(src)  # read in place
        dest = run_dir / SCRATCH_RESTORE / f"{name}-{tag}"
        if not dest.is_dir():  # rank 0 already has the one it verified
            Checkpoint(src, filesystem=fs).to_directory(str(dest))
        return dest

    choice: dict[str, Any] | None = None
    if rank == 0:
        skipped = []
        for _, name in checkpoint_folders(fs, root):
            why = state_io.problem(fetch(name, "0"))
            if why is None:
                choice = {"name": name}  # broadcast_from_rank_zero takes < 1 KB
                break
            skipped.append(f"{name}: {why}")
        if choice is not None or registered is not None or skipped:
            regd = Path(registered.path).name if registered is not None else "none"
            say(
                f"restart: continuing from {choice['name'] if choice else 'the start'} on storage (Ray's newest "
                f"registered checkpoint: {regd})" + "".join(f"; skipped {s}" for s in skipped)
            )
    choice = session.broadcast(choice)
    if choice is None:
        return None
    local = fetch(choice["name"], str(rank))
    if rank == 0:  # the run's outputs as they were at that checkpoint
        _copy_restart_outputs(local / OUTPUTS, run_dir / SCRATCH_RUN)
    return local


#: what a run wrote so far that a restart needs (small), in every checkpoint's ``outputs``: the
#: source of truth of its W&B run (docs/design/architecture.md, "W&B: one writer per run") --
#: metrics.jsonl, the run config and W&B run id, the audio of each validation. Not the live W&B
#: folder: an offline run has no records on disk before finish(); a restarted worker gives its
#: resumed W&B run this history again (``Tracking(replay_on_resume=True)``).
RESTART_OUTPUTS = ("metrics.jsonl", "wandb_run_id", "run_config.json", "samples")


def _copy_restart_outputs(src: Path, dest: Path) -> None:
    """Copy :data:`RESTART_OUTPUTS` from one run folder to another (those ``src`` has)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in RESTART_OUTPUTS:
        if (src / name).is_dir():
            shutil.copytree(src / name, dest / name, dirs_exist_ok=True)
        elif (src / name).is_file():
            shutil.copy2(src / name, dest / name)


def _snapshot_outputs(run_dir: Path, dest: Path) -> None:
    """A checkpoint's ``outputs``: :data:`RESTART_OUTPUTS` as the run has them now."""
    shutil.rmtree(dest, ignore_errors=True)
    _copy_restart_outputs(run_dir, dest)
