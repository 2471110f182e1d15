"""The training loop, written once for both stages and every launcher.

``train(cfg)`` runs in-process (local single-GPU or CPU mode); the same function later runs inside
each Ray Train worker. Stage specifics live in a recipe (``SoVITSRecipe`` / ``GPTRecipe``): models,
optimizers, one training step, evaluation, audio samples, export. The loop owns everything shared:
Accelerate, data order, the LR schedule, validation, checkpoints and resume, tracking, exports.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from gsv_ray.cache import default_cache_root as cache_root
from gsv_ray.data.experiment import UPSTREAM_MIN_ITEMS, Experiment, SplitOptions, experiment_split
from gsv_ray.data.index import open_experiment_cached
from gsv_ray.data.loader import MicroBatchSource, PlannedSampler, available_cpus, default_loader_workers, make_loader
from gsv_ray.errors import GsvError, check_output_path
from gsv_ray.io.reader import parse_info
from gsv_ray.rebuild import Rebuilt, rebuild_cached
from gsv_ray.train import checkpoint as ckpt
from gsv_ray.train import state as state_io
from gsv_ray.train.cfm import CFMRecipe
from gsv_ray.train.config import DEFAULT_LR_SCALE, UPSTREAM_BASE_LR, TrainConfig
from gsv_ray.train.gpt import GPTRecipe
from gsv_ray.train.precision import NonFiniteGradient, Precision
from gsv_ray.train.protocols import CheckpointStore, Progress, RunTracking, ShowsValidation
from gsv_ray.train.rundir import check_new_run, check_same_epoch, check_same_run, write_config
from gsv_ray.train.schedule import Schedule
from gsv_ray.train.sovits import SoVITSRecipe, check_codebook

#: One recipe per way of training (:attr:`Resolved.family`): SoVITS v3/v4 (a CFM decoder) train
#: differently from v1-v2ProPlus.
RECIPES = {"sovits": SoVITSRecipe, "sovits-cfm": CFMRecipe, "gpt": GPTRecipe}


@dataclass
class TrainResult:
    run_dir: Path
    stage: str
    version: str | None
    steps: int
    epochs: int
    exports: list[Path]
    last_checkpoint: Path | None
    val_history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: Path | None = None
    stopped_early: bool = False  # ended after a checkpoint because its scheduler said so (tune)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase (see Phases)


class Phases:
    """Wall time per phase of a run (rebuild, scan, build, steps, validation, ...): where a short
    run's time goes. ``with phases("name"):`` adds to that phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        return _Phase(self, name)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def line(self) -> str:
        return ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())


class _Phase:
    def __init__(self, phases: Phases, name: str):
        self.phases, self.name = phases, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.phases.add(self.name, time.perf_counter() - self.t0)


def continued_counters(rebuilt: Rebuilt, restart: bool) -> tuple[int, int]:
    """(epochs, steps) the init file had already trained, from its ``info`` ("8epoch_200iteration",
    "GPT-e15"): exports continue them, so GPT-SoVITS's weight lists sort a continued model after
    its parent. (0, 0) with ``restart`` or when the file says nothing."""
    if restart:
        return 0, 0
    epoch, step = parse_info(rebuilt.report.inputs.get("init", {}).get("info"))
    return epoch or 0, step or 0


def _symbol_version(stage: str, version: str | None) -> str:
    if stage == "gpt":
        return "v1" if version == "v1" else "v2"
    return version or "v2"


def open_run_experiment(data: str | Path, rebuilt: Rebuilt) -> Experiment:
    """The experiment folder as this run's stage and version read it: scanned once, then served from
    the content-addressed index (launchers scan on the driver and hand it to workers and trials)."""
    return open_experiment_cached(
        data, rebuilt.stage, _symbol_version(rebuilt.stage, rebuilt.version), cache_root=cache_root()
    )


