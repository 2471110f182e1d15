"""The whole ``gsv-ray tune`` workflow around the search: results, best export, summary run."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from gsv_ray.atomic import link_or_copy
from gsv_ray.train.config import TrainConfig
from gsv_ray.train.rundir import record_search_finished
from gsv_ray.train.tracking import offline_runs
from gsv_ray.tune.results import (INTERRUPTED_STATUSES, TuneOutcome, failure_lines, log_summary_run, results_table,
                                  write_results)
from gsv_ray.tune.search import TuneOptions, run_tune


@dataclass
class TuneRun:
    outcome: TuneOutcome
    results: dict[str, Path]
    best_exports: list[Path]


def tune_and_report(cfg: TrainConfig, opts: TuneOptions, *, say: Callable[[str], None] | None = None,
                    console: Any = None, interrupted: str | None = None) -> TuneRun:
    """Run the search, print the results table, write results.json / summary.png, copy the best
    trial's GPT-SoVITS files to ``-o/best/``, and log the W&B summary run. ``console``: a
    :class:`gsv_ray.console.Chatter` (lines, live trial rows and the table go there).
    ``interrupted``: what to do after Ctrl-C (default: tune's ``--resume``)."""
    say = say or (console.say if console is not None else print)
    outcome = run_tune(cfg, opts, say=say, console=console)
    out = Path(cfg.output_dir)
    if console is not None:
        from rich.console import Console

        from gsv_ray.console import WIDTH

        Console(file=console.out, width=WIDTH).print(results_table(outcome))
    for line in failure_lines(outcome):
        say(line)
    files = write_results(outcome, out)
    best_exports: list[Path] = []
    shutil.rmtree(out / "best", ignore_errors=True)  # ours: a resumed search's best may be another trial
    if outcome.best is not None and outcome.best.export_paths:
        trial_dir = out / "trials" / outcome.best.trial_id
        for p in map(Path, outcome.best.export_paths):
            # a hard link (no data written; a sparse copy across filesystems): nothing writes into
            # either file in place (outputs are replaced by rename), and best/ is rebuilt each time
            best_exports.append(link_or_copy(p, out / "best" / p.relative_to(trial_dir)))
    wandb_dir = out  # W&B writes under $WANDB_DIR when set, else <-o>/wandb
    log_summary_run(outcome, project=cfg.wandb_project, mode=cfg.wandb_mode, dir=wandb_dir, group=outcome.name,
                    png_path=files.get("png"))
    from gsv_ray.console import Copyable, command, shown

    say(f"results: {shown(files['json'])}, {shown(files['png'])}")
    if console is not None and console.used:
        say(f"log (Ray, W&B): {shown(console.log_file)}")
    if outcome.interrupted:
        say(f"interrupted: {interrupted or f'resume with the same command plus --resume (tune run {outcome.name})'}")
    if outcome.best is not None:  # the last lines: what to use, where it is, how to upload the runs
        b = outcome.best
        peak = cfg.peak_lr(outcome.stage) / cfg.lr_scale * b.lr_scale
        say(f"best: lr_scale {b.lr_scale:.4g} (peak LR {peak:.3g}), warmup {b.warmup_steps}: val loss "
            f"{b.best_val_loss:.4g} at step {b.best_step}")
    for p in best_exports:
        say(f"best weights: {shown(p)}")
    if not outcome.interrupted and not any(t.status in INTERRUPTED_STATUSES for t in outcome.trials):
        record_search_finished(out, outcome.name, best_exports)  # a later --resume changes nothing
    runs = offline_runs(out)
    if runs:
        say(Copyable(f"W&B: {len(runs)} offline runs; upload:",
                     command("wandb", "sync", shown(out / "wandb"), glob="/offline-run-*")))
    return TuneRun(outcome=outcome, results=files, best_exports=best_exports)
