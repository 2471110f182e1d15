"""What a finished (or interrupted) ``gsv-ray tune`` search leaves behind, built from plain data.

The search code turns Ray's ``ResultGrid`` into a :class:`TuneOutcome`; everything here works from
that alone (no Ray import), so the results can be rendered, written and logged the same way whether
the search finished, was early-stopped trial by trial, or was cut short:

* :func:`results_table` -- a ``rich`` table for the terminal;
* :func:`write_results` -- ``results.json`` (all fields, NaN -> ``null``) and ``summary.png``
  (validation loss and LR schedule per trial), each written atomically;
* :func:`log_summary_run` -- one W&B run (``job_type="tune-summary"``, grouped with the trials)
  holding the table, the best settings and the figure.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gsv_ray.atomic import atomic_write
from gsv_ray.errors import first_line

#: ``results.json`` layout version; bump when fields change meaning.
RESULTS_FORMAT = "gsv-ray-tune-results/2"  # 2: best_value (the objective's), refit
BEST_MARK = "★"
SUMMARY_JOB_TYPE = "tune-summary"
TABLE_KEY = "tune/results"
IMAGE_KEY = "tune/summary"
TABLE_COLUMNS = ("trial_id", "lr_scale", "warmup_steps", "best_value", "best_step", "steps", "status", "wandb_run_id")
#: How a trial ended (its ``status``): ran its whole budget; stopped by the scheduler (ASHA) for a
#: poor validation loss; stopped because the search was (Ctrl-C, a dead driver); raised; never ran.
COMPLETED, EARLY_STOPPED, INTERRUPTED, FAILED, NOT_STARTED = (
    "completed",
    "early-stopped",
    "interrupted",
    "failed",
    "not-started",
)
FATES = (COMPLETED, EARLY_STOPPED, INTERRUPTED, FAILED, NOT_STARTED)
#: Fates of trials that never got to finish because the search itself stopped.
INTERRUPTED_STATUSES = (INTERRUPTED, NOT_STARTED)
#: Above this many trials the legend names only the best trial (the rest stay as thin lines).
LEGEND_MAX = 12


# -- data ----------------------------------------------------------------------------------------
@dataclass
class TrialSummary:
    """One trial as the search saw it last: its settings, where it got to and how it ended.

    ``status``: its fate, one of :data:`FATES` (``failed``: ``error`` holds the message).
    ``val_history`` (the search's metric) / ``lr_history`` are ``(step, value)`` pairs in step order;
    ``best_value`` / ``best_step``: the metric's best value (per the search's mode) and its step."""

    trial_id: str
    lr_scale: float
    warmup_steps: int
    status: str
    error: str | None = None
    steps: int = 0
    best_value: float | None = None
    best_step: int | None = None
    val_history: list[tuple[int, float]] = field(default_factory=list)
    lr_history: list[tuple[int, float]] = field(default_factory=list)
    export_paths: list[str] = field(default_factory=list)
    wandb_run_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; non-finite floats become ``None`` (strict JSON has no NaN)."""
        return _finite(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TrialSummary:
        """Inverse of :meth:`to_json` (histories come back as lists of tuples; unknown keys ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "best_val_loss" in d and "best_value" not in d:  # format 1: the metric was always val/loss
            kw["best_value"] = d["best_val_loss"]
        for k in ("val_history", "lr_history"):
            kw[k] = [(int(s), _float_or_nan(v)) for s, v in kw.get(k) or []]
        kw["export_paths"] = [str(p) for p in kw.get("export_paths") or []]
        return cls(**kw)


#: What became of the refit (the winner's settings trained on every utterance): it ran to its end;
#: --no-refit; not run (no winner, or the search did not finish); started but not finished.
REFIT_DONE, REFIT_SKIPPED, REFIT_NOT_RUN, REFIT_PENDING = "completed", "skipped", "not-run", "pending"


@dataclass
class RefitSummary:
    """The refit: the winning settings trained on every utterance for ``steps`` (the winner's best
    step) in ``run_dir``; ``exports``: its GPT-SoVITS files there (what ``-o/best`` holds when done)."""

    status: str
    steps: int | None = None
    run_dir: str | None = None
    exports: list[str] = field(default_factory=list)
    wandb_run_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _finite(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RefitSummary:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TuneOutcome:
    """A whole search: its name (also the W&B group of its trials), what it optimised, the trials,
    whether it was interrupted, and the best trial (lowest ``best_value``; see :func:`pick_best`)."""

    name: str
    stage: str
    version: str | None
    metric: str = "val/loss"
    mode: str = "min"
    trials: list[TrialSummary] = field(default_factory=list)
    interrupted: bool = False
    best: TrialSummary | None = None
    refit: RefitSummary | None = None
    #: what -o/best holds: {"refit" | "trial": [paths]} (the refit's files at its top, the winning
    #: trial's own in best/trial/ beside them when there was a refit)
    best_files: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Everything, as strict JSON types (NaN -> ``None``)."""
        return {
            "format": RESULTS_FORMAT,
            "name": self.name,
            "stage": self.stage,
            "version": self.version,
            "metric": self.metric,
            "mode": self.mode,
            "interrupted": bool(self.interrupted),
            "best_trial_id": self.best.trial_id if self.best is not None else None,
            "best": self.best.to_json() if self.best is not None else None,
            "status_counts": status_counts(self.trials),
            "trials": [t.to_json() for t in self.trials],
            "refit": self.refit.to_json() if self.refit is not None else None,
            "best_files": _finite(self.best_files),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TuneOutcome:
        """Inverse of :meth:`to_json`; ``best`` is the trial object from ``trials`` with that id."""
        trials = [TrialSummary.from_json(t) for t in d.get("trials") or []]
        best_id = d.get("best_trial_id") or (d.get("best") or {}).get("trial_id")
        best = next((t for t in trials if t.trial_id == best_id), None)
        if best is None and d.get("best"):
            best = TrialSummary.from_json(d["best"])
        return cls(
            name=d["name"],
            stage=d["stage"],
            version=d.get("version"),
            metric=d.get("metric", "val/loss"),
            mode=d.get("mode", "min"),
            trials=trials,
            interrupted=bool(d.get("interrupted")),
            best=best,
            refit=RefitSummary.from_json(d["refit"]) if d.get("refit") else None,
            best_files={k: [str(p) for p in v] for k, v in (d.get("best_files") or {}).items()},
        )


def pick_best(trials: Iterable[TrialSummary], mode: str = "min") -> TrialSummary | None:
    """The trial with the best finite ``best_value`` (lowest for ``mode`` min, highest for max;
    the first one on ties), or ``None``.

    Trials of every status count: an early-stopped or interrupted trial's best checkpoint is
    as real as a finished one's."""
    cands = [t for t in trials if _is_finite(t.best_value)]
    pick = max if mode == "max" else min
    return pick(cands, key=lambda t: t.best_value) if cands else None  # type: ignore[arg-type,return-value]


def status_counts(trials: Iterable[TrialSummary]) -> dict[str, int]:
    """``{status: number of trials}`` in first-seen order."""
    out: dict[str, int] = {}
    for t in trials:
        out[t.status] = out.get(t.status, 0) + 1
    return out


def load_results(path: str | Path) -> TuneOutcome:
    """Read a ``results.json`` written by :func:`write_results` back into a :class:`TuneOutcome`."""
    return TuneOutcome.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


# -- helpers -------------------------------------------------------------------------------------
def _is_finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _float_or_nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _finite(obj: Any) -> Any:
    """Recursively: non-finite floats -> ``None``, tuples -> lists, paths -> str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy / torch scalars
        return _finite(obj.item())
    return obj


def _fmt(v: Any, spec: str) -> str:
    return format(v, spec) if _is_finite(v) else "—"


def _status_text(t: TrialSummary) -> str:
    return t.status  # a failed trial's cause: one line each under the table (failure_lines)


def failure_lines(outcome: TuneOutcome) -> list[str]:
    """One line per failed trial with its cause (the first exception of its workers)."""
    return [f"trial {t.trial_id} failed: {first_line(t.error, 120)}" for t in outcome.trials if t.status == FAILED]


def trial_label(t: TrialSummary) -> str:
    """A short legend label: the trial id and its two searched settings."""
    return f"{t.trial_id}  lr×{_fmt(t.lr_scale, '.3g')}  warmup {t.warmup_steps}"


def _title(outcome: TuneOutcome) -> str:
    what = f"{outcome.stage} {outcome.version}" if outcome.version else outcome.stage
    title = f"tune {outcome.name} — {what} — {len(outcome.trials)} trials, {outcome.metric} ({outcome.mode})"
    return title + " — INTERRUPTED" if outcome.interrupted else title


# -- 1. terminal table ---------------------------------------------------------------------------
def results_table(outcome: TuneOutcome) -> Any:
    """A ``rich.table.Table`` of the trials (best first by ``best_value``, then the rest in the
    given order), the best row marked with :data:`BEST_MARK`; the title says when the search was
    interrupted, so a partial table is never mistaken for a finished one."""
    from rich import box
    from rich.table import Table

    # no vertical rules: the table fits 80 columns with whole numbers in every cell
    table = Table(
        title=_title(outcome),
        caption=_caption(outcome),
        show_lines=False,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1),
    )
    # the metric's column: its short name (the title names it whole, with its mode)
    for col in ("trial", "lr_scale", "warmup", _short(outcome.metric), "at step", "steps", "status"):
        table.add_column(col, justify="left" if col in ("trial", "status") else "right", no_wrap=True)
    best_id = outcome.best.trial_id if outcome.best is not None else None
    for t in _table_order(outcome.trials, outcome.mode):
        is_best = best_id is not None and t.trial_id == best_id
        style = "bold green" if is_best else ("red" if t.status == FAILED else None)
        table.add_row(
            f"{BEST_MARK} {t.trial_id}" if is_best else f"  {t.trial_id}",
            _fmt(t.lr_scale, ".4g"),
            str(t.warmup_steps),
            _fmt(t.best_value, ".4f"),
            "—" if t.best_step is None else str(t.best_step),
            str(t.steps),
            _status_text(t),
            style=style,
        )
    return table


def _short(metric: str) -> str:
    """A metric's short name for a column header: ``val/quality`` -> ``quality`` (at most 9 characters)."""
    name = metric.removeprefix("val/")
    return name if len(name) <= 9 else name[:8] + "…"


def ranked_trials(outcome: TuneOutcome) -> list[TrialSummary]:
    """The trials as the table lists them: best first by the search's mode, those without a value last."""
    return _table_order(outcome.trials, outcome.mode)


def _table_order(trials: Sequence[TrialSummary], mode: str = "min") -> list[TrialSummary]:
    """Trials with a value first, best first (``mode``); the others after, in their original order."""
    scored = sorted(
        (t for t in trials if _is_finite(t.best_value)), key=lambda t: float(t.best_value), reverse=mode == "max"
    )  # type: ignore[arg-type]
    return scored + [t for t in trials if not _is_finite(t.best_value)]


def _caption(outcome: TuneOutcome) -> str | None:
    b = outcome.best
    if b is None:
        return f"no trial reported {outcome.metric}"
    return (
        f"{BEST_MARK} best: {b.trial_id} — lr_scale {_fmt(b.lr_scale, '.4g')}, warmup {b.warmup_steps}, "
        f"{outcome.metric} {_fmt(b.best_value, '.4f')} at step {b.best_step}"
    )


# -- 2. files ------------------------------------------------------------------------------------
def write_results(outcome: TuneOutcome, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json`` and ``summary.png`` into ``out_dir`` (created; existing ones replaced),
    each through a temp file + rename so a reader never sees half a file. Returns
    ``{"json": path, "png": path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(outcome.to_json(), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    json_path = atomic_write(out / "results.json", lambda f: f.write(text.encode("utf-8")), overwrite=True)
    png = render_summary_png(outcome)
    png_path = atomic_write(out / "summary.png", lambda f: f.write(png), overwrite=True)
    return {"json": json_path, "png": png_path}


# long: one figure drawn top to bottom (two panels, their legends and marks); split, it reads worse
def render_summary_png(outcome: TuneOutcome, *, dpi: int = 100) -> bytes:
    """The two-panel summary figure as PNG bytes: validation loss per trial (best highlighted, its
    best point marked) and the main group's LR per trial, both over steps.

    Uses a bare ``matplotlib.figure.Figure`` with the Agg canvas: no pyplot, so no global figure
    registry and no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax_val, ax_lr = fig.subplots(1, 2)
    best_id = outcome.best.trial_id if outcome.best is not None else None
    many = len(outcome.trials) > LEGEND_MAX
    colors = _colors(len(outcome.trials))
    plotted_val = plotted_lr = False
    for i, t in enumerate(outcome.trials):
        is_best = t.trial_id == best_id
        label = trial_label(t) + ("" if t.status == COMPLETED else f" [{t.status}]")
        if is_best:
            label = f"{BEST_MARK} {label}"
        if many and not is_best:
            label = "_nolegend_"
        kw: dict[str, Any] = dict(color=colors[i], label=label)
        if is_best:
            kw.update(linewidth=2.6, alpha=1.0, zorder=3)
        else:
            kw.update(linewidth=1.1, alpha=0.7, zorder=2, linestyle="--" if t.status != COMPLETED else "-")
        vx, vy = _xy(t.val_history)
        if vx:
            ax_val.plot(vx, vy, marker="o" if len(vx) < 30 else None, markersize=3, **kw)
            plotted_val = True
            if is_best and t.best_step is not None and _is_finite(t.best_value):
                ax_val.scatter(
                    [t.best_step],
                    [t.best_value],
                    s=90,
                    marker="*",
                    color=colors[i],
                    edgecolors="black",
                    linewidths=0.6,
                    zorder=4,
                )
        elif not many or is_best:  # keep the trial in the legend even with no points (e.g. errored)
            ax_val.plot([], [], **kw)
        lx, ly = _xy(t.lr_history)
        if lx:
            ax_lr.plot(lx, ly, **{**kw, "label": "_nolegend_"})
            plotted_lr = True
    ax_val.set_title(f"validation loss ({outcome.metric}) per trial")
    ax_val.set_xlabel("step")
    ax_val.set_ylabel(outcome.metric)
    ax_val.grid(True, alpha=0.3)
    if not plotted_val:
        ax_val.text(0.5, 0.5, "no validation results", ha="center", va="center", transform=ax_val.transAxes)
    if ax_val.get_legend_handles_labels()[0]:
        ax_val.legend(
            fontsize="x-small",
            loc="upper right",
            framealpha=0.8,
            title=f"{len(outcome.trials)} trials" if many else None,
            title_fontsize="x-small",
        )
    ax_lr.set_title("learning rate (main group) per trial")
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("lr")
    ax_lr.grid(True, alpha=0.3)
    if plotted_lr:
        ys = [y for t in outcome.trials for _, y in t.lr_history if _is_finite(y) and y > 0]
        if ys and max(ys) / min(ys) > 50:
            ax_lr.set_yscale("log")
    else:
        ax_lr.text(0.5, 0.5, "no learning-rate history", ha="center", va="center", transform=ax_lr.transAxes)
    fig.suptitle(_title(outcome), fontsize="medium")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _xy(history: Sequence[tuple[int, float]]) -> tuple[list[int], list[float]]:
    pts = sorted((int(s), float(v)) for s, v in history if _is_finite(v))
    return [s for s, _ in pts], [v for _, v in pts]


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "viridis"]
    if n <= 20:
        return [cmap(i % cmap.N) for i in range(n)]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


# -- 3. W&B --------------------------------------------------------------------------------------
def table_rows(outcome: TuneOutcome) -> list[list[Any]]:
    """One row per trial in :data:`TABLE_COLUMNS` order (non-finite losses -> ``None``)."""
    return [
        [
            t.trial_id,
            float(t.lr_scale),
            int(t.warmup_steps),
            float(t.best_value) if _is_finite(t.best_value) else None,
            t.best_step,
            int(t.steps),
            t.status,
            t.wandb_run_id,
        ]
        for t in outcome.trials
    ]


def best_summary(outcome: TuneOutcome) -> dict[str, Any]:
    """Run-summary entries: the best settings (``best/*``) plus trial counts and the interrupted flag."""
    out: dict[str, Any] = {"tune/trials": len(outcome.trials), "tune/interrupted": bool(outcome.interrupted)}
    for status, n in status_counts(outcome.trials).items():
        out[f"tune/status/{status}"] = n
    b = outcome.best
    if b is not None:
        out.update(
            {
                "best/trial_id": b.trial_id,
                "best/lr_scale": float(b.lr_scale),
                "best/warmup_steps": int(b.warmup_steps),
                "best/metric": outcome.metric,
                "best/mode": outcome.mode,
                "best/value": float(b.best_value) if _is_finite(b.best_value) else None,
                "best/step": b.best_step,
                "best/steps": int(b.steps),
                "best/status": b.status,
                "best/wandb_run_id": b.wandb_run_id,
                "best/export_paths": list(b.export_paths),
            }
        )
    for holds, paths in outcome.best_files.items():  # what -o/best holds: the refit's files, the trial's
        out[f"best/{holds}_files"] = list(paths)
    if outcome.refit is not None:
        r = outcome.refit
        out.update(
            {
                "refit/status": r.status,
                "refit/steps": r.steps,
                "refit/export_paths": list(r.exports),
                "refit/wandb_run_id": r.wandb_run_id,
            }
        )
    return out


def log_summary_run(
    outcome: TuneOutcome,
    *,
    project: str,
    mode: str | None = None,
    dir: str | Path,
    group: str | None = None,
    name: str | None = None,
    entity: str | None = None,
    png_path: str | Path | None = None,
    extra: Callable[[], dict[str, Any]] | None = None,
) -> Any:
    """Log the search as one W&B run next to its trials: ``job_type="tune-summary"``, grouped with
    the trials (``group`` defaults to ``outcome.name``), the per-trial table, the best settings in
    the run summary and the summary figure -- so the comparison is in W&B, not only on disk.

    ``mode`` follows :class:`gsv_ray.track.Tracker` (offline without an API key; ``disabled`` is a
    no-op). The figure is ``png_path`` when given (e.g. what :func:`write_results` wrote), else it
    is rendered into ``<dir>/summary.png``. ``extra()``: more entries for the same row (e.g. the
    listening table), built once the run is open. Returns the finished ``Tracker`` (``run_id``,
    ``run_file``, ``mode``)."""
    from gsv_ray.track import Tracker

    group = group or outcome.name
    config = {
        "tune/name": outcome.name,
        "stage": outcome.stage,
        "version": outcome.version,
        "metric": outcome.metric,
        "mode": outcome.mode,
        "num_trials": len(outcome.trials),
        "interrupted": bool(outcome.interrupted),
    }
    tracker = Tracker().start(
        config,
        project=project,
        dir=dir,
        mode=mode,
        group=group,
        job_type=SUMMARY_JOB_TYPE,
        name=name or f"{outcome.name}-summary",
        entity=entity,
    )
    if not tracker.enabled:
        return tracker
    ok = False
    try:
        import wandb

        if png_path is None:
            png = render_summary_png(outcome)
            png_path = atomic_write(Path(dir) / "summary.png", lambda f: f.write(png), overwrite=True)
        table = wandb.Table(columns=list(TABLE_COLUMNS), data=table_rows(outcome), allow_mixed_types=True)
        image = wandb.Image(str(png_path), caption=_title(outcome))
        tracker.log(0, {TABLE_KEY: table, IMAGE_KEY: image, **(extra() if extra is not None else {})})
        tracker.set_summary(best_summary(outcome))
        ok = True
    finally:
        tracker.finish(exit_code=0 if ok else 1)
    return tracker


__all__ = [
    "BEST_MARK",
    "RESULTS_FORMAT",
    "TABLE_COLUMNS",
    "RefitSummary",
    "TrialSummary",
    "TuneOutcome",
    "best_summary",
    "load_results",
    "log_summary_run",
    "pick_best",
    "ranked_trials",
    "render_summary_png",
    "results_table",
    "status_counts",
    "table_rows",
    "trial_label",
    "write_results",
]