def make_accelerator(cfg: TrainConfig, *, cpu: bool | None = None) -> Accelerator:
    """Device placement, DDP and checkpoint state. Mixed precision and gradient accumulation are
    ours (:mod:`gsv_ray.train.precision`, the recipes' ``train_step``), not Accelerate's: see there."""
    use_cpu = cfg.cpu or not torch.cuda.is_available() if cpu is None else cpu
    return Accelerator(cpu=use_cpu)


def fixed_batches(ds, collate, n: int, batch_size: int, device="cpu") -> list:
    """The first ``n`` batches of ``ds`` in a fixed order (validation: comparable across steps)."""
    idx = list(range(min(len(ds), n * batch_size)))
    return [collate([ds[i] for i in idx[j : j + batch_size]]).to(device) for j in range(0, len(idx), batch_size)]


def train(
    cfg: TrainConfig,
    *,
    rebuilt: Rebuilt | None = None,
    accelerator: Accelerator | None = None,
    tracking: RunTracking | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    checkpoints: CheckpointStore | None = None,
    experiment: Experiment | None = None,
    progress: Progress | bool = True,
    say: Callable[[str], None] = print,
) -> TrainResult:
    """Resume training from ``cfg.init`` (rebuilt once, or passed in as ``rebuilt``).

    ``tracking``: an object with ``log(step, metrics)``, ``log_audio(step, items)``, ``finish()``
    (see :mod:`gsv_ray.train.tracking`); ``on_step(step, metrics)`` is called on every optimizer
    step on every process (Ray Train reports from it: all ranks at the same steps). ``experiment``: the folder
    already scanned (launchers scan once for every worker and trial); scanned here when None.
    The phases are :class:`TrainingRun`'s, in this order.
    """
    run = TrainingRun(
        cfg,
        rebuilt=rebuilt,
        accelerator=accelerator,
        tracking=tracking,
        on_step=on_step,
        checkpoints=checkpoints,
        experiment=experiment,
        progress=progress,
        say=say,
    )
    run.setup()
    run.resume()
    run.announce()
    run.train()
    return run.finish()


