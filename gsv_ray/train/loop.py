"""The training loop, written once for both stages and every launcher.

``train(cfg)`` runs in-process (local single-GPU or CPU mode); the same function later runs inside
each Ray Train worker. Stage specifics live in a recipe (``SoVITSRecipe`` / ``GPTRecipe``): models,
optimizers, one training step, evaluation, audio samples, export. The loop owns everything shared:
Accelerate, data order, the LR schedule, validation, checkpoints and resume, tracking, exports.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from gsv_ray.train.config import DEFAULT_LR_SCALE, UPSTREAM_BASE_LR, TrainConfig
from gsv_ray.train.cfm import CFMRecipe
from gsv_ray.train.gpt import GPTRecipe
from gsv_ray.train.precision import NonFiniteGradient, Precision
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
    return open_experiment_cached(data, rebuilt.stage, _symbol_version(rebuilt.stage, rebuilt.version),
                                  cache_root=cache_root())


def make_accelerator(cfg: TrainConfig, *, cpu: bool | None = None) -> Accelerator:
    """Device placement, DDP and checkpoint state. Mixed precision and gradient accumulation are
    ours (:mod:`gsv_ray.train.precision`, the recipes' ``train_step``), not Accelerate's: see there."""
    use_cpu = cfg.cpu or not torch.cuda.is_available() if cpu is None else cpu
    return Accelerator(cpu=use_cpu)


def fixed_batches(ds, collate, n: int, batch_size: int, device="cpu") -> list:
    """The first ``n`` batches of ``ds`` in a fixed order (validation: comparable across steps)."""
    idx = list(range(min(len(ds), n * batch_size)))
    return [collate([ds[i] for i in idx[j:j + batch_size]]).to(device) for j in range(0, len(idx), batch_size)]


def train(
    cfg: TrainConfig,
    *,
    rebuilt: Rebuilt | None = None,
    accelerator: Accelerator | None = None,
    tracking: Any | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    checkpoints: Any | None = None,
    experiment: Experiment | None = None,
    progress: Any = True,
    say: Callable[[str], None] = print,
) -> TrainResult:
    """Resume training from ``cfg.init`` (rebuilt once, or passed in as ``rebuilt``).

    ``tracking``: an object with ``log(step, metrics)``, ``log_audio(step, items)``, ``finish()``
    (see :mod:`gsv_ray.train.tracking`); ``on_step(step, metrics)`` is called on every optimizer
    step on every process (Ray Train reports from it: all ranks at the same steps). ``experiment``: the folder
    already scanned (launchers scan once for every worker and trial); scanned here when None.
    """
    cfg.validate()
    phases = Phases()
    run_dir = Path(cfg.output_dir)
    accelerator = accelerator or make_accelerator(cfg)
    main = accelerator.is_main_process
    if main:
        check_output_path(run_dir)
    if main and cfg.resume is None:  # before anything is written (other ranks write only at checkpoints)
        check_new_run(run_dir)
    if rebuilt is None:
        with phases("rebuild"):
            rebuilt = rebuild_cached(cfg.rebuild_spec())
    stage = rebuilt.stage
    if cfg.stage is not None and cfg.stage != stage:
        raise GsvError(f"--stage {cfg.stage} but the init file is a {stage} file", path=cfg.init,
                       fix=f"use --stage {stage} or pass the other file")
    cfg = cfg.resolved(stage, accelerator.device.type)  # optimizer and precision as they will run
    set_cuda_math(cfg.precision, stage, accelerator.device)
    check_codebook(rebuilt.resolved, cfg, accelerator.num_processes)
    ckpt_root = run_dir / "checkpoints"
    resume, restart = _resume_point(cfg, ckpt_root)  # verified against its manifest
    recorded = (resume.path.parent.parent if resume else run_dir) / "config.json"
    if main and cfg.resume is not None:  # the same run, or a one-line refusal before anything is loaded
        check_same_run(cfg, recorded, rebuilt.report.inputs)
    if main and restart:
        say(f"no checkpoint yet in {run_dir}: starting the run over from step 0 (the metrics of its interrupted "
            "start are dropped)")
    with phases("scan"):
        if experiment is None:
            experiment = open_run_experiment(cfg.data, rebuilt)
        experiment, train_names, val_names = experiment_split(
            experiment, stage, split=SplitOptions(val_fraction=cfg.val_fraction, val_names_file=cfg.val_names,
                                                  seed=cfg.seed))
    epoch0, step0 = continued_counters(rebuilt, cfg.restart_counters)

    set_seed(cfg.seed)
    precision = Precision(cfg.precision, accelerator.device)
    with phases("build"):
        recipe = RECIPES[rebuilt.resolved.family](rebuilt, cfg, accelerator, experiment, precision)
    train_ds = recipe.dataset(train_names, min_items=UPSTREAM_MIN_ITEMS)  # upstream's epoch; validation: one pass
    if main and cfg.resume is not None:
        check_same_epoch(recorded, train_ds.copies, len(train_names))
    plan = recipe.plan(train_ds, seed=cfg.seed)
    steps_per_epoch = plan.steps_per_epoch()
    if steps_per_epoch == 0:
        raise _too_few_batches(cfg, plan, len(train_ds), accelerator.num_processes)
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    schedule = Schedule(cfg.warmup_steps, cfg.warmup_start, cfg.decay_for(stage), total, steps_per_epoch,
                        cfg.lr_decay, cfg.min_lr_ratio)
    schedulers = [schedule.scheduler(opt) for opt in recipe.optimizers]
    state = ckpt.TrainState()
    num_workers = cfg.num_workers if cfg.num_workers is not None else default_loader_workers(
        available_cpus(), accelerator.num_processes)  # Ray workers set it from their own CPU resources
    planned = PlannedSampler()
    loader = make_loader(MicroBatchSource(train_ds, recipe.make_batch), planned, num_workers=num_workers,
                         seed=cfg.seed, pin_memory=accelerator.device.type == "cuda")

    checkpoints = checkpoints if checkpoints is not None else ckpt.LocalCheckpoints(ckpt_root, cfg.keep_last)
    resume_from = resume.path if resume is not None else None
    if resume is not None:
        with phases("resume"):
            try:
                loaded = state_io.load(accelerator, resume.path, models=recipe.models, optimizers=recipe.optimizers)
            except (ValueError, KeyError, RuntimeError) as e:  # parses as data, but not as this run's state
                raise GsvError(f"cannot resume from this checkpoint: {e}", path=resume.path,
                               fix="resume from another checkpoint (pass it), or drop --resume") from None
            state.load_state_dict(loaded["train"])
            for s, sd in zip(schedulers, loaded["schedulers"]):
                s.load_state_dict(sd)
            if loaded.get("scaler"):
                precision.scaler.load_state_dict(loaded["scaler"])
        from accelerate.utils import gather_object

        missing = [r for r, ok in enumerate(gather_object([bool(loaded["rng_restored"])])) if not ok]
        if main:
            for skipped, why in resume.skipped:
                say(f"warning: skipped {skipped}: {why}")
            say(f"resumed from {resume.path} (step {state.step}, epoch {state.epoch + 1})")
            if missing:
                say(f"warning: the checkpoint has no RNG state for rank(s) {', '.join(map(str, missing))} (another "
                    "process count?): training continues correctly but not bit-identically")

    val_ds = recipe.dataset(val_names) if val_names else None
    val_batches = fixed_batches(val_ds, recipe.collate, cfg.val_batches, cfg.batch_size, accelerator.device) if val_ds else []
    audio_items = [val_ds[i] for i in range(min(cfg.audio_samples, len(val_ds)))] if val_ds else []
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir, cfg, rebuilt.report.inputs)
        say(f"rebuilt {rebuilt.report.message()}")
        say(_data_line(experiment, len(train_names), len(val_names), train_ds.copies))
        for line in experiment.report.lines():
            say(f"  data: {line}")
        for line in getattr(recipe, "notes", ()):
            say(line)
        per_step = ("" if plan.cadence is None else f"; {cfg.optimizer} steps once per {plan.cadence.every} "
                    f"batches ({plan.cadence.every + 1} for an epoch's first), summing their gradients, as upstream")
        say(f"global batch = {cfg.batch_size} x {accelerator.num_processes} process(es) x {cfg.grad_accum} "
            f"accumulation = {cfg.batch_size * accelerator.num_processes * cfg.grad_accum}{per_step}; "
            f"{steps_per_epoch} steps/epoch, {total} steps; {num_workers} loader worker(s); "
            f"precision {cfg.precision}; {cfg.optimizer}, peak LR {cfg.peak_lr(stage):.3g} "
            f"(upstream {UPSTREAM_BASE_LR[stage]:.3g} x lr_scale {cfg.lr_scale}), warmup {cfg.warmup_steps}, "
            f"then {cfg.decay_for(stage)}")
        if cfg.warmup_steps >= total:  # the default 100, or --epochs: an explicit one with --max-steps is refused
            say(f"warning: warmup {cfg.warmup_steps} steps is not shorter than the run's {total}: the LR never reaches "
                f"its peak (set --warmup-steps below {total})")

    if main and tracking is not None:
        with phases("tracking"):
            tracking.begin(_run_config(cfg, rebuilt, stage, recipe, schedule, accelerator), rebuilt,
                           resume_step=state.step)

    val_history: list[dict[str, float]] = []
    last_val: dict[str, float] = {}  # reported with each checkpoint (what a Tune scheduler compares)
    exports: list[Path] = []
    last_ckpt: Path | None = resume_from

    def validate(step: int) -> None:
        if not (main and val_batches):
            return
        with phases("validation"):
            metrics = recipe.evaluate(val_batches, cfg.seed)
        val_history.append({"step": step, **metrics})
        if hasattr(bar, "validated"):
            bar.validated(step, metrics.get("loss"))
        last_val.update({f"val/{k}": v for k, v in metrics.items()})
        if tracking is not None:
            tracking.log(step, {f"val/{k}": v for k, v in metrics.items()})
            with phases("audio samples"):
                samples = recipe.audio_samples(audio_items, cfg.seed)
            if samples:
                tracking.log_audio(step, samples)

    def export(epoch: int) -> None:
        _require_finite(recipe.models, state.step, cfg, stage, last_ckpt)
        with phases("export"):
            if main:
                exports.append(recipe.export(run_dir, name=cfg.run_name, epoch=epoch0 + epoch, step=step0 + state.step,
                                             protect=[p for p in (cfg.init, cfg.base_g, cfg.base_d) if p]))
            accelerator.wait_for_everyone()

    bar = _display(progress, main)
    bar.start(total, state.step)
    stopped_early = False
    non_blocking = accelerator.device.type == "cuda"
    t_last = time.perf_counter()
    skipped_in_a_row = 0
    planned.start(plan, epoch=state.epoch, skip_steps=plan.steps_done(state.epoch, state.batch_in_epoch))
    batches = iter(loader)  # one iterator for the whole run: the workers prefetch across epochs
    try:
        while state.step < total:
            done = plan.steps_done(state.epoch, state.batch_in_epoch)  # already taken (resume mid-epoch)
            for _ in range(done, steps_per_epoch):
                t_wait = time.perf_counter()
                micro = [next(batches)]
                while not micro[-1][1].ends_step:  # accumulation, and GPT's several batches per step
                    micro.append(next(batches))
                data_wait = time.perf_counter() - t_wait
                micro = [(b.to(accelerator.device, non_blocking=non_blocking), mb) for b, mb in micro]
                items = sum(len(mb.indices) for _, mb in micro)
                scale_before = precision.scale
                try:
                    metrics = recipe.train_step(micro, step=state.step)
                except NonFiniteGradient as e:
                    raise _diverged(state.step + 1, str(e), cfg, stage, last_ckpt) from None
                if precision.scaler.is_enabled():
                    metrics["loss_scale"] = precision.scale
                    skipped_in_a_row = skipped_in_a_row + 1 if precision.scale < scale_before else 0
                    if skipped_in_a_row >= MAX_SKIPPED_FP16_STEPS:
                        raise _diverged(state.step + 1, f"{skipped_in_a_row} fp16 steps in a row overflowed (loss scale "
                                        f"{precision.scale:g})", cfg, stage, last_ckpt)
                state.batch_in_epoch += len(micro)
                lrs = {f"lr/{g.get('name', i)}": g["lr"] for opt in recipe.optimizers for i, g in enumerate(opt.param_groups)}
                with warnings.catch_warnings():  # an fp16 step the scaler skipped still advances the schedule
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                    for s in schedulers:
                        s.step()
                state.step += 1
                now = time.perf_counter()
                step_time = now - t_last
                per_worker = items / max(1e-9, step_time)
                metrics.update(lrs, step_time=step_time, data_wait=data_wait, data_wait_share=data_wait / max(1e-9, step_time),
                               samples_per_s=per_worker * accelerator.num_processes, samples_per_s_per_worker=per_worker,
                               world_size=accelerator.num_processes, epoch=state.epoch + 1)
                if on_step is not None:
                    on_step(state.step, metrics)
                if main and tracking is not None and (state.step % cfg.log_every == 0 or state.step == total):
                    tracking.log(state.step, {f"train/{k}": v for k, v in metrics.items()})
                bar.update(state.step, metrics)
                if state.step % cfg.val_every == 0 or state.step == total:
                    validate(state.step)
                phases.add("steps", step_time)
                if state.step % cfg.save_every == 0 or state.step == total:
                    with phases("checkpoint"):
                        _require_finite(recipe.models, state.step, cfg, stage, last_ckpt)
                        last_ckpt = checkpoints.save(accelerator, state.step, models=recipe.models,
                                                     optimizers=recipe.optimizers, metrics={**metrics, **last_val}, state={
                                                         "train": state.state_dict(),
                                                         "schedulers": [s.state_dict() for s in schedulers],
                                                         "scaler": precision.scaler.state_dict()})
                    if checkpoints.stop_requested():  # a tune scheduler ended this trial: export and finish
                        stopped_early = True
                        say(f"stopped early by the scheduler at step {state.step}")
                        break
                t_last = time.perf_counter()  # validation and checkpoints are not the next step's time
                if state.step >= total:
                    break
            else:
                state.epoch += 1
                state.batch_in_epoch = 0
                if cfg.export_every_epochs and state.epoch % cfg.export_every_epochs == 0:
                    export(state.epoch)
                    t_last = time.perf_counter()
                continue
            break
    finally:
        bar.close()
    epochs_done = max(1, state.epoch + (1 if state.batch_in_epoch > 0 else 0))
    export(epochs_done)
    if main:  # the exports are named in the run's summary (where they end up: -o, also on Ray)
        if tracking is not None:
            with phases("tracking"):
                tracking.log_exports(exports, stage=stage, version=rebuilt.version, step=state.step)
                tracking.set_summary({"fate": "early-stopped" if stopped_early else "completed", "steps": state.step})
        say(f"time: {phases.line()}")
    return TrainResult(run_dir=run_dir, stage=stage, version=rebuilt.version, steps=state.step, epochs=epochs_done,
                       exports=exports, last_checkpoint=last_ckpt, val_history=val_history, resumed_from=resume_from,
                       stopped_early=stopped_early,
                       timings=dict(phases.seconds))


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
        return GsvError(f"{items} training items do not fill one {batch}", path=cfg.data,
                        fix="lower --batch-size or --grad-accum, or add utterances")
    got = len(plan.batches(0))
    return GsvError(f"an epoch of {items} training items makes {got} batch(es) ({batch}), but "
                    f"{cfg.optimizer} steps once {plan.cadence.every + 1} batches are summed, as upstream (which never "
                    "steps on such a set)", path=cfg.data,
                    fix="lower --batch-size or --grad-accum, add utterances, or pass --optimizer adamw (a step per batch)")


#: fp16: the loss scaler skips overflowing steps (counted in ``loss_scale`` halvings); this many in a
#: row means the run is not recovering.
MAX_SKIPPED_FP16_STEPS = 25


def _data_line(experiment: Experiment, train: int, val: int, copies: int) -> str:
    """The run's data line: utterances trained on (and how many copies of each an epoch holds), held out,
    usable and listed."""
    trained = (f"{train} train / {val} val utterances" if copies == 1 else
               f"{train} train utterances x{copies} per epoch, as upstream ({train * copies} items); {val} val")
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
    return GsvError(f"training diverged at step {step}: {what}; nothing of that step was applied or saved, {keep}. "
                    f"Likely cause: the learning rate (peak {cfg.peak_lr(stage):.3g}), fp16 overflow, or bad data",
                    path=cfg.output_dir, fix=f"start a new run at a lower learning rate: the same command with "
                                             f"--lr-scale {lower:g}{fp16} and -o {out.with_name(f'{out.name}-{n}')}")


def _require_finite(models, step: int, cfg: TrainConfig, stage: str, last_ckpt: Path | None) -> None:
    """No non-finite weight ever reaches a checkpoint or an export."""
    named = [(n, p) for m in models for n, p in m.named_parameters()]
    if bool(torch.stack([torch.isfinite(p).all() for _, p in named]).all()):  # one device sync
        return
    name = next(n for n, p in named if not bool(torch.isfinite(p).all()))
    raise _diverged(step, f"weight {name} is not finite", cfg, stage, last_ckpt)


def _run_config(cfg: TrainConfig, rebuilt: Rebuilt, stage: str, recipe, schedule: Schedule, accelerator) -> dict:
    """The full, resolved configuration a run is logged with."""
    groups = {g.get("name", str(i)): g["initial_lr"] for opt in recipe.optimizers for i, g in enumerate(opt.param_groups)}
    inputs = {role: {"path": d.get("path"), "sha256": d.get("sha256"), "kind": d.get("kind")}
              for role, d in rebuilt.report.inputs.items()}
    return {**cfg.to_json(), "stage": stage, "version": rebuilt.version, "peak_lr": cfg.peak_lr(stage),
            "upstream_base_lr": UPSTREAM_BASE_LR[stage], "lr_groups": groups,
            "decay": schedule.decay, "total_steps": schedule.total_steps, "steps_per_epoch": schedule.steps_per_epoch,
            "world_size": accelerator.num_processes, "device": accelerator.device.type,  # `cpu` is only the flag
            "global_batch": cfg.batch_size * accelerator.num_processes * cfg.grad_accum, "inputs": inputs,
            "model": rebuilt.config}


class _NoDisplay:
    def start(self, total: int, done: int = 0) -> None: ...

    def update(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def _display(progress: Any, main: bool):
    """The progress display on the main process (none elsewhere)."""
    if not main or not progress:
        return _NoDisplay()
    if progress is True:
        from gsv_ray.console import ProgressDisplay

        return ProgressDisplay()
    return progress
