"""Driver side of ``gsv-ray train --workers N``: rebuild once, share it, run it on Ray: N > 1
workers as a Ray Train ``TorchTrainer``, one worker in a single Ray actor (:func:`runs_in_actor`).

The rebuild happens here, once per job (content-addressed, so a re-run reuses it); workers get a
reference to the weights in the object store and never the input paths. Checkpoints live in the
Ray storage path; the run directory ``-o`` ends up as in local mode (exports, metrics, W&B files).
A deterministic run name (``--resume``) makes a re-run of the same command continue the same run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import secrets
import time
from pathlib import Path
from typing import Any, Callable

from gsv_ray.atomic import write_json
from gsv_ray.cache import default_cache_root
from gsv_ray.console import shown
from gsv_ray.distributed.cluster import RaySession, alive_hosts, joined_address
from gsv_ray.distributed.job import JOB_KEY, WorkerJob
from gsv_ray.distributed.layout import (
    ACTOR_TRIAL,
    FINAL_RUN,
    checkpoint_folders,
    default_storage,
    experiment_uri,
    place_outputs,
)
from gsv_ray.distributed.layout import run_uri as layout_run_uri
from gsv_ray.distributed.options import RayOptions
from gsv_ray.distributed.signals import own_signal_handlers
from gsv_ray.errors import ConfigError, GsvError, InfraError, check_output_path, clip
from gsv_ray.masking import has_credentials
from gsv_ray.rebuild import rebuild_cached
from gsv_ray.storage import display
from gsv_ray.train.config import TrainConfig
from gsv_ray.train.loop import TrainResult
from gsv_ray.train.rundir import LAUNCH_RECORD, check_new_run, check_same_run, write_config
from gsv_ray.train.rundir import exports as run_exports
from gsv_ray.train.sovits import check_codebook

#: -o/ray_run.json: the Ray run's name, layout ("actor" or "train") and storage (masked; None for the
#: default -o/ray), written by :func:`_record_run`, read by :func:`_recorded_run`
RAY_RUN_RECORD = LAUNCH_RECORD


def run_name(cfg: TrainConfig, init_sha: str, resume: bool) -> str:
    """Deterministic with ``resume`` (same command -> same run, which Ray continues), else fresh."""
    if resume:
        key = f"{os.path.realpath(cfg.output_dir)}|{init_sha}|{cfg.stage}"
        return "gsv-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"gsv-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def wandb_run_id(name: str) -> str:
    """The W&B run id of the Ray run ``name`` (the same run id on every resume of it)."""
    return hashlib.sha256(name.encode()).hexdigest()[:8]


def recorded_run_name(out: str | Path) -> str | None:
    """The name of the Ray run ``-o`` records (None when it records none)."""
    recorded = _recorded_run(out)
    return recorded[0] if recorded is not None else None


def _recorded_run(out: str | Path) -> tuple[str, str, str | None] | None:
    """(name, layout, storage) of the Ray run this -o records: layout "actor" (one worker) or
    "train"; storage as recorded (credentials masked), None if not recorded."""
    try:
        record = json.loads((Path(out) / RAY_RUN_RECORD).read_text())
        name, layout = record["name"], record.get("layout", "train")  # a record without it: a Train run
        storage = record.get("storage")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    ok = isinstance(name, str) and name.startswith("gsv-") and "/" not in name and layout in ("actor", "train")
    return (name, layout, storage if isinstance(storage, str) and storage else None) if ok else None


def _record_run(out: str | Path, name: str, layout: str, storage: str) -> None:
    """Record in -o the Ray run ``name`` of ``layout`` on ``storage`` (as given; kept masked), for
    :func:`_recorded_run`."""
    write_json(Path(out) / RAY_RUN_RECORD, {"name": name, "storage": _recorded_storage(storage, out), "layout": layout})


def run_storage(opts: RayOptions, out: str | Path, recorded: tuple[str, str, str | None] | None) -> str:
    """The storage a run uses, as given (credentials included): ``--storage``; on ``--resume``
    without it, the one ``-o/ray_run.json`` records, unless its credentials were masked there (one
    line: give them again); else ``-o/ray``."""
    if opts.storage:
        return opts.storage
    kept = recorded[2] if recorded is not None else None
    if kept is None:
        return default_storage(out)
    if has_credentials(kept):
        raise ConfigError(
            f"this run's checkpoints are in {kept}, whose credentials are never recorded",
            path=Path(out) / RAY_RUN_RECORD,
            fix="pass --storage again with them, or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and "
            "pass --storage without them",
        )
    return kept


def _recorded_storage(storage: str, out: str | Path) -> str | None:
    """What ``ray_run.json`` keeps of the storage: its masked form, None for the default ``-o/ray``."""
    return None if storage == default_storage(out) else display(storage)


def runs_in_actor(opts: RayOptions) -> bool:
    """One worker trains in a single Ray actor, run by Ray Tune as one trial with no search
    (``Tuner``, ``CheckpointConfig``, ``FailureConfig``, ``Tuner.restore``: the same checkpoints,
    retention, restarts and resume) rather than by Ray Train. Ray Train adds a controller and five
    helper actors to a run (placement-group cleaner, synchronisation, preemption watcher,
    autoscaling coordinator, dataset manager); the main thread of every Ray worker process wakes
    ~100 times a second, and on 2 cores those ~700 wakeups/s made each training step ~10 % slower
    (bench_ray_overhead.py, docs/design/benchmarks.md). One worker has no collectives that need Train."""
    return opts.workers == 1


def run_uri(storage_path: str, name: str, opts: RayOptions) -> str:
    """Where the run's checkpoints are on storage (:func:`gsv_ray.distributed.layout.run_uri`)."""
    return layout_run_uri(storage_path, name, in_actor=runs_in_actor(opts))