class TrainingRun:
    """One training run of either stage, in phases (torchtune's recipe classes are the model):

    - :meth:`setup`: checks the output folder, rebuilds the init file, scans and splits the data,
      builds the stage's recipe (models, optimizers), the step plan, the LR schedule and the loader;
    - :meth:`resume`: loads the checkpoint to continue from (verified against its manifest first);
    - :meth:`announce`: builds the validation batches, writes the run's ``config.json``, says what
      will run, opens the tracker;
    - :meth:`train`: epochs of optimizer :meth:`step` s, each followed when due by :meth:`validate`,
      :meth:`checkpoint` (which may end the run: a Tune scheduler's stop) and, at epoch ends,
      :meth:`export`;
    - :meth:`finish`: the final export, the tracker's summary, the run's :class:`TrainResult`.

    Shared by every launcher (local, a Ray Train worker, a Tune trial), which hand in their own
    :class:`~gsv_ray.train.protocols.CheckpointStore`, :class:`~gsv_ray.train.protocols.RunTracking`
    and :class:`~gsv_ray.train.protocols.Progress`. Guarantees kept in every phase: no non-finite
    weight reaches a checkpoint or an export, divergence ends the run with a one-line error naming
    the last good checkpoint, and a resumed run continues the same data order and LR schedule.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        rebuilt: Rebuilt | None,
        accelerator: Accelerator | None,
        tracking: RunTracking | None,
        on_step: Callable[[int, dict[str, float]], None] | None,
        checkpoints: CheckpointStore | None,
        experiment: Experiment | None,
        progress: Progress | bool,
        say: Callable[[str], None],
    ):
        cfg.validate()
        self.cfg, self.rebuilt, self.tracking, self.on_step = cfg, rebuilt, tracking, on_step
        self.store, self.experiment, self.progress, self.say = checkpoints, experiment, progress, say
        self.phases = Phases()
        self.run_dir = Path(cfg.output_dir)
        self.accelerator = accelerator or make_accelerator(cfg)
        self.main = self.accelerator.is_main_process
        self.state = ckpt.TrainState()
        self.val_history: list[dict[str, float]] = []
        self.last_val: dict[str, float] = {}  # reported with each checkpoint (what a Tune scheduler compares)
        self.exports: list[Path] = []
        self.last_ckpt: Path | None = None
        self.stopped_early = False

    # -- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Everything before the first step that reads no checkpoint: inputs checked, init file rebuilt,
        data scanned and split, recipe, plan, schedule and loader built."""
        self._check_and_rebuild()
        with self.phases("scan"):
            if self.experiment is None:
                self.experiment = open_run_experiment(self.cfg.data, self.rebuilt)
            self.experiment, self.train_names, self.val_names = experiment_split(
                self.experiment,
                self.stage,
                split=SplitOptions(
                    val_fraction=self.cfg.val_fraction, val_names_file=self.cfg.val_names, seed=self.cfg.seed
                ),
            )
        self.epoch0, self.step0 = continued_counters(self.rebuilt, self.cfg.restart_counters)
        self._build()

    def _check_and_rebuild(self) -> None:
        """The output folder (a new run, or the same run resumed), the init file rebuilt and matched
        against ``--stage``, the config resolved for the device, the checkpoint to resume from."""
        cfg, main = self.cfg, self.main
        if main:
            check_output_path(self.run_dir)
        if main and cfg.resume is None:  # before anything is written (other ranks write only at checkpoints)
            check_new_run(self.run_dir)
        if self.rebuilt is None:
            with self.phases("rebuild"):
                self.rebuilt = rebuild_cached(cfg.rebuild_spec())
        stage = self.stage = self.rebuilt.stage
        if cfg.stage is not None and cfg.stage != stage:
            raise GsvError(
                f"--stage {cfg.stage} but the init file is a {stage} file",
                path=cfg.init,
                fix=f"use --stage {stage} or pass the other file",
            )
        cfg = self.cfg = cfg.resolved(stage, self.accelerator.device.type)  # optimizer and precision as they will run
        set_cuda_math(cfg.precision, stage, self.accelerator.device)
        check_codebook(self.rebuilt.resolved, cfg, self.accelerator.num_processes)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.resume_point, restart = _resume_point(cfg, self.ckpt_root)  # verified against its manifest
        self.recorded = (self.resume_point.path.parent.parent if self.resume_point else self.run_dir) / "config.json"
        if main and cfg.resume is not None:  # the same run, or a one-line refusal before anything is loaded
            check_same_run(cfg, self.recorded, self.rebuilt.report.inputs)
        if main and restart:
            self.say(
                f"no checkpoint yet in {self.run_dir}: starting the run over from step 0 (the metrics of its "
                "interrupted start are dropped)"
            )

    def _build(self) -> None:
        """The recipe (models, optimizers), the training set and its step plan, the LR schedule, the
        loader, the checkpoint store."""
        cfg, accelerator = self.cfg, self.accelerator
        set_seed(cfg.seed)
        self.precision = Precision(cfg.precision, accelerator.device)
        with self.phases("build"):
            self.recipe = RECIPES[self.rebuilt.resolved.family](
                self.rebuilt, cfg, accelerator, self.experiment, self.precision
            )
        self.train_ds = self.recipe.dataset(self.train_names, min_items=UPSTREAM_MIN_ITEMS)  # upstream's epoch
        if self.main and cfg.resume is not None:
            check_same_epoch(self.recorded, self.train_ds.copies, len(self.train_names))
        self.plan = self.recipe.plan(self.train_ds, seed=cfg.seed)
        self.steps_per_epoch = self.plan.steps_per_epoch()
        if self.steps_per_epoch == 0:
            raise _too_few_batches(cfg, self.plan, len(self.train_ds), accelerator.num_processes)
        self.total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * self.steps_per_epoch
        self.schedule = Schedule(
            cfg.warmup_steps,
            cfg.warmup_start,
            cfg.decay_for(self.stage),
            self.total,
            self.steps_per_epoch,
            cfg.lr_decay,
            cfg.min_lr_ratio,
        )
        self.schedulers = [self.schedule.scheduler(opt) for opt in self.recipe.optimizers]
        self.num_workers = (
            cfg.num_workers
            if cfg.num_workers is not None
            else default_loader_workers(available_cpus(), accelerator.num_processes)
        )  # Ray workers set it from their own CPU resources
        self.planned = PlannedSampler()
        self.loader = make_loader(
            MicroBatchSource(self.train_ds, self.recipe.make_batch),
            self.planned,
            num_workers=self.num_workers,
            seed=cfg.seed,
            pin_memory=accelerator.device.type == "cuda",
        )
        if self.store is None:
            self.store = ckpt.LocalCheckpoints(self.ckpt_root, cfg.keep_last)

    # -- resume ------------------------------------------------------------------------------------
    def resume(self) -> None:
        """Models, optimizers, schedulers, loss scaler, RNG states and position from the checkpoint
        chosen in :meth:`setup` (nothing without one)."""
        resume = self.resume_point
        if resume is None:
            return
        self.last_ckpt = resume.path
        with self.phases("resume"):
            try:
                loaded = state_io.load(
                    self.accelerator, resume.path, models=self.recipe.models, optimizers=self.recipe.optimizers
                )
            except (ValueError, KeyError, RuntimeError) as e:  # parses as data, but not as this run's state
                raise GsvError(
                    f"cannot resume from this checkpoint: {e}",
                    path=resume.path,
                    fix="resume from another checkpoint (pass it), or drop --resume",
                ) from None
            self.state.load_state_dict(loaded["train"])
            for s, sd in zip(self.schedulers, loaded["schedulers"]):
                s.load_state_dict(sd)
            if loaded.get("scaler"):
                self.precision.scaler.load_state_dict(loaded["scaler"])
        from accelerate.utils import gather_object

        missing = [r for r, ok in enumerate(gather_object([bool(loaded["rng_restored"])])) if not ok]
        if self.main:
            for skipped, why in resume.skipped:
                self.say(f"warning: skipped {skipped}: {why}")
            self.say(f"resumed from {resume.path} (step {self.state.step}, epoch {self.state.epoch + 1})")
            if missing:
                self.say(
                    f"warning: the checkpoint has no RNG state for rank(s) {', '.join(map(str, missing))} "
                    "(another process count?): training continues correctly but not bit-identically"
                )

    # -- announce ----------------------------------------------------------------------------------
    def announce(self) -> None:
        """The fixed validation batches built (after :meth:`resume` restored the RNG states), then on
        the main process: the run's ``config.json``, the lines saying what will run, the tracker
        opened with the full resolved config."""
        cfg = self.cfg
        val_ds = self.recipe.dataset(self.val_names) if self.val_names else None  # validation: one pass
        self.val_batches = (
            fixed_batches(val_ds, self.recipe.collate, cfg.val_batches, cfg.batch_size, self.accelerator.device)
            if val_ds
            else []
        )
        self.audio_items = [val_ds[i] for i in range(min(cfg.audio_samples, len(val_ds)))] if val_ds else []
        if not self.main:
            return
        say = self.say
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_config(self.run_dir, cfg, self.rebuilt.report.inputs)
        say(f"rebuilt {self.rebuilt.report.message()}")
        say(_data_line(self.experiment, len(self.train_names), len(self.val_names), self.train_ds.copies))
        for line in self.experiment.report.lines():
            say(f"  data: {line}")
        for line in getattr(self.recipe, "notes", ()):
            say(line)
        say(self._plan_line())
        if cfg.warmup_steps >= self.total:  # the default 100, or --epochs: an explicit one with --max-steps is refused
            say(
                f"warning: warmup {cfg.warmup_steps} steps is not shorter than the run's {self.total}: the LR never "
                f"reaches its peak (set --warmup-steps below {self.total})"
            )
        if self.tracking is not None:
            with self.phases("tracking"):
                self.tracking.begin(
                    _run_config(cfg, self.rebuilt, self.stage, self.recipe, self.schedule, self.accelerator),
                    self.rebuilt,
                    resume_step=self.state.step,
                )

    def _plan_line(self) -> str:
        """Global batch, steps, loader workers, precision, optimizer and LR: the run's shape in one line."""
        cfg, stage, n = self.cfg, self.stage, self.accelerator.num_processes
        cadence = self.plan.cadence
        per_step = (
            ""
            if cadence is None
            else f"; {cfg.optimizer} steps once per {cadence.every} batches "
            f"({cadence.every + 1} for an epoch's first), summing their gradients, as upstream"
        )
        return (
            f"global batch = {cfg.batch_size} x {n} process(es) x {cfg.grad_accum} "
            f"accumulation = {cfg.batch_size * n * cfg.grad_accum}{per_step}; "
            f"{self.steps_per_epoch} steps/epoch, {self.total} steps; {self.num_workers} loader worker(s); "
            f"precision {cfg.precision}; {cfg.optimizer}, peak LR {cfg.peak_lr(stage):.3g} "
            f"(upstream {UPSTREAM_BASE_LR[stage]:.3g} x lr_scale {cfg.lr_scale}), warmup {cfg.warmup_steps}, "
            f"then {cfg.decay_for(stage)}"
        )

    # -- train -------------------------------------------------------------------------------------
    def train(self) -> None:
        """Optimizer steps until the run's total (or a scheduler's stop), epoch by epoch; the data
        order continues mid-epoch after a resume."""
        state, plan = self.state, self.plan
        self.bar = _display(self.progress, self.main)
        self.bar.start(self.total, state.step)
        self.t_last = time.perf_counter()
        self.skipped_in_a_row = 0
        self.planned.start(plan, epoch=state.epoch, skip_steps=plan.steps_done(state.epoch, state.batch_in_epoch))
        batches = iter(self.loader)  # one iterator for the whole run: the workers prefetch across epochs
        try:
            while state.step < self.total and not self._epoch(batches):
                pass
        finally:
            self.bar.close()

    def _epoch(self, batches: Iterator) -> bool:
        """The rest of the current epoch (all of it unless resumed mid-epoch); True when the run ended
        inside it (its last step, or a stop), else the epoch is counted and exported when due."""
        state = self.state
        done = self.plan.steps_done(state.epoch, state.batch_in_epoch)  # already taken (resume mid-epoch)
        for _ in range(done, self.steps_per_epoch):
            if self.step(batches):
                return True
        state.epoch += 1
        state.batch_in_epoch = 0
        if self.cfg.export_every_epochs and state.epoch % self.cfg.export_every_epochs == 0:
            self.export(state.epoch)
            self.t_last = time.perf_counter()
        return False

    def step(self, batches: Iterator) -> bool:
        """One optimizer step, then what is due at it (logging, validation, checkpoint); True when the
        run ends here (its last step, or the checkpoint store's stop)."""
        cfg, state = self.cfg, self.state
        metrics, step_time = self._optimizer_step(batches)
        if self.on_step is not None:
            self.on_step(state.step, metrics)
        if self.main and self.tracking is not None and (state.step % cfg.log_every == 0 or state.step == self.total):
            self.tracking.log(state.step, {f"train/{k}": v for k, v in metrics.items()})
        self.bar.update(state.step, metrics)
        if state.step % cfg.val_every == 0 or state.step == self.total:
            self.validate(state.step)
        self.phases.add("steps", step_time)
        if state.step % cfg.save_every == 0 or state.step == self.total:
            if self.checkpoint(metrics):
                return True
        self.t_last = time.perf_counter()  # validation and checkpoints are not the next step's time
        return state.step >= self.total

    def _optimizer_step(self, batches: Iterator) -> tuple[dict[str, float], float]:
        """The step's micro-batches through the recipe's ``train_step``, the schedulers advanced, the
        position counted: (the step's metrics, its wall time). Divergence ends the run here."""
        state, precision, accelerator = self.state, self.precision, self.accelerator
        t_wait = time.perf_counter()
        micro = [next(batches)]
        while not micro[-1][1].ends_step:  # accumulation, and GPT's several batches per step
            micro.append(next(batches))
        data_wait = time.perf_counter() - t_wait
        non_blocking = accelerator.device.type == "cuda"
        micro = [(b.to(accelerator.device, non_blocking=non_blocking), mb) for b, mb in micro]
        items = sum(len(mb.indices) for _, mb in micro)
        scale_before = precision.scale
        try:
            metrics = self.recipe.train_step(micro, step=state.step)
        except NonFiniteGradient as e:
            raise self._diverged(state.step + 1, str(e)) from None
        if precision.scaler.is_enabled():
            metrics["loss_scale"] = precision.scale
            self.skipped_in_a_row = self.skipped_in_a_row + 1 if precision.scale < scale_before else 0
            if self.skipped_in_a_row >= MAX_SKIPPED_FP16_STEPS:
                raise self._diverged(
                    state.step + 1,
                    f"{self.skipped_in_a_row} fp16 steps in a row overflowed (loss scale {precision.scale:g})",
                )
        state.batch_in_epoch += len(micro)
        lrs = {
            f"lr/{g.get('name', i)}": g["lr"] for opt in self.recipe.optimizers for i, g in enumerate(opt.param_groups)
        }
        with warnings.catch_warnings():  # an fp16 step the scaler skipped still advances the schedule
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            for s in self.schedulers:
                s.step()
        state.step += 1
        step_time = time.perf_counter() - self.t_last
        per_worker = items / max(1e-9, step_time)
        n = accelerator.num_processes
        metrics.update(
            lrs,
            step_time=step_time,
            data_wait=data_wait,
            data_wait_share=data_wait / max(1e-9, step_time),
            samples_per_s=per_worker * n,
            samples_per_s_per_worker=per_worker,
            world_size=n,
            epoch=state.epoch + 1,
        )
        return metrics, step_time

    def validate(self, step: int) -> None:
        """The fixed validation batches through the recipe's ``evaluate`` (main process), logged with
        the audio samples; the last values ride along with each checkpoint's report."""
        if not (self.main and self.val_batches):
            return
        with self.phases("validation"):
            metrics = self.recipe.evaluate(self.val_batches, self.cfg.seed)
        self.val_history.append({"step": step, **metrics})
        if isinstance(self.bar, ShowsValidation):
            self.bar.validated(step, metrics.get("loss"))
        self.last_val.update({f"val/{k}": v for k, v in metrics.items()})
        if self.tracking is not None:
            self.tracking.log(step, {f"val/{k}": v for k, v in metrics.items()})
            with self.phases("audio samples"):
                samples = self.recipe.audio_samples(self.audio_items, self.cfg.seed)
            if samples:
                self.tracking.log_audio(step, samples)

    def checkpoint(self, metrics: dict[str, float]) -> bool:
        """The run's state saved through the checkpoint store (finite weights only); True when the
        store says the run should stop here (a Tune scheduler ended the trial: export and finish)."""
        with self.phases("checkpoint"):
            self._require_finite(self.state.step)
            self.last_ckpt = self.store.save(
                self.accelerator,
                self.state.step,
                models=self.recipe.models,
                optimizers=self.recipe.optimizers,
                metrics={**metrics, **self.last_val},
                state={
                    "train": self.state.state_dict(),
                    "schedulers": [s.state_dict() for s in self.schedulers],
                    "scaler": self.precision.scaler.state_dict(),
                },
            )
        if self.store.stop_requested():
            self.stopped_early = True
            self.say(f"stopped early by the scheduler at step {self.state.step}")
            return True
        return False

    def export(self, epoch: int) -> None:
        """The models in GPT-SoVITS's own format (main process), named with the counters continued
        from the init file; never over an input file; every process waits for it."""
        self._require_finite(self.state.step)
        cfg = self.cfg
        with self.phases("export"):
            if self.main:
                self.exports.append(
                    self.recipe.export(
                        self.run_dir,
                        name=cfg.run_name,
                        epoch=self.epoch0 + epoch,
                        step=self.step0 + self.state.step,
                        protect=[p for p in (cfg.init, cfg.base_g, cfg.base_d) if p],
                    )
                )
            self.accelerator.wait_for_everyone()

    # -- finish ------------------------------------------------------------------------------------
    def finish(self) -> TrainResult:
        """The final export, its files and the run's fate in the tracker's summary, the time line."""
        state = self.state
        epochs_done = max(1, state.epoch + (1 if state.batch_in_epoch > 0 else 0))
        self.export(epochs_done)
        if self.main:  # the exports are named in the run's summary (where they end up: -o, also on Ray)
            if self.tracking is not None:
                with self.phases("tracking"):
                    self.tracking.log_exports(
                        self.exports, stage=self.stage, version=self.rebuilt.version, step=state.step
                    )
                    self.tracking.set_summary(
                        {"fate": "early-stopped" if self.stopped_early else "completed", "steps": state.step}
                    )
            self.say(f"time: {self.phases.line()}")
        return TrainResult(
            run_dir=self.run_dir,
            stage=self.stage,
            version=self.rebuilt.version,
            steps=state.step,
            epochs=epochs_done,
            exports=self.exports,
            last_checkpoint=self.last_ckpt,
            val_history=self.val_history,
            resumed_from=self.resume_point.path if self.resume_point is not None else None,
            stopped_early=self.stopped_early,
            timings=dict(self.phases.seconds),
        )

    # -- guards ------------------------------------------------------------------------------------
    def _diverged(self, step: int, what: str) -> GsvError:
        return _diverged(step, what, self.cfg, self.stage, self.last_ckpt)

    def _require_finite(self, step: int) -> None:
        _require_finite(self.recipe.models, step, self.cfg, self.stage, self.last_ckpt)


