"""The whole ``gsv-ray tune`` workflow around the search: results, the refit, best exports, summary run."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from gsv_ray.atomic import link_or_copy
from gsv_ray.train.config import UPSTREAM_BASE_LR, TrainConfig
from gsv_ray.train.rundir import record_search_finished
from gsv_ray.train.tracking import offline_runs
from gsv_ray.tune.listen import LISTEN_KEY, search_rows, wandb_listening_table, write_listening_page
from gsv_ray.tune.refit import run_refit
from gsv_ray.tune.results import (
    INTERRUPTED_STATUSES,
    REFIT_DONE,
    REFIT_NOT_RUN,
    REFIT_PENDING,
    REFIT_SKIPPED,
    RefitSummary,
    TuneOutcome,
    failure_lines,
    load_results,
    log_summary_run,
    results_table,
    write_results,
)
from gsv_ray.tune.search import TuneOptions, default_name, run_tune


@dataclass
class TuneRun:
    outcome: TuneOutcome
    results: dict[str, Path]
    best_exports: list[Path]


def tune_and_report(
    cfg: TrainConfig,
    opts: TuneOptions,
    *,
    say: Callable[[str], None] | None = None,
    console: Any = None,
    interrupted: str | None = None,
) -> TuneRun:
    """Run the search, print the results table, write results.json / summary.png, refit the winner on
    every utterance (``opts.refit``), place ``-o/best/`` (the refit's files, the winning trial's own in
    ``best/trial/``; without a refit the trial's at the top), and log the W&B summary run.
    ``console``: a :class:`gsv_ray.console.Chatter` (lines, live trial rows and the table go there).
    ``interrupted``: what to do after Ctrl-C (default: tune's ``--resume``). A ``--resume`` of a search
    whose trials all finished but whose refit did not goes straight to the refit."""
    from gsv_ray.distributed import RaySession

    say = say or (console.say if console is not None else print)
    with RaySession() as session:  # one Ray for the search and its refit
        outcome, files = _search_and_refit(cfg, opts, say=say, console=console, session=session)
    _listen_and_summary_run(cfg, outcome, Path(cfg.output_dir), files)
    best_exports = _say_summary(cfg, outcome, files, say=say, console=console, interrupted=interrupted)
    if _complete(outcome):
        record_search_finished(Path(cfg.output_dir), outcome.name, best_exports)  # a later --resume changes nothing
    return TuneRun(outcome=outcome, results=files, best_exports=best_exports)


def _complete(outcome: TuneOutcome) -> bool:
    """Every trial ran to its end (no Ctrl-C, none interrupted)."""
    return not outcome.interrupted and not any(t.status in INTERRUPTED_STATUSES for t in outcome.trials)


def _search_and_refit(
    cfg: TrainConfig, opts: TuneOptions, *, say: Callable[[str], None], console: Any, session: Any
) -> tuple[TuneOutcome, dict[str, Path]]:
    """The search (or, on ``--resume``, its recorded outcome), the results table and files, then the
    refit of the winner on ``session``'s Ray; returns the outcome and the results files."""
    out = Path(cfg.output_dir)
    outcome = searched(out, opts, opts.name or default_name(cfg)) if opts.resume else None
    if outcome is None:
        outcome = run_tune(cfg, opts, say=say, console=console, session=session)
    if console is not None:
        from rich.console import Console

        from gsv_ray.console import WIDTH

        Console(file=console.out, width=WIDTH).print(results_table(outcome))
    for line in failure_lines(outcome):
        say(line)
    refit = opts.refit and _complete(outcome) and outcome.best is not None and bool(outcome.best.best_step)
    outcome.refit = RefitSummary(
        status=REFIT_PENDING if refit else REFIT_SKIPPED if not opts.refit else REFIT_NOT_RUN,
        steps=outcome.best.best_step if refit else None,
    )
    place_best(outcome, out, refit=None)  # the winning trial's files now: a refit cut short leaves them
    files = write_results(outcome, out)
    if refit:
        outcome.refit = run_refit(
            cfg, opts, outcome.best, group=outcome.name, say=say, console=console, session=session
        )
        place_best(outcome, out, refit=outcome.refit)
        files = write_results(outcome, out)
    return outcome, files


def _listen_and_summary_run(cfg: TrainConfig, outcome: TuneOutcome, out: Path, files: dict[str, Path]) -> None:
    """Write the listening page of the search's held-out samples (when it has any; added to ``files``
    as "listen") and log the W&B summary run (results plot, and the listening table)."""
    rows = search_rows(outcome, out, cfg.data)
    page = None
    if rows:
        page = write_listening_page(
            out,
            rows,
            title=f"{outcome.name}: held-out utterances, each trial at its best step",
            metric=outcome.metric,
            mode=outcome.mode,
            best=outcome.best.trial_id if outcome.best is not None else None,
        )
        files["listen"] = page.html
    wandb_dir = out  # W&B writes under $WANDB_DIR when set, else <-o>/wandb
    log_summary_run(
        outcome,
        project=cfg.wandb_project,
        mode=cfg.wandb_mode,
        dir=wandb_dir,
        group=outcome.name,
        png_path=files.get("png"),
        extra=(lambda: {LISTEN_KEY: wandb_listening_table(page.rows, metric=outcome.metric, best=page.best)})
        if page is not None
        else None,
    )


def searched(out: Path, opts: TuneOptions, name: str) -> TuneOutcome | None:
    """The outcome of this -o's search when every trial of it finished (its ``results.json``): a
    ``--resume`` then only has the refit left to do. None: the search itself is to be resumed."""
    from gsv_ray.tune.search import check_same_search

    try:
        outcome = load_results(out / "results.json")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if outcome.interrupted or any(t.status in INTERRUPTED_STATUSES for t in outcome.trials):
        return None
    if name != outcome.name:
        return None  # run_tune says there is no search of that name
    check_same_search(out, outcome.name, opts.objective())
    return outcome


def place_best(outcome: TuneOutcome, out: Path, *, refit: RefitSummary | None) -> None:
    """``-o/best``: hard links (no data written; a sparse copy across filesystems) to the winning
    trial's exports, in ``best/trial/`` when there is a refit (whose exports are then at the top) or
    at the top without one. Rebuilt from nothing each time: ours, and a resumed search's best may be
    another trial. Nothing writes into these files in place (outputs are replaced by rename)."""
    shutil.rmtree(out / "best", ignore_errors=True)
    outcome.best_files = {}
    b = outcome.best
    if b is None:
        return
    with_refit = outcome.refit is not None and outcome.refit.status in (REFIT_PENDING, REFIT_DONE)
    trial_dir, into = out / "trials" / b.trial_id, out / "best" / ("trial" if with_refit else "")
    outcome.best_files["trial"] = [
        str(link_or_copy(Path(p), into / Path(p).relative_to(trial_dir))) for p in b.export_paths
    ]
    if refit is not None:
        outcome.best_files["refit"] = [
            str(link_or_copy(Path(p), out / "best" / Path(p).relative_to(refit.run_dir))) for p in refit.exports
        ]


def _say_summary(
    cfg: TrainConfig,
    outcome: TuneOutcome,
    files: dict[str, Path],
    *,
    say: Callable[[str], None],
    console: Any,
    interrupted: str | None,
) -> list[Path]:
    """The last lines: where the results are, what to use and where it is, how to upload the runs.
    Returns what ``-o/best`` holds."""
    from gsv_ray.console import Copyable, command, shown

    out = Path(cfg.output_dir)
    say(
        f"results: {shown(files['json'])}, {shown(files['png'])}"
        + (f", {shown(files['listen'])}" if files.get("listen") else "")
    )
    if console is not None and console.used:
        say(f"log (Ray, W&B): {shown(console.log_file)}")
    if outcome.interrupted:
        say(f"interrupted: {interrupted or f'resume with the same command plus --resume (tune run {outcome.name})'}")
    if outcome.best is not None:
        b = outcome.best
        peak = UPSTREAM_BASE_LR[outcome.stage] * b.lr_scale
        say(
            f"best: lr_scale {b.lr_scale:.4g} (peak LR {peak:.3g}), warmup {b.warmup_steps}: "
            f"{outcome.metric.removeprefix('val/')} {b.best_value:.4g} at step {b.best_step}"
        )
    refit = outcome.best_files.get("refit")
    for p in outcome.best_files.get("trial", []):  # trained without the held-out utterances
        say(Copyable(f"{'winning trial' if refit else 'best weights'}:", shown(p)))
    for p in refit or []:  # trained on every utterance
        say(Copyable("best weights (refit):", shown(p)))
    runs = offline_runs(out)
    if runs:
        say(
            Copyable(
                f"W&B: {len(runs)} offline runs; upload:",
                command("wandb", "sync", shown(out / "wandb"), glob="/offline-run-*"),
            )
        )
    return [Path(p) for p in (refit if refit is not None else outcome.best_files.get("trial", []))]
