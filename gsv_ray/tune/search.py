"""``gsv-ray tune``: Ray Tune over the reduced LR scale and the warmup, from one shared rebuild.

Each trial is a Tune *function* trainable that builds and fits a Ray Train ``TorchTrainer`` over
the unchanged training loop (``TuneReportCallback`` forwards the workers' reports to Tune; a
``TorchTrainer`` given to the Tuner directly is refused by Ray 2.60). The rebuild runs once, on
the driver, before any trial; every trial gets a reference to the shared weights, never the path.
ASHA compares the search's objective (``--metric``, :class:`Objective`: ``val/quality`` by
default) at our own ``step`` counter (Tune's ``training_iteration`` restarts after a restore).
Trial Train runs are named after the trial, so a restored tune run continues interrupted trials
from their last checkpoints instead of starting them again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

from gsv_ray.atomic import write_json
from gsv_ray.distributed import RayOptions, own_signal_handlers
from gsv_ray.errors import ConfigError, check_file_name, check_output_path
from gsv_ray.options import check, option, same_as
from gsv_ray.train.config import TrainConfig
from gsv_ray.train.rundir import SEARCH_RECORD, TUNE_RESULTS
from gsv_ray.train.rundir import exports as run_exports
from gsv_ray.tune.params import LR_SCALE, PARAM_FIELDS, WARMUP_STEPS, TrialParams
from gsv_ray.tune.results import (
    COMPLETED,
    EARLY_STOPPED,
    FAILED,
    INTERRUPTED,
    NOT_STARTED,
    TrialSummary,
    TuneOutcome,
    pick_best,
)

#: ``--metric`` names with their reported key and direction; any other name is a logged validation
#: metric ``val/NAME``, whose direction ``--mode`` must give.
NAMED_METRICS = {"quality": ("val/quality", "min"), "val_loss": ("val/loss", "min")}
DEFAULT_METRIC = "quality"
MODES = ("min", "max")


@dataclass(frozen=True)
class Objective:
    """What a search ranks trials by: the reported key (``val/quality``, ``val/loss``, ``val/mel_l1``...)
    and whether lower or higher is better. ASHA, the search algorithm, the results, the W&B summary
    and ``-o/best`` all take it from here."""

    metric: str
    mode: str

    def better(self, a: float, b: float) -> bool:
        """Whether value ``a`` is strictly better than ``b``."""
        return a < b if self.mode == "min" else a > b


#: Held out when neither --val-fraction nor --val-names is given: trials are compared by their
#: validation metric on these utterances (the same ones for every trial), which no trial trains on.
TUNE_VAL_FRACTION = 0.1

#: Default warmup lengths searched, as fractions of --max-steps.
WARMUP_FRACTIONS = (0.0, 0.05, 0.2)


SEARCH, RESOURCES = "search", "resources"
SEARCHES, SCHEDULERS = ("random", "optuna"), ("asha", "fifo")


@dataclass
class TuneOptions:
    """The search: space, algorithm, scheduler, resources. Every field is also a flag and a YAML key."""

    num_samples: int = option(8, low=1, group=SEARCH, help="trials")
    lr_scale_range: tuple[float, float] = option(
        (0.02, 1.0),
        low=0,
        low_open=True,
        group=SEARCH,
        metavar=("LO", "HI"),
        help="lr_scale searched log-uniformly in [LO, HI]; 1 is upstream's LR",
    )
    warmup_choices: list[int] | None = option(
        None,
        low=0,
        group=SEARCH,
        metavar="STEPS",
        help="warmup lengths searched (default: "
        + ", ".join(f"{f * 100:g}%" for f in WARMUP_FRACTIONS)
        + " of --max-steps)",
    )
    search: str = option("random", choices=SEARCHES, group=SEARCH, help="search algorithm")
    search_seed: int | None = option(
        None,
        group=SEARCH,
        help="seed of the search: the same seed samples the same settings (default: none, a new sample each time)",
    )
    scheduler: str = option(
        "asha", choices=SCHEDULERS, group=SEARCH, help="asha stops weak trials early; fifo runs all to the end"
    )
    grace_steps: int | None = option(
        None, low=1, group=SEARCH, help="ASHA: steps before a trial may be stopped (default --max-steps / 4)"
    )
    reduction_factor: float = option(
        2.0, low=1, low_open=True, group=SEARCH, help="ASHA: 1/this of the trials go on at each rung"
    )
    max_concurrent: int | None = option(
        None, low=1, group=SEARCH, help="trials at once (default: as many as the CPUs/GPUs allow)"
    )
    workers_per_trial: int = option(1, low=1, group=RESOURCES, help="Ray Train workers per trial")
    gpus_per_worker: float = same_as(RayOptions, "gpus_per_worker", group=RESOURCES)
    cpus_per_worker: float = same_as(RayOptions, "cpus_per_worker", group=RESOURCES)
    max_failures: int = same_as(
        RayOptions, "max_failures", group=RESOURCES, help="restarts of a trial's failed workers"
    )
    address: str | None = same_as(RayOptions, "address", group=RESOURCES)
    storage: str | None = same_as(RayOptions, "storage", group=RESOURCES)
    name: str | None = option(
        None, metavar="NAME", group=RESOURCES, help="the tune run's name (W&B group); default tune-<-o folder>"
    )
    resume: bool = option(
        False, yaml=False, group=RESOURCES, help="continue the tune run of this name after an interruption"
    )
    metric: str = option(
        DEFAULT_METRIC,
        metavar="NAME",
        group=SEARCH,
        help="what trials are ranked by: quality (val/quality, lower is better), val_loss (val/loss) "
        "or any logged validation metric val/NAME (with --mode)",
    )
    mode: str | None = option(
        None,
        choices=MODES,
        group=SEARCH,
        help="min or max: whether lower or higher --metric is better (default min for "
        "quality and val_loss; required for a val/NAME)",
    )
    refit: bool = option(
        True,
        group=SEARCH,
        help="after the search, train the winning settings on every utterance (held-out ones "
        "included) for the winner's best step: that is -o/best (--no-refit: the winning "
        "trial's own weights)",
    )

    def objective(self) -> Objective:
        """The reported key and direction ``--metric`` / ``--mode`` name (one line when they cannot)."""
        if self.metric in NAMED_METRICS:
            key, mode = NAMED_METRICS[self.metric]
            return Objective(key, self.mode or mode)
        if not self.metric.startswith("val/") or len(self.metric) <= len("val/"):
            raise ConfigError(
                f"--metric {self.metric} is not a validation metric",
                fix="use --metric quality, --metric val_loss or a logged validation metric such as "
                "--metric val/mel_l1 --mode min",
            )
        if self.mode is None:
            raise ConfigError(
                f"--metric {self.metric} needs --mode: whether lower (min) or higher (max) is better",
                fix="add --mode min or --mode max",
            )
        return Objective(self.metric, self.mode)

    def warmups(self, max_steps: int) -> list[int]:
        """The warmup lengths searched: the given list, else WARMUP_FRACTIONS of ``max_steps`` (a fixed
        default of 0/50/200 steps did not fit a short search: `tune --max-steps 4` failed)."""
        if self.warmup_choices is not None:
            return list(self.warmup_choices)
        return sorted({int(max_steps * f) for f in WARMUP_FRACTIONS})

    def validate(self, max_steps: int) -> None:
        check(self)
        if self.name is not None:  # a folder of the storage (<storage>/<name>) and the W&B group
            check_file_name(self.name, "--name")
        lo, hi = self.lr_scale_range
        if not lo < hi:
            raise ConfigError(
                f"--lr-scale-range must be two positive numbers LO < HI, got {lo} {hi}",
                fix="e.g. --lr-scale-range 0.02 1.0",
            )
        warmups = self.warmups(max_steps)
        if not warmups:
            raise ConfigError(
                "--warmup-choices must be one or more numbers >= 0, got none", fix="e.g. --warmup-choices 0 100 500"
            )
        if any(w >= max_steps for w in warmups):
            raise ConfigError(
                f"every warmup must be shorter than --max-steps {max_steps}, got {warmups}",
                fix="shorten the warmups or drop --warmup-choices (default: 0, 5 % and 20 % of --max-steps)",
            )
        self.objective()


#: TrainConfig fields a search does not take: searched per trial, or named differently for tune
#: (tune's --resume continues the search; --name names the search, exports are named after -o).
NOT_TUNE_OPTIONS = (*PARAM_FIELDS, "resume", "name", "epochs")


def load_tune_config(
    yaml_path: str | Path | None = None, *, train: dict[str, Any] | None = None, search: dict[str, Any] | None = None
) -> tuple[TrainConfig, TuneOptions]:
    """The base training config and the search from one YAML file (training and search options side
    by side) updated by flag values (``train``: TrainConfig fields; ``search``: TuneOptions fields).
    ``-o`` defaults to ``gsv-ray-runs/<name>``."""
    from gsv_ray.options import split_mapping
    from gsv_ray.train.config import load_config, read_options_file

    loaded = read_options_file(yaml_path) if yaml_path is not None else {}
    search_yaml, train_yaml = split_mapping(
        loaded, TuneOptions, (TrainConfig, NOT_TUNE_OPTIONS), path=yaml_path or "<config>"
    )
    values = {**search_yaml, **{k: v for k, v in (search or {}).items() if v is not None}}
    opts = TuneOptions(**values)
    train = dict(train or {})
    if all(d.get(k) is None for d in (train, train_yaml) for k in ("val_fraction", "val_names")):
        train["val_fraction"] = TUNE_VAL_FRACTION  # train's default holds out nothing; trials need a held-out set
    if not train.get("output_dir") and not train_yaml.get("output_dir"):
        train["output_dir"] = f"gsv-ray-runs/{opts.name or 'tune'}"
    cfg = load_config(None, mapping=train_yaml, **train)
    _check_search(cfg, opts)
    return cfg, opts


def _check_search(cfg: TrainConfig, opts: TuneOptions) -> None:
    if cfg.max_steps is None:
        raise ConfigError(
            "tune needs --max-steps (the scheduler compares trials at the same step counts)", fix="pass --max-steps N"
        )
    if not cfg.val_fraction and not cfg.val_names:  # else Tune fails after the first trial's training
        raise ConfigError(
            "tune compares trials on held-out utterances, but --val-fraction 0 holds out nothing",
            fix=f"drop --val-fraction 0 (tune's default holds out {TUNE_VAL_FRACTION:g}) or name held-out "
            "utterances with --val-names FILE",
        )
    opts.validate(cfg.max_steps)


def _check_local_fit(opts: TuneOptions) -> None:
    """Before our own local Ray starts (its CPUs are known): the trials fit in it, or one line now."""
    import ray

    from gsv_ray.distributed import joined_address, local_cpus

    if not ray.is_initialized() and not joined_address(opts.address):
        resources = trial_resources(opts)
        _check_trials_fit(opts, resources["CPU"], local_cpus(_search_cpus(opts, resources)))


def param_space(opts: TuneOptions, max_steps: int) -> dict[str, Any]:
    from ray import tune

    lo, hi = opts.lr_scale_range
    return {LR_SCALE: tune.loguniform(lo, hi), WARMUP_STEPS: tune.choice(opts.warmups(max_steps))}


def search_algorithm(opts: TuneOptions, objective: Objective):
    if opts.search == "random":
        if opts.search_seed is None:
            return None  # Tune's default: random sampling of the param space
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=opts.search_seed)
    try:
        import optuna
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise ConfigError(
            "--search optuna needs the optuna package", fix="pip install 'gsv-ray[optuna]' or use --search random"
        ) from None
    if opts.search_seed is None:
        return OptunaSearch(metric=objective.metric, mode=objective.mode)
    return OptunaSearch(
        metric=objective.metric, mode=objective.mode, sampler=optuna.samplers.TPESampler(seed=opts.search_seed)
    )


EARLY_STOPPED_RECORD = ".gsv-early-stopped"  # in -o: trial ids ASHA stopped, one per line


def scheduler(opts: TuneOptions, max_steps: int, val_every: int, record: Path, board: str | None = None):
    from ray.tune.schedulers import FIFOScheduler

    from gsv_ray.tune.asha import RecordingASHA

    if opts.scheduler == "fifo":
        return FIFOScheduler()
    grace = min(max_steps, opts.grace_steps or max(min(val_every, max_steps), max_steps // 4))
    # max_t one past the last step: ASHA stops any trial that reaches max_t, which would kill a trial
    # at its last checkpoint report, before it writes its export
    return RecordingASHA(
        time_attr="step",
        max_t=max_steps + 1,
        grace_period=grace,
        reduction_factor=opts.reduction_factor,
        record=record,
        board=board,
    )


def runs_in_trial(opts: TuneOptions) -> bool:
    """Whether each trial trains in its own Tune actor (one worker per trial) rather than through a
    Ray Train worker group (``--workers-per-trial`` > 1): the same loop, checkpoints, restore and
    W&B run, without a Train controller and worker group to start (~10 s of ~30 s to a tune's first
    step on 2 cores, measured: docs/design/benchmarks.md)."""
    return opts.workers_per_trial == 1


#: What a trial whose workers are a Ray Train run reserves for its Tune function (the run's driver): the
#: run's workers request their own placement group. Reserving them in the trial too held each worker's
#: CPUs twice, and with --max-concurrent 2 every trial's function held the CPUs its workers waited for
#: (Ray Train's worker-group start timed out and retried, forever).
TRAIN_DRIVER = {"CPU": 1.0}


def max_concurrent(opts: TuneOptions, cluster: dict[str, float]) -> int | None:
    """Tune's ``max_concurrent_trials``: ``--max-concurrent``, else Tune's own count (trials at once as
    the cluster's resources allow); for trials whose workers are a Ray Train run, at most as many as
    fit with their workers. Tune sees only such a trial's function (:data:`TRAIN_DRIVER`): left to it,
    it starts a function per CPU, and when those hold the CPUs the runs' workers need, none starts."""
    if opts.max_concurrent or runs_in_trial(opts):
        return opts.max_concurrent
    need = trial_resources(opts)
    return max(1, int(min(cluster.get(k, 0.0) // v for k, v in need.items() if v)))


def trial_resources(opts: TuneOptions) -> dict[str, float]:
    """What one trial holds: in its own actor, one worker's CPUs and GPUs; otherwise its Tune actor
    (1 CPU) + its workers' (Ray Train's controller takes none: ``num_cpus=0``)."""
    from gsv_ray.distributed import worker_resources

    if runs_in_trial(opts):
        return worker_resources(opts)
    return {
        "CPU": TRAIN_DRIVER["CPU"] + opts.workers_per_trial * opts.cpus_per_worker,
        **({"GPU": opts.workers_per_trial * opts.gpus_per_worker} if opts.gpus_per_worker else {}),
    }


def trial_run_uri(storage_path: str, tune_name: str, trial_id: str, opts: TuneOptions) -> str:
    """Where a trial's checkpoints and outputs are on storage (:mod:`gsv_ray.distributed.layout`)."""
    from gsv_ray.distributed import trial_run_uri as layout_trial_run_uri

    return layout_trial_run_uri(storage_path, tune_name, trial_id, in_actor=runs_in_trial(opts))


def trial_function(
    config: dict[str, Any],
    *,
    base: TrainConfig,
    shared,
    opts: TuneOptions,
    tune_name: str,
    storage_path: str,
    storage_fs,
    forbidden: list[str],
    experiment=None,
    relay=None,
    driver_node: str | None = None,
) -> None:
    """One trial: the training loop at this trial's lr_scale and warmup, in this actor
    (:func:`runs_in_trial`) or on a Ray Train worker group."""
    from ray import tune

    from gsv_ray.distributed import WorkerJob, torch_trainer, trial_loop, trial_train_run, worker_resources
    from gsv_ray.tune.asha import board_name

    trial_id = tune.get_context().get_trial_id()
    train_cfg = dataclasses.replace(
        base, **TrialParams.of(config).as_dict(), resume=None, name=base.run_name
    )  # exports named like train's, after -o
    job = WorkerJob(
        train=train_cfg,
        rebuild=shared,
        experiment=experiment,
        run_name=trial_train_run(tune_name, trial_id),
        run_uri=trial_run_uri(storage_path, tune_name, trial_id, opts),
        storage_fs=storage_fs,
        forbidden_paths=tuple(forbidden),
        output_dir_shown=str(Path(base.output_dir).resolve() / "trials" / trial_id),
        driver_node=driver_node,  # a worker on this node can reach output_dir_shown (W&B artifacts)
        group=tune_name,
        job_type="trial",
        wandb_run_id=trial_id,
        wandb_name=trial_id,
        relay=relay,
        relay_run=trial_id,  # progress rows on the driver's console
        stop_board=board_name(tune_name) if opts.scheduler == "asha" else None,
    )  # ASHA's decisions
    if runs_in_trial(opts):
        trial_loop(job)
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    torch_trainer(
        job,
        workers=opts.workers_per_trial,
        resources=worker_resources(opts),
        use_gpu=opts.gpus_per_worker > 0,
        keep_last=base.keep_last,
        max_failures=opts.max_failures,
        storage_path=storage_path,
        callbacks=[TuneReportCallback()],
    ).fit()


def trial_dirname(trial) -> str:
    """Each trial's Tune folder is named by its id: a ``Result`` (public API) then says which trial
    it is (``Path(result.path).name``), also for a trial that never reported."""
    return trial.trial_id


def default_name(cfg: TrainConfig) -> str:
    return f"tune-{Path(cfg.output_dir).resolve().name}"


def run_tune(
    cfg: TrainConfig,
    opts: TuneOptions,
    *,
    say: Callable[[str], None] = print,
    console: Any = None,
    session: Any = None,
):
    """Run (or ``--resume``) the search; returns the ``TuneOutcome`` and writes the results to ``-o``.
    ``session`` (a :class:`gsv_ray.distributed.RaySession`): the command's Ray, kept after the search for
    its refit (the caller closes it); without one the search's own Ray ends with it."""
    import ray
    from ray import tune

    from gsv_ray.console import shown
    from gsv_ray.distributed import RaySession, experiment_uri, share, trial_train_run

    cfg.validate()
    _check_search(cfg, opts)
    _check_local_fit(opts)
    out = Path(cfg.output_dir)
    check_output_path(out)
    name = opts.name or default_name(cfg)
    opts, given_storage, storage_fs, storage_path = _storage(opts, out)
    experiment_path = experiment_uri(shown(given_storage), name)  # for messages (credentials masked)
    objective = _check_start(out, name, opts, _exists(storage_fs, experiment_uri(storage_path, name)), experiment_path)

    cfg, rebuilt = _rebuild_once(cfg, say)

    resources = trial_resources(opts)
    own, session = session is None, session or RaySession()
    _search_ray(session, opts, resources, trial_train_run(name, "*"))
    _check_trials_fit(opts, resources["CPU"], ray.cluster_resources().get("CPU", 0))

    shared = share(rebuilt)
    from gsv_ray.tune.asha import start_board

    board = start_board(name) if opts.scheduler == "asha" else None  # noqa: F841 -- alive while we hold it
    relay, rows = _console_relay(console, cfg.max_steps, local=session.started)
    trainable = _trainable(cfg, opts, name, rebuilt, shared, resources, storage_path, storage_fs, relay)
    if opts.resume:
        say(f"resuming tune run {name} from {experiment_path}")
        uri = experiment_uri(opts.storage, name)
        tuner = tune.Tuner.restore(uri, trainable, resume_unfinished=True, storage_filesystem=storage_fs)
    else:
        tuner = _new_tuner(trainable, cfg, opts, name, storage_path, storage_fs, objective, rows)
    say(_search_line(cfg, opts, name, shown(given_storage)))
    try:
        grid = _fit_search(tuner, relay, rows)
        missing = unreported_metric(grid, objective)
        if missing is not None:
            _forget_new_search(opts, storage_fs, experiment_uri(storage_path, name), out)
            raise missing
        outcome = collect(grid, cfg, opts, name, rebuilt, storage_fs, storage_path, objective)
    finally:
        if own:  # our own Ray: stop it, then remove the trials' node scratch (success, failure, Ctrl-C)
            session.close()
    if not opts.resume and len(outcome.trials) < opts.num_samples:
        outcome.interrupted = True  # Ctrl-C: Tune returns a partial ResultGrid without raising
    return outcome


def _search_line(cfg: TrainConfig, opts: TuneOptions, name: str, storage_shown: str) -> str:
    return (
        f"tune {name}: {opts.num_samples} trials, lr_scale in {list(opts.lr_scale_range)}, warmup in "
        f"{opts.warmups(cfg.max_steps)}, {opts.search} search, {opts.scheduler} scheduler, "
        f"{opts.workers_per_trial} worker(s)/trial; storage {storage_shown}"
    )


def _search_ray(session: Any, opts: TuneOptions, resources: dict[str, float], trial_runs: str) -> None:
    """``session`` connected for the search: a local Ray gets logical CPUs for two concurrent trials at
    least (more only where the machine has the cores) and the dashboard (early-stopped trials then free
    their workers); the trials' node scratch (``trial_runs``) goes when it ends."""
    session.connect(opts.address, num_cpus=_search_cpus(opts, resources), dashboard=True)
    session.add_runs(trial_runs)


def _search_cpus(opts: TuneOptions, resources: dict[str, float]) -> float:
    """The logical CPUs a search asks of its local Ray: two concurrent trials' at least."""
    return min(2, opts.num_samples) * resources["CPU"]


def _trainable(
    cfg: TrainConfig,
    opts: TuneOptions,
    name: str,
    rebuilt: Any,
    shared: Any,
    resources: dict[str, float],
    storage_path: str,
    storage_fs: Any,
    relay: Any,
):
    """:func:`trial_function` with what every trial shares bound (the rebuild in the object store, the
    experiment scanned once here, the console relay) and each trial's ``resources``."""
    import ray
    from ray import tune

    from gsv_ray.distributed import driver_experiment, forbidden_inputs

    return tune.with_resources(
        tune.with_parameters(
            trial_function,
            base=cfg,
            shared=shared,
            opts=opts,
            tune_name=name,
            storage_path=storage_path,
            storage_fs=storage_fs,
            experiment=driver_experiment(cfg, rebuilt),  # scanned once for every trial
            relay=relay.queue if relay is not None else None,
            driver_node=ray.get_runtime_context().get_node_id(),
            forbidden=forbidden_inputs(cfg),
        ),
        resources if runs_in_trial(opts) else TRAIN_DRIVER,
    )


def _rebuild_once(cfg: TrainConfig, say: Callable[[str], None]):
    """(the config the trials run, the rebuild): rebuilt here once for every trial; every trial
    reports at each validation, with the checkpoint taken there."""
    from gsv_ray.cache import default_cache_root
    from gsv_ray.rebuild import rebuild_cached

    cfg = dataclasses.replace(cfg.localised(default_cache_root(), data=False), save_every=cfg.val_every)
    rebuilt = rebuild_cached(cfg.rebuild_spec())
    say(f"rebuilt once for every trial ({'reused' if rebuilt.cache_hit else 'new'}): {rebuilt.report.message()}")
    return cfg, rebuilt


def _storage(opts: TuneOptions, out: Path):
    """(the options Ray gets, their storage without credentials; the storage as given; its pyarrow
    filesystem and path), checked writable. Without ``--storage``: ``-o/ray``."""
    from gsv_ray.distributed import default_storage, joined_address
    from gsv_ray.storage import check_writable, resolve, take_credentials

    given_storage = opts.storage or default_storage(out)
    storage = take_credentials(given_storage, flag="--storage", joined=bool(joined_address(opts.address)))
    opts = dataclasses.replace(opts, storage=storage)  # the options Ray gets (trials) hold no credentials
    check_writable(storage)
    return (opts, given_storage, *resolve(storage))


def _check_start(out: Path, name: str, opts: TuneOptions, exists: bool, experiment_path: str) -> Objective:
    """The search's objective, after checking that ``--resume`` has a search to continue (``exists``:
    its experiment folder is on storage) ranked the same way, or that a new one replaces nothing;
    a new search's record is written to ``-o``."""
    if opts.resume and not exists:
        raise ConfigError(
            f"no tune run named {name!r} to resume",
            path=experiment_path,
            fix="check --name / -o / --storage, or drop --resume to start it",
        )
    if not opts.resume:  # a new search never replaces another's results or joins its W&B group
        if exists:
            raise ConfigError(
                f"a tune run named {name!r} already exists",
                path=experiment_path,
                fix="continue it with --resume, or start a new one with another --name",
            )
        done = [n for n in TUNE_RESULTS if (out / n).exists()]
        if done:
            raise ConfigError(
                f"-o already holds a tune run's results ({', '.join(done)})",
                path=out,
                fix="continue it with --resume (and its --name), or choose a new -o",
            )
    objective = opts.objective()
    if opts.resume:  # the same search, or one line: its ranking (ASHA's, the search's) cannot change midway
        check_same_search(out, name, objective)
    else:
        record_search(out, name, objective)
    return objective


def _check_trials_fit(opts: TuneOptions, per_trial: float, total_cpu: float) -> None:
    """One trial, and ``--max-concurrent`` trials, fit in the cluster's CPUs (one line when not)."""
    if per_trial > total_cpu:
        held = "its worker" if runs_in_trial(opts) else f"its driver and {opts.workers_per_trial} worker(s)"
        raise ConfigError(
            f"one trial needs {per_trial:g} CPUs ({held} x {opts.cpus_per_worker:g}) but the cluster has {total_cpu:g}",
            fix="lower --workers-per-trial / --cpus-per-worker or add nodes",
        )
    if opts.max_concurrent and opts.max_concurrent * per_trial > total_cpu:
        fits = int(total_cpu // per_trial)
        raise ConfigError(
            f"--max-concurrent {opts.max_concurrent} trials need {opts.max_concurrent * per_trial:g} CPUs "
            f"but the cluster has {total_cpu:g}",
            fix=f"use --max-concurrent {fits} or less",
        )


def _new_tuner(
    trainable, cfg: TrainConfig, opts: TuneOptions, name: str, storage_path: str, storage_fs, objective: Objective, rows
):
    """A new search's ``Tuner``: its space, algorithm, scheduler, retention and console rows."""
    import ray
    from ray import tune

    from gsv_ray.tune.asha import board_name

    record = Path(cfg.output_dir).resolve() / EARLY_STOPPED_RECORD
    return tune.Tuner(
        trainable,
        param_space=param_space(opts, cfg.max_steps),
        tune_config=tune.TuneConfig(
            metric=objective.metric,
            mode=objective.mode,
            num_samples=opts.num_samples,
            search_alg=search_algorithm(opts, objective),
            scheduler=scheduler(opts, cfg.max_steps, cfg.val_every, record, board_name(name)),
            max_concurrent_trials=max_concurrent(opts, ray.cluster_resources()),
            trial_dirname_creator=trial_dirname,
        ),
        # verbose=0: Tune's status tables (one per trial start, result and every 30 s) are not for
        # people; we print the results table at the end
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            verbose=0,
            callbacks=[_trial_rows(rows, cfg.max_steps)] if rows else None,
            stop=missing_metric_stopper(objective.metric),
            **_trial_checkpoints(opts, cfg),
        ),
    )


def _forget_new_search(opts: TuneOptions, storage_fs, experiment: str, out: Path) -> None:
    """A new search that ranked nothing (its first reports lacked the metric) leaves nothing behind:
    the same ``-o`` can start again. A resumed one keeps what it had."""
    if not opts.resume:
        storage_fs.delete_dir(experiment)
        (out / SEARCH_RECORD).unlink(missing_ok=True)


def _fit_search(tuner, relay, rows):
    """Run the search with the console rows live; its ``ResultGrid`` (partial after Ctrl-C)."""
    if rows is not None:
        rows.start()
    # Tune's own check of a result without the metric raises a many-line TuneError from the
    # controller; missing_metric_stopper stops the search instead and unreported_metric says it in one line
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    try:
        with own_signal_handlers():  # Tune's Ctrl-C handler stays installed after fit() otherwise
            return tuner.fit()
    finally:
        if relay is not None:
            relay.close()
            rows.close()


def _trial_checkpoints(opts: TuneOptions, cfg: TrainConfig) -> dict[str, Any]:
    """Retention and restarts of trials that train in their own actor (Tune's, as a Train run's are
    Train's)."""
    from gsv_ray.distributed import trial_checkpoints

    return trial_checkpoints(cfg.keep_last, opts.max_failures) if runs_in_trial(opts) else {}


#: what a search started before --metric existed ranked by
LEGACY_OBJECTIVE = Objective("val/loss", "min")


def record_search(out: Path, name: str, objective: Objective) -> None:
    """``-o/search.json``: the search's name and objective, what a ``--resume`` compares."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / SEARCH_RECORD, {"search": name, "metric": objective.metric, "mode": objective.mode}, indent=1)


def check_same_search(out: Path, name: str, objective: Objective) -> None:
    """Refuse a ``--resume`` that would rank the search by another metric or direction than it was
    started with (ASHA's rungs and the search algorithm hold the old one), in one line."""
    try:
        r = json.loads((out / SEARCH_RECORD).read_text())
        if r.get("search") != name:  # another search's record: run_tune says there is none of this name
            return
        was = Objective(str(r["metric"]), str(r["mode"]))
    except FileNotFoundError:  # a search started before the record (it ranked by val/loss), or none
        if not any((out / n).exists() for n in ("results.json", "trials")):
            return
        was = LEGACY_OBJECTIVE
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    if was != objective:
        shown_was, shown_now = metric_flags(was), metric_flags(objective)
        raise ConfigError(
            f"--resume with {shown_now}, but the search {name!r} was started with {shown_was}",
            path=out / SEARCH_RECORD,
            fix=f"resume with {shown_was}, or start a new search (another -o) with {shown_now}",
        )


def metric_flags(objective: Objective) -> str:
    """The flags that select ``objective`` (the short name where it has one)."""
    for short, (key, mode) in NAMED_METRICS.items():
        if (key, mode) == (objective.metric, objective.mode):
            return f"--metric {short}"
    return f"--metric {objective.metric} --mode {objective.mode}"


def missing_metric_stopper(metric: str):
    """A Tune ``Stopper`` (public API, on the driver): a result at a validation step without the
    search's metric ends the whole search at once (the trials never report it; training on would
    rank nothing). Built here so this module imports without Ray."""
    from ray.tune.stopper import Stopper

    class MissingMetric(Stopper):
        def __init__(self, metric: str):
            self.metric, self.missing = metric, False

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            if any(k.startswith("val/") for k in result) and self.metric not in result:
                self.missing = True
            return self.missing

        def stop_all(self) -> bool:
            return self.missing

    return MissingMetric(metric)


def unreported_metric(grid, objective: Objective) -> ConfigError | None:
    """One line when the trials reported validation metrics but not the search's (None otherwise)."""
    seen: set[str] = set()
    for result in grid:
        last = result.metrics or {}
        if objective.metric in last:
            return None
        seen |= {k for k in last if k.startswith("val/")}
    if not seen:
        return None
    names = ", ".join(sorted(seen))
    return ConfigError(
        f"--metric {objective.metric}: the trials report no such metric (they report {names})",
        fix="choose one of those with --metric (and --mode), or --metric val_loss",
    )


def _console_relay(console, max_steps: int, *, local: bool):
    """Each trial's rank 0 sends its steps and validation losses to one row of the driver's console
    (``local``: our own Ray on this machine, see :class:`gsv_ray.distributed.relay.Relay`)."""
    if console is None:
        return None, None
    from gsv_ray.console import TrialsDisplay
    from gsv_ray.distributed import Relay

    rows = TrialsDisplay(console, total=max_steps)

    def handle(e: dict[str, Any]) -> None:
        if e.get("run") is None or e["kind"] == "line":  # a trial's own lines: in the log only
            return
        if e["kind"] == "val":
            rows.update(e["run"], step=e["step"], val=e["val"])
        elif e["kind"] in ("start", "step"):
            rows.update(e["run"], step=e["step"], status="running")

    return Relay(handle, local=local), rows


def _trial_rows(rows, max_steps: int):
    """A Tune ``Callback`` (public API, run on the driver) feeding trial settings and ends to the
    console's rows; defined here so this module imports without Ray."""
    from ray.tune import Callback

    class TrialRows(Callback):
        """Trial settings and ends (Tune's public callback API, on the driver) for the console rows."""

        def __init__(self, rows, max_steps: int):
            self.rows, self.max_steps = rows, max_steps

        def __getstate__(self):  # Tune saves its run config: the live console stays in this process
            return {"rows": None, "max_steps": self.max_steps}

        def on_trial_start(self, iteration, trials, trial, **info):
            if self.rows is None:
                return
            self.rows.update(
                trial.trial_id,
                lr_scale=trial.config.get(LR_SCALE),
                warmup=trial.config.get(WARMUP_STEPS),
                status="starting",
            )

        def on_trial_complete(self, iteration, trials, trial, **info):
            if self.rows is None:
                return
            step = int((trial.last_result or {}).get("step", 0))
            self.rows.update(trial.trial_id, status="done" if step >= self.max_steps else "stopped")

        def on_trial_error(self, iteration, trials, trial, **info):
            if self.rows is None:
                return
            self.rows.update(trial.trial_id, status="failed")

    return TrialRows(rows, max_steps)


def trial_error(error: BaseException) -> str:
    """The real cause of a failed trial, one line: its first failing worker's exception (Tune gives
    ``RayTaskError(WorkerGroupError)`` whose first line is only "ray::ImplicitFunc.train() (pid=...)")."""
    from gsv_ray.distributed import worker_cause

    rank, cause = worker_cause(error)
    return f"rank {rank}: {cause}" if rank is not None else str(cause)


def _exists(fs, path: str) -> bool:
    from pyarrow.fs import FileType

    return fs.get_file_info(path).type != FileType.NotFound


def _history(rows: list[dict], metric: str) -> tuple[int, list[tuple[int, float]], list[tuple[int, float]]]:
    """(last step, the objective's values, LR per step) from a trial's metrics.jsonl rows (``metric``:
    its reported key, ``val/<name>``: a ``split: val`` row's ``<name>``)."""
    split, _, key = metric.partition("/")
    train = [r for r in rows if r.get("split") == "train"]
    val = [(int(r["step"]), float(r[key])) for r in rows if r.get("split") == split and key in r and r[key] == r[key]]
    lr_key = next((k for r in train for k in r if k.startswith("lr/")), None)
    lrs = [(int(r["step"]), float(r[lr_key])) for r in train if lr_key in r] if lr_key else []
    return max((int(r["step"]) for r in train), default=0), val, lrs


def best_point(values: list[tuple[int, float]], objective: Objective) -> tuple[int, float] | None:
    """The (step, value) where the objective was best (the first one on ties)."""
    best = None
    for point in values:
        if best is None or objective.better(point[1], best[1]):
            best = point
    return best


def _reported_history(result, metric: str) -> tuple[int, list[tuple[int, float]], list[tuple[int, float]]]:
    """(last step, the objective's values, LR per step) from what a trial reported to Tune."""
    hist = result.metrics_dataframe
    has = hist is not None and len(hist) and "step" in hist
    val = [(int(s), float(v)) for s, v in zip(hist["step"], hist[metric]) if v == v] if has and metric in hist else []
    lr_col = next((c for c in hist.columns if c.startswith("lr/")), None) if has else None
    lrs = [(int(s), float(v)) for s, v in zip(hist["step"], hist[lr_col])] if lr_col else []
    return (int(hist["step"].max()) if has else 0), val, lrs


def _place_trial_outputs(src: str | None, trial_out: Path, storage_fs) -> tuple[list[str], bool]:
    """(the trial's exports in ``trial_out``, whether they were placed now): a finished trial's outputs
    moved there (local storage) or copied, a stopped one's last checkpoint outputs copied; outputs an
    earlier collect moved there (a search resumed after Ctrl-C) are kept as they are."""
    from pyarrow.fs import LocalFileSystem, copy_files

    from gsv_ray.atomic import make_sparse
    from gsv_ray.distributed import is_final_outputs, place_outputs

    if src is None:
        return [], False
    finished = is_final_outputs(src)
    local = isinstance(storage_fs, LocalFileSystem)
    if finished and local and (trial_out / "metrics.jsonl").is_file() and not any(Path(src).iterdir()):
        return [str(p) for p in run_exports(trial_out)], False
    shutil.rmtree(trial_out, ignore_errors=True)
    trial_out.mkdir(parents=True)
    if local and finished:
        place_outputs(Path(src), trial_out, move=True)  # a finished trial's outputs: moved, not copied
    else:  # remote storage, or a checkpoint's outputs (a --resume reads them again): copied
        copy_files(src, str(trial_out), source_filesystem=storage_fs, destination_filesystem=LocalFileSystem())
    exports = [str(p) for p in run_exports(trial_out)]
    for p in exports:  # pyarrow's copy writes a v2 export's zero padding out: holes again
        make_sparse(p)
    return exports, True


def _fate(failed: bool, steps: int, max_steps: int, stopped_early: bool, has_outputs: bool) -> str:
    """A trial's fate from what it did (its error, its steps, ASHA's record), not Tune's internal status."""
    if failed:
        return FAILED
    if steps >= max_steps:
        return COMPLETED
    if stopped_early:
        return EARLY_STOPPED
    if steps == 0 and not has_outputs:
        return NOT_STARTED
    return INTERRUPTED  # neither finished nor stopped by the scheduler: the search itself was stopped


def collect(
    grid, cfg: TrainConfig, opts: TuneOptions, name: str, rebuilt, storage_fs, storage_path: str, objective: Objective
):
    """Turn the ResultGrid (one public Result per trial, its folder named by its trial id) into a
    ``TuneOutcome``, each trial's fate from what it did (:func:`_fate`); copy their outputs under -o."""
    from gsv_ray.distributed import is_final_outputs, latest_outputs
    from gsv_ray.train.tracking import replay_run
    from gsv_ray.tune.asha import stopped_trials

    out = Path(cfg.output_dir)
    stopped_early = stopped_trials(out / EARLY_STOPPED_RECORD)
    trials: list[TrialSummary] = []
    for result in grid:
        trial_id = Path(result.path).name
        trial_config = result.config or {}
        failed = bool(result.error)
        trial_out = out / "trials" / trial_id
        src = latest_outputs(storage_fs, trial_run_uri(storage_path, name, trial_id, opts))
        finished = src is not None and is_final_outputs(src)
        exports, placed_now = _place_trial_outputs(src, trial_out, storage_fs)
        if placed_now:
            wandb_src = trial_out / "wandb"
            if finished and wandb_src.is_dir():  # a finished trial closed its own W&B run
                for run_dir in wandb_src.glob("*run-*"):  # one folder for all: `wandb sync DIR/wandb/offline-run-*`
                    shutil.copytree(run_dir, out / "wandb" / run_dir.name, dirs_exist_ok=True)
            elif (trial_out / "metrics.jsonl").is_file():  # killed (Ctrl-C, a failure): its W&B records
                # were lost with it; rebuild its run from what its last checkpoint carried
                shutil.rmtree(wandb_src, ignore_errors=True)
                replay_run(
                    trial_out,
                    config={
                        **cfg.to_json(),
                        **TrialParams.of(trial_config).as_dict(),
                        "stage": rebuilt.stage,
                        "version": rebuilt.version,
                    },
                    report=rebuilt.report,
                    out_dir=out,
                    project=cfg.wandb_project,
                    mode=cfg.wandb_mode,
                    group=name,
                    job_type="trial",
                    run_id=trial_id,
                    name=trial_id,
                    fate=FAILED if failed else INTERRUPTED,
                )
        history = _trial_history(result, trial_out, objective)
        status = _fate(failed, history.steps, cfg.max_steps or 0, trial_id in stopped_early, src is not None)
        trials.append(_trial_summary(result, status, history, exports))
    return TuneOutcome(
        name=name,
        stage=rebuilt.stage,
        version=rebuilt.version,
        metric=objective.metric,
        mode=objective.mode,
        trials=trials,
        interrupted=any(t.status in (NOT_STARTED, INTERRUPTED) for t in trials),
        best=pick_best([t for t in trials if t.status != FAILED], objective.mode),
    )


class _TrialHistory(NamedTuple):
    """What a trial did: its last step, the objective's (step, value)s, its LR per step, and the
    (step, value) where the objective was best (None: never measured)."""

    steps: int
    val: list[tuple[int, float]]
    lrs: list[tuple[int, float]]
    best: tuple[int, float] | None


def _trial_history(result, trial_out: Path, objective: Objective) -> _TrialHistory:
    """A trial's history from the metrics.jsonl placed in ``trial_out``, else from what it reported
    to Tune (Tune's own record of an interrupted trial can be empty: Ctrl-C came before it was saved)."""
    from gsv_ray.track import read_metrics

    if (trial_out / "metrics.jsonl").is_file():
        steps, val, lrs = _history(read_metrics(trial_out / "metrics.jsonl"), objective.metric)
    else:
        steps, val, lrs = _reported_history(result, objective.metric)
    return _TrialHistory(steps, val, lrs, best_point(val, objective))


def _trial_summary(result, status: str, history: _TrialHistory, exports: list[str]) -> TrialSummary:
    """The ``TrialSummary`` of the trial whose Tune ``result`` this is (its folder is named by its id)."""
    trial_id, trial_config, best = Path(result.path).name, result.config or {}, history.best
    return TrialSummary(
        trial_id=trial_id,
        lr_scale=float(trial_config.get(LR_SCALE, float("nan"))),
        warmup_steps=int(trial_config.get(WARMUP_STEPS, 0)),
        status=status,
        error=trial_error(result.error) if result.error else None,
        steps=history.steps,
        best_value=best[1] if best else None,
        best_step=best[0] if best else None,
        val_history=history.val,
        lr_history=history.lrs,
        export_paths=exports,
        wandb_run_id=trial_id,
    )