def set_cuda_math(precision: str, stage: str, device: torch.device) -> None:
    """Upstream's float32 matmul settings on CUDA (process-wide, as upstream sets them): SoVITS's
    ``s2_train`` allows TF32 for matmuls and cuDNN and sets matmul precision "medium", the GPT's
    ``s1_train`` sets "high". An explicit ``--precision no`` is strict fp32 (TF32 off). CPU: untouched."""
    if device.type != "cuda":
        return
    strict = precision == "no"
    torch.backends.cuda.matmul.allow_tf32 = not strict
    torch.backends.cudnn.allow_tf32 = not strict
    torch.set_float32_matmul_precision("highest" if strict else "high" if stage == "gpt" else "medium")


def _too_few_batches(cfg: TrainConfig, plan, items: int, processes: int) -> GsvError:
    """The one line for an epoch that holds no full optimizer step."""
    batch = f"global batch of {cfg.batch_size} x {processes} process(es) x {cfg.grad_accum} accumulation"
    if plan.cadence is None:
        return GsvError(
            f"{items} training items do not fill one {batch}",
            path=cfg.data,
            fix="lower --batch-size or --grad-accum, or add utterances",
        )
    got = len(plan.batches(0))
    return GsvError(
        f"an epoch of {items} training items makes {got} batch(es) ({batch}), but "
        f"{cfg.optimizer} steps once {plan.cadence.every + 1} batches are summed, as upstream (which never "
        "steps on such a set)",
        path=cfg.data,
        fix="lower --batch-size or --grad-accum, add utterances, or pass --optimizer adamw (a step per batch)",
    )