def check_machine(opts: RayOptions) -> None:
    """On our own local Ray (no ``--address``/``RAY_ADDRESS``): refuse, before anything starts,
    more worker CPUs than this machine has (the local Ray would be started with that many logical
    CPUs and oversubscribe, or run out of memory after minutes) and more GPUs than it has."""
    import ray

    if joined_address(opts.address) or ray.is_initialized():
        return  # a cluster, or a Ray this process runs already: check_resources counts it
    have = os.cpu_count() or 1
    if opts.workers * opts.cpus_per_worker > have:
        fits = int(have // opts.cpus_per_worker)
        raise ConfigError(
            f"--workers {opts.workers} x {opts.cpus_per_worker:g} CPUs per worker need "
            f"{opts.workers * opts.cpus_per_worker:g} CPUs but this machine has {have}",
            fix=(f"use --workers {fits} or less" if fits else "lower --cpus-per-worker")
            + ", or join a larger cluster with --address",
        )
    if opts.gpus_per_worker:
        import torch

        gpus = torch.cuda.device_count()
        if opts.workers * opts.gpus_per_worker > gpus:
            raise ConfigError(
                f"asked for {opts.workers} x {opts.gpus_per_worker:g} GPUs but this machine has {gpus}",
                fix="lower --workers / --gpus-per-worker, or join a GPU cluster with --address",
            )


def check_resources(opts: RayOptions) -> None:
    """On the cluster (joined or ours): the workers' CPUs and GPUs fit in it, before the run starts."""
    import ray

    res = ray.cluster_resources()
    gpus = res.get("GPU", 0.0)
    if opts.gpus_per_worker and opts.workers * opts.gpus_per_worker > gpus:
        raise ConfigError(
            f"asked for {opts.workers} x {opts.gpus_per_worker:g} GPUs but the cluster has {gpus:g}",
            fix="lower --workers / --gpus-per-worker, or add GPU nodes",
        )
    cpus = res.get("CPU", 0.0)
    if opts.workers * opts.cpus_per_worker > cpus:
        fits = int(cpus // opts.cpus_per_worker)
        raise ConfigError(
            f"asked for {opts.workers} x {opts.cpus_per_worker:g} CPUs but the cluster has {cpus:g}",
            fix=f"use --workers {fits} or less" if fits else "lower --cpus-per-worker, or add nodes",
        )


def driver_experiment(cfg: TrainConfig, rebuilt):
    """The experiment folder scanned once here, for every worker (and trial); None when the data is
    a URI (each node fetches it and reads the scan from its own cache)."""
    from gsv_ray.storage import is_uri
    from gsv_ray.train.loop import open_run_experiment

    return None if is_uri(cfg.data) else open_run_experiment(cfg.data, rebuilt)


def _check_shared_storage(storage: str) -> None:
    """A cluster on several machines needs checkpoint storage every machine reaches."""
    from gsv_ray.storage import is_node_local

    hosts = alive_hosts()
    if len(hosts) > 1 and is_node_local(storage):
        raise ConfigError(
            f"a cluster on {len(hosts)} machines needs shared checkpoint storage, but --storage {shown(storage)} "
            "is node-local",
            fix="pass --storage s3://bucket/prefix (or a path on a shared filesystem)",
        )


def _check_layout(cfg: TrainConfig, opts: RayOptions) -> tuple[str, tuple[str, str, str | None] | None]:
    """(layout, the recorded run or None): a ``--resume`` continues only with the layout it started
    with (one Tune trial's checkpoints vs a Train run's)."""
    layout = "actor" if runs_in_actor(opts) else "train"
    recorded = _recorded_run(cfg.output_dir) if opts.resume else None
    if recorded is not None and recorded[1] != layout:
        was = "--workers 1" if recorded[1] == "actor" else "--workers 2 or more"
        raise ConfigError(
            f"this run was started with {was} and continues only so",
            path=Path(cfg.output_dir) / RAY_RUN_RECORD,
            fix=f"resume it with {was}, or start a new -o with --init its latest export",
        )
    return layout, recorded


def _rebuild_once(cfg: TrainConfig, opts: RayOptions, say: Callable[[str], None]):
    """(the config as given, as the workers run it, the rebuild): rebuilt here once for every worker,
    checked as ``train()`` would before Ray starts."""
    given = cfg
    cfg = cfg.localised(default_cache_root(), data=False)  # weights: fetched here once; data: per node
    rebuilt = rebuild_cached(cfg.rebuild_spec())
    device = "cuda" if opts.gpus_per_worker and not cfg.cpu else "cpu"  # what the workers will train on
    given, cfg = given.resolved(rebuilt.stage, device), cfg.resolved(rebuilt.stage, device)  # as train() records
    check_codebook(rebuilt.resolved, cfg, opts.workers)  # before Ray starts (each worker checks it too)
    if opts.resume:  # the same run, or one line naming the option that would change it
        check_same_run(given, Path(cfg.output_dir) / "config.json", rebuilt.report.inputs)
    say(f"rebuilt once for all workers ({'reused' if rebuilt.cache_hit else 'new'}): {rebuilt.report.message()}")
    return given, cfg, rebuilt


def forbidden_inputs(*cfgs: TrainConfig) -> tuple[str, ...]:
    """The local input weight files of ``cfgs`` (a worker must never open them: the rebuild is shared)."""
    return tuple(p for c in cfgs for p in (c.init, c.base_g, c.base_d) if p and "://" not in p)


def train_on_ray(
    cfg: TrainConfig,
    opts: RayOptions,
    *,
    say: Callable[[str], None] = print,
    wandb_group: str | None = None,
    wandb_job_type: str | None = None,
    console: Any = None,
    rank0_lines: bool = True,
    session: RaySession | None = None,
) -> TrainResult:
    """Run ``gsv_ray.train.loop.train`` on ``opts.workers`` Ray workers; see the module doc. ``console`` (a
    :class:`gsv_ray.console.Chatter`): rank 0's lines (``rank0_lines``; else in the log only) and progress
    are shown there. ``session``: the command's Ray (the caller closes it), else the run's own."""
    from gsv_ray.distributed.shared import nbytes, share

    cfg.validate()
    opts.validate()
    check_machine(opts)
    check_output_path(cfg.output_dir)
    if not opts.resume:
        check_new_run(cfg.output_dir)
    layout, recorded = _check_layout(cfg, opts)
    given, cfg, rebuilt = _rebuild_once(cfg, opts, say)
    given_storage, storage, storage_fs, storage_path = _checked_storage(opts, cfg.output_dir, recorded)
    import ray

    own, session = session is None, session or RaySession()
    session.connect(opts.address, num_cpus=opts.workers * opts.cpus_per_worker)
    check_resources(opts)
    _check_shared_storage(storage)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    write_config(Path(cfg.output_dir), given, rebuilt.report.inputs)  # what a --resume compares, from the start
    shared = share(rebuilt)
    init_sha = rebuilt.report.inputs["init"].get("sha256", "")
    name = recorded[0] if recorded is not None else run_name(cfg, init_sha, opts.resume)
    _record_run(cfg.output_dir, name, layout, given_storage)
    say(_run_line(cfg, opts, name, nbytes(rebuilt), given_storage))
    relay, display = _console_relay(console, local=session.started, lines=rank0_lines)
    job = WorkerJob(
        train=dataclasses.replace(cfg, resume=None, name=cfg.run_name),  # exports named after -o, as locally
        rebuild=shared,
        experiment=driver_experiment(cfg, rebuilt),
        run_name=name,
        run_uri=run_uri(storage_path, name, opts),  # where the run's RunConfig puts it
        storage_fs=storage_fs,
        output_dir_shown=str(Path(cfg.output_dir).resolve()),
        driver_node=ray.get_runtime_context().get_node_id(),
        forbidden_paths=forbidden_inputs(cfg, given),
        group=wandb_group,
        job_type=wandb_job_type,
        wandb_run_id=wandb_run_id(name),
        relay=relay.queue if relay is not None else None,
    )
    session.add_runs(name)
    try:
        result = _fit(job, cfg, opts, storage, storage_path)
    finally:
        _leave_ray(relay, display, session if own else None)
    return _collect(result, cfg, rebuilt.stage, rebuilt.version, storage_fs, job.run_uri)


def _leave_ray(relay: Any, display: Any, session: RaySession | None) -> None:
    """After a run, however it ended: close the console relay, and close ``session`` when the run owns it
    (our own Ray: its workers stop and the run's scratch goes; a joined cluster: disconnect)."""
    if relay is not None:
        relay.close()
        display.close()
    if session is not None:
        session.close()


def _run_line(cfg: TrainConfig, opts: RayOptions, name: str, shared_bytes: int, storage: str) -> str:
    """The line that says how the run ``name`` is laid out on Ray (``storage`` shown masked)."""
    return (
        f"ray: {opts.workers} worker(s) x (CPU {opts.cpus_per_worker:g}, GPU {opts.gpus_per_worker:g}); "
        f"global batch = {cfg.batch_size} x {opts.workers} x {cfg.grad_accum}; shared rebuild "
        f"{shared_bytes / 2**20:.0f} MiB in the object store; run {name}; storage {shown(storage)}"
    )


def _checked_storage(
    opts: RayOptions, out: str | Path, recorded: tuple[str, str, str | None] | None
) -> tuple[str, str, Any, str]:
    """(the storage as given, with credentials taken, its filesystem, its path there), checked
    writable before Ray starts: a bad --storage is one line, nothing else happens."""
    from gsv_ray.storage import check_writable, resolve, take_credentials

    given = run_storage(opts, out, recorded)
    storage = take_credentials(given, flag="--storage", joined=bool(joined_address(opts.address)))
    check_writable(storage)
    storage_fs, storage_path = resolve(storage)
    return given, storage, storage_fs, storage_path


def _fit(job: WorkerJob, cfg: TrainConfig, opts: RayOptions, storage: str, storage_path: str):
    """Fit the run (one actor, or a ``TorchTrainer``); any failure as one line (:func:`ray_failure`)."""
    try:
        if runs_in_actor(opts):
            return _fit_in_actor(job, cfg, opts, storage, storage_path)
        trainer = torch_trainer(
            job,
            workers=opts.workers,
            resources=worker_resources(opts),
            use_gpu=opts.gpus_per_worker > 0,
            keep_last=cfg.keep_last,
            max_failures=opts.max_failures,
            storage_path=storage_path,
            placement_strategy=opts.placement_strategy,
        )
        with own_signal_handlers():  # Train's Ctrl-C handler stays installed after fit() otherwise
            return trainer.fit()
    except SystemExit:  # Ray Train's own SIGINT handler aborts the run, then calls sys.exit
        raise KeyboardInterrupt from None
    except GsvError:
        raise
    except Exception as e:
        raise ray_failure(e) from e


def torch_trainer(
    job: WorkerJob,
    *,
    workers: int,
    resources: dict[str, float],
    use_gpu: bool,
    keep_last: int,
    max_failures: int,
    storage_path: str,
    placement_strategy: str = "PACK",
    callbacks=None,
):
    """The one place a ``TorchTrainer`` is built: ``workers`` Ray Train workers running
    :func:`gsv_ray.distributed.worker.train_loop_per_worker` on ``job``, as the Train run
    ``job.run_name`` (a re-run of that name continues it). Ray passes ``train_loop_config`` as a
    dict: the job travels in it under :data:`gsv_ray.distributed.job.JOB_KEY`."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from gsv_ray.distributed.worker import train_loop_per_worker

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={JOB_KEY: job},
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, placement_strategy=placement_strategy, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=job.run_name,
            storage_path=storage_path,
            storage_filesystem=job.storage_fs,
            callbacks=callbacks,
            failure_config=FailureConfig(max_failures=max_failures),
            # the one retention policy: the last --keep-last step_<N> checkpoints + ``final``
            checkpoint_config=CheckpointConfig(num_to_keep=keep_last + 1),
        ),
    )


def _fit_in_actor(job: WorkerJob, cfg: TrainConfig, opts: RayOptions, storage: str, storage_path: str):
    """One worker: a Tune experiment ``name`` of one trial, no search (:func:`runs_in_actor`);
    ``--resume`` restores the experiment (its trial continues from its newest checkpoint). Tune
    stops on Ctrl-C and returns; that is raised here as the ``KeyboardInterrupt`` local mode gets."""
    from ray import tune

    from gsv_ray.distributed.worker import one_actor_loop

    trainable = tune.with_resources(tune.with_parameters(one_actor_loop, job=job), worker_resources(opts))
    name, storage_fs = job.run_name, job.storage_fs
    experiment = experiment_uri(storage, name)
    tuner = None
    if opts.resume and tune.Tuner.can_restore(experiment, storage_filesystem=storage_fs):
        try:
            tuner = tune.Tuner.restore(
                experiment,
                trainable=trainable,
                resume_unfinished=True,
                resume_errored=True,
                storage_filesystem=storage_fs,
            )
        except (EOFError, pickle.UnpicklingError):
            # Tune writes its experiment state (tuner.pkl) in place: a kill during that write leaves it
            # empty or cut. Nothing of it is needed: a new experiment of the same name has the same trial
            # folder, where the worker finds the newest complete checkpoint on storage itself.
            tuner = None
    if tuner is None:
        tuner = tune.Tuner(
            trainable,
            param_space={},
            tune_config=tune.TuneConfig(num_samples=1, trial_dirname_creator=_actor_trial_dirname),
            # verbose=0: no Tune status tables (our console shows the progress)
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage_path,
                storage_filesystem=storage_fs,
                verbose=0,
                **trial_checkpoints(cfg.keep_last, opts.max_failures),
            ),
        )
    with own_signal_handlers():  # Tune's Ctrl-C handler stays installed after fit() otherwise
        (result,) = tuner.fit()
    if result.error is not None:
        raise ray_failure(result.error, rank=0) from result.error
    if not (result.metrics or {}).get("done"):  # Tune stopped on Ctrl-C (SIGINT) and returned
        raise KeyboardInterrupt
    return result


def _actor_trial_dirname(trial) -> str:
    return ACTOR_TRIAL


def worker_resources(opts) -> dict[str, float]:
    """One worker's Ray resources (``RayOptions`` or tune's options: the same fields)."""
    return {"CPU": opts.cpus_per_worker, **({"GPU": opts.gpus_per_worker} if opts.gpus_per_worker else {})}


def trial_checkpoints(keep_last: int, max_failures: int) -> dict[str, Any]:
    """``tune.RunConfig`` arguments for workers that train in Tune trials (a Train run's come from
    Train's ``RunConfig``): the last ``--keep-last`` checkpoints + the final report's, and
    ``--max-failures`` restarts."""
    from ray import tune

    return {
        "checkpoint_config": tune.CheckpointConfig(num_to_keep=keep_last + 1),
        "failure_config": tune.FailureConfig(max_failures=max_failures),
    }


def _console_relay(console, *, local: bool, lines: bool = True):
    """Rank 0's lines (``lines``; else to the log: the console routes print there) and progress,
    relayed to the driver's console (none without a console); ``local``: our own Ray on this machine
    (see :class:`gsv_ray.distributed.relay.Relay`)."""
    if console is None:
        return None, None
    from gsv_ray.console import ProgressDisplay
    from gsv_ray.distributed.relay import Relay

    display = ProgressDisplay(console, label="train")

    def handle(e: dict[str, Any]) -> None:
        if e["kind"] == "line":
            (display.say if lines else print)(f"[rank 0] {e['text']}")
        elif e["kind"] == "start":
            display.start(int(e["total"]), int(e["step"]))
        elif e["kind"] == "step":
            display.update(int(e["step"]), {k: e[k] for k in ("loss", "lr") if e.get(k) is not None})

    return Relay(handle, local=local), display


def worker_cause(e: BaseException) -> tuple[int | None, BaseException | str]:
    """(rank, cause) of a failed Ray Train run: the first failing rank's exception
    (``ray.train.WorkerGroupError.worker_failures``; a ``RayTaskError`` around it, as Tune gives a
    failed trial, is unwrapped), else (None, the exception a ``RayTaskError`` carries, or one line of
    ``e``)."""
    from ray.train import WorkerGroupError

    inner = e if isinstance(e, WorkerGroupError) else getattr(e, "cause", None)
    if isinstance(inner, WorkerGroupError) and inner.worker_failures:
        rank, exc = min(inner.worker_failures.items())
        cause = getattr(exc, "cause", None) or exc
        return rank, cause if isinstance(cause, GsvError) else _cause_line(cause)
    if isinstance(inner, BaseException):  # a trial that trained in its own actor: its exception
        return None, inner if isinstance(inner, GsvError) else _cause_line(inner)
    return None, _cause_line(e)


def ray_failure(e: BaseException, rank: int | None = None) -> GsvError:
    """One line with the real cause of a failed Ray run (:func:`worker_cause`), its own line
    when it is one of ours. Ray's message alone was "Training failed due to worker errors:." with
    the cause in 100 lines above. ``rank``: the failing rank when the caller knows it (one actor)."""
    found, cause = worker_cause(e)
    rank = found if found is not None else rank
    if isinstance(cause, GsvError):  # ours: the user's to fix, as it would be in local mode
        return type(cause)(f"training on Ray failed on rank {rank}: {cause}")
    if rank is None:
        return InfraError(f"training on Ray failed: {cause}", fix="see the log")
    return InfraError(
        f"training on Ray failed on rank {rank}: {cause}",
        fix="see that worker's lines in the log; raise --max-failures to let Ray restart failed workers",
    )


def _cause_line(exc: BaseException) -> str:
    """``Type: message`` of an exception (for a RayTaskError, the last line of its remote traceback):
    not :func:`~gsv_ray.errors.first_line`, which would show a remote traceback's first line."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    tail = [ln for ln in lines if not ln.startswith((" ", "\t"))]
    if len(lines) > 1 and tail:  # a traceback: its last unindented line names the exception
        return clip(tail[-1].strip(), 240, "")
    return clip(f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": "), 240, "")


def is_local_checkpoint(ckpt) -> bool:
    import pyarrow.fs as pafs

    return isinstance(ckpt.filesystem, pafs.LocalFileSystem)


def _collect(result, cfg: TrainConfig, stage: str, version: str | None, storage_fs, uri: str) -> TrainResult:
    """Place the run's outputs (from the final reported checkpoint) into ``-o`` as local mode does."""
    out = Path(cfg.output_dir)
    ckpt = result.checkpoint
    if ckpt is None:
        raise InfraError("the Ray run finished without reporting its outputs", path=out)
    with ckpt.as_directory() as d:  # in place for local storage, else downloaded
        place_outputs(Path(d) / FINAL_RUN, out, move=is_local_checkpoint(ckpt))
    exports = sorted(run_exports(out))
    metrics = result.metrics or {}
    steps = int(metrics.get("step", 0))
    newest = checkpoint_folders(storage_fs, uri)  # the training state (the final report holds the outputs)
    last = Path(uri) / newest[0][1] if newest else Path(uri)
    from gsv_ray.track import read_metrics

    val = [
        {k: v for k, v in r.items() if k not in ("split", "time")}
        for r in (read_metrics(out / "metrics.jsonl", split="val") if (out / "metrics.jsonl").is_file() else [])
    ]
    return TrainResult(
        run_dir=out,
        stage=stage,
        version=version,
        steps=steps,
        epochs=int(metrics.get("epochs", 0)),
        exports=exports,
        last_checkpoint=last,
        val_history=val,
    )
