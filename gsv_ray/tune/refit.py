"""The refit: after a search, the winning settings trained on *every* utterance, held-out ones included.

A small voice set cannot spare its held-out utterances for the weights it finally delivers: the
search needs them to rank trials, the delivered model does not. The refit is an ordinary training
run (:func:`gsv_ray.distributed.launch.train_on_ray`, on the resources a trial had) in
``-o/refit`` with the winner's ``lr_scale`` and warmup, nothing held out (``val_fraction`` 0, no
``val_names``), for the winner's *best step*: the step of its best validation value (a checkpoint
step: trials save at every validation), whether it then went on, was stopped early or finished. Its
W&B run is in the search's group (``job_type="refit"``), copied into ``-o/wandb`` beside the
trials'. It checkpoints every ``--save-every`` steps (the trials: at every validation). It owns
``-o/refit`` like ``train`` owns its ``-o`` (the run lock), and records its end there
(``finished.json``): a ``tune --resume`` of a search whose refit was cut short continues it; one
whose refit finished leaves it as it is.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Callable

from gsv_ray.train.config import TrainConfig
from gsv_ray.tune.results import REFIT_DONE, RefitSummary, TrialSummary
from gsv_ray.tune.search import TuneOptions

REFIT_DIR = "refit"
REFIT_JOB_TYPE = "refit"


def refit_config(cfg: TrainConfig, winner: TrialSummary) -> TrainConfig:
    """The search's base training config with the winner's settings, every utterance trained on, for
    the winner's best step, in ``-o/refit`` (exports named like the trials', after the search's -o)."""
    return dataclasses.replace(
        cfg,
        output_dir=str(Path(cfg.output_dir) / REFIT_DIR),
        lr_scale=float(winner.lr_scale),
        warmup_steps=int(winner.warmup_steps),
        max_steps=int(winner.best_step or 0),
        epochs=None,
        val_fraction=0.0,
        val_names=None,
        resume=None,
        name=cfg.run_name,
    )


def run_refit(
    cfg: TrainConfig,
    opts: TuneOptions,
    winner: TrialSummary,
    *,
    group: str,
    say: Callable[[str], None] = print,
    console: Any = None,
    session: Any = None,
) -> RefitSummary:
    """Train (or continue, or find finished) the refit of ``winner``; see the module doc. ``session``
    (a :class:`gsv_ray.distributed.RaySession`): the search's Ray, reused (no second local Ray start)."""
    from gsv_ray.console import shown
    from gsv_ray.distributed import RayOptions, recorded_run_name, train_on_ray, wandb_run_id
    from gsv_ray.train.rundir import FINISHED, existing_run, finished_line, own_output_dir, record_finished

    rcfg = refit_config(cfg, winner)
    out = Path(rcfg.output_dir)
    with own_output_dir(out):
        if finished_line(rcfg) is not None:  # finished before: its exports as recorded
            exports = [str(p) for p in json.loads((out / FINISHED).read_text()).get("exports") or []]
        else:
            resume = existing_run(out) is not None
            say(
                f"refit: lr_scale {winner.lr_scale:.4g}, warmup {winner.warmup_steps} on every utterance for "
                f"{rcfg.max_steps} steps (trial {winner.trial_id}'s best step) in {shown(out)}"
                + (" (continued)" if resume else "")
            )
            ray = RayOptions(
                workers=opts.workers_per_trial,
                gpus_per_worker=opts.gpus_per_worker,
                cpus_per_worker=opts.cpus_per_worker,
                address=opts.address,
                storage=opts.storage,
                max_failures=opts.max_failures,
                resume=resume,
            )
            # its lines (rebuild, Ray, data) in the log: the console shows its progress and the summary
            result = train_on_ray(
                rcfg,
                ray,
                say=print,
                wandb_group=group,
                wandb_job_type=REFIT_JOB_TYPE,
                console=console,
                rank0_lines=False,
                session=session,
            )
            record_finished(rcfg, result.steps, result.epochs, result.exports)
            exports = [str(p) for p in result.exports]
    for run_dir in (out / "wandb").glob("*run-*"):  # beside the trials' and the summary's: one `wandb sync`
        shutil.copytree(run_dir, Path(cfg.output_dir) / "wandb" / run_dir.name, dirs_exist_ok=True)
    name = recorded_run_name(out)
    return RefitSummary(
        status=REFIT_DONE,
        steps=rcfg.max_steps,
        run_dir=str(out),
        exports=exports,
        wandb_run_id=wandb_run_id(name) if name else None,
    )