#: fp16: the loss scaler skips overflowing steps (counted in ``loss_scale`` halvings); this many in a
#: row means the run is not recovering.
MAX_SKIPPED_FP16_STEPS = 25


def _data_line(experiment: Experiment, train: int, val: int, copies: int) -> str:
    """The run's data line: utterances trained on (and how many copies of each an epoch holds), held out,
    usable and listed."""
    trained = (
        f"{train} train / {val} val utterances"
        if copies == 1
        else f"{train} train utterances x{copies} per epoch, as upstream ({train * copies} items); {val} val"
    )
    return f"data: {trained} of {len(experiment.names)} usable; {experiment.report.listed} listed"


def _resume_point(cfg: TrainConfig, ckpt_root: Path) -> tuple[ckpt.Resume | None, bool]:
    """(checkpoint to resume from, start over): ``--resume`` of a run that wrote no checkpoint yet
    (stopped or killed before its first) starts it over from step 0 instead of failing."""
    if cfg.resume == "latest" and not ckpt.checkpoints(ckpt_root):
        return None, True
    return ckpt.resolve_resume(cfg.resume, ckpt_root), False


def _diverged(step: int, what: str, cfg: TrainConfig, stage: str, last_ckpt: Path | None) -> GsvError:
    """The one line of a divergence. Its advice is a new run at a lower LR (resuming the same run at
    the same LR would diverge again; a resume may not change --lr-scale: :data:`rundir.TRAJECTORY`)."""
    keep = f"the last good checkpoint is {last_ckpt}" if last_ckpt is not None else "no checkpoint was written"
    lower = DEFAULT_LR_SCALE if cfg.lr_scale > DEFAULT_LR_SCALE else cfg.lr_scale / 10
    out = Path(cfg.output_dir)
    n = 2
    while out.with_name(f"{out.name}-{n}").exists():
        n += 1
    fp16 = " (or --precision bf16)" if cfg.precision == "fp16" else ""
    return GsvError(
        f"training diverged at step {step}: {what}; nothing of that step was applied or saved, {keep}. "
        f"Likely cause: the learning rate (peak {cfg.peak_lr(stage):.3g}), fp16 overflow, or bad data",
        path=cfg.output_dir,
        fix=f"start a new run at a lower learning rate: the same command with "
        f"--lr-scale {lower:g}{fp16} and -o {out.with_name(f'{out.name}-{n}')}",
    )


def _require_finite(models, step: int, cfg: TrainConfig, stage: str, last_ckpt: Path | None) -> None:
    """No non-finite weight ever reaches a checkpoint or an export."""
    named = [(n, p) for m in models for n, p in m.named_parameters()]
    if bool(torch.stack([torch.isfinite(p).all() for _, p in named]).all()):  # one device sync
        return
    name = next(n for n, p in named if not bool(torch.isfinite(p).all()))
    raise _diverged(step, f"weight {name} is not finite", cfg, stage, last_ckpt)


def _run_config(cfg: TrainConfig, rebuilt: Rebuilt, stage: str, recipe, schedule: Schedule, accelerator) -> dict:
    """The full, resolved configuration a run is logged with."""
    groups = {
        g.get("name", str(i)): g["initial_lr"] for opt in recipe.optimizers for i, g in enumerate(opt.param_groups)
    }
    inputs = {
        role: {"path": d.get("path"), "sha256": d.get("sha256"), "kind": d.get("kind")}
        for role, d in rebuilt.report.inputs.items()
    }
    return {
        **cfg.to_json(),
        "stage": stage,
        "version": rebuilt.version,
        "peak_lr": cfg.peak_lr(stage),
        "upstream_base_lr": UPSTREAM_BASE_LR[stage],
        "lr_groups": groups,
        "decay": schedule.decay,
        "total_steps": schedule.total_steps,
        "steps_per_epoch": schedule.steps_per_epoch,
        "world_size": accelerator.num_processes,
        "device": accelerator.device.type,  # `cpu` is only the flag
        "global_batch": cfg.batch_size * accelerator.num_processes * cfg.grad_accum,
        "inputs": inputs,
        "model": rebuilt.config,
    }


class _NoDisplay:
    """The progress display of a process that shows none."""

    def start(self, total: int, done: int = 0) -> None: ...

    def update(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def _display(progress: Progress | bool, main: bool) -> Progress:
    """The progress display on the main process (none elsewhere)."""
    if not main or not progress:
        return _NoDisplay()
    if progress is True:
        from gsv_ray.console import ProgressDisplay

        return ProgressDisplay()
    return progress
