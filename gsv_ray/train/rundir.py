"""A run's directory ``-o``: who owns it, what says it holds a run, and what a ``--resume`` may change.

* A run owns its ``-o`` for its whole life (:func:`own_output_dir`): an OS lock taken by the process
  that runs it before anything is written, dropped by the kernel when it ends however it ends. A
  second run on the same ``-o`` (with or without ``--resume``) is refused naming the owner's PID.
* ``-o`` is a folder for the run: never the filesystem root, the home directory, or a populated
  folder that holds no run of ours.
* ``config.json`` records the run's settings and its inputs' sha256; a ``--resume`` that would change
  the run's trajectory (:data:`TRAJECTORY`, the input files' content) is refused naming the option.
* ``finished.json`` records a finished run: resuming it again does nothing (no export rewritten, no
  second W&B run) unless a larger ``--max-steps`` / ``--epochs`` asks for more.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gsv_ray.atomic import write_json
from gsv_ray.errors import ConfigError, GsvError, check_output_path
from gsv_ray.options import flag
from gsv_ray.owned import RUN_LOCK, RunBusy, RunOwner
from gsv_ray.train.config import TrainConfig

#: in -o of a run whose checkpoints a launcher keeps elsewhere (``--workers``: Ray's storage): the
#: launcher's record of where, so a --resume finds them after any stop. What it holds is the launcher's
#: to write and read (gsv_ray/distributed/launch.py); the name dates from when only Ray wrote one and
#: stays, so runs recorded before resume
LAUNCH_RECORD = "ray_run.json"
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoints", LAUNCH_RECORD, "ray")
#: a tune search's results in its -o
TUNE_RESULTS = ("results.json", "best", "trials", "summary.png", "refit", "listen.html", "listen")
#: a tune search's name and objective in its -o (what its --resume compares)
SEARCH_RECORD = "search.json"
FINISHED = "finished.json"
#: every name gsv-ray writes at the top of an -o (besides ``<Stage>_weights*`` export folders)
RUN_ENTRIES = (
    *RUN_FILES,
    *TUNE_RESULTS,
    SEARCH_RECORD,
    FINISHED,
    "logs",
    "wandb",
    "wandb_run_id",
    "run_config.json",
    "early_stopped.json",
    RUN_LOCK,
)
#: a run's exports in its -o: upstream's ``SoVITS_weights*/*.pth`` and ``GPT_weights*/*.ckpt`` folders
#: (named by :func:`gsv_ray.train.sovits.export_dir_name` / :func:`gsv_ray.train.gpt.export_dir_name`)
EXPORT_PATTERNS = ("SoVITS_weights*/*.pth", "GPT_weights*/*.ckpt")


def exports(run_dir: str | Path) -> list[Path]:
    """The export files in ``run_dir``: SoVITS ones first, then GPT ones, each sorted by path."""
    return [p for pattern in EXPORT_PATTERNS for p in sorted(Path(run_dir).glob(pattern))]


#: the settings that decide a run's trajectory: a --resume must keep them (--max-steps / --epochs
#: may grow; the data folder is compared by path only where it is, not by content)
TRAJECTORY = (
    "stage",
    "version",
    "lora_rank",
    "lr_scale",
    "warmup_steps",
    "warmup_start",
    "decay",
    "lr_decay",
    "min_lr_ratio",
    "optimizer",
    "batch_size",
    "grad_accum",
    "precision",
    "dropout",
    "seed",
    "val_fraction",
)
#: what a record written before a setting existed ran with (every run before --optimizer used AdamW)
LEGACY = {"optimizer": "adamw"}
#: what a run's epoch is, recorded in its config.json: upstream's (a set under 100 utterances repeated,
#: :func:`gsv_ray.data.experiment.upstream_repeats`); older records say nothing (one pass)
EPOCHS_ARE = "upstream"
#: the input files, compared by content (sha256), never by path
INPUT_FLAGS = {"init": "--init", "base_g": "--base", "base_d": "--base-d"}


def existing_run(run_dir: str | Path) -> str | None:
    """What says ``run_dir`` already holds a run (None when it does not exist, is empty, or holds
    none of a run's files)."""
    d = Path(run_dir)
    if not d.is_dir():
        return None
    found = [n for n in RUN_FILES if (d / n).exists()]
    found += sorted(p.name for p in d.glob("*_weights*") if p.is_dir())
    return ", ".join(found) or None


def check_new_run(run_dir: str | Path) -> None:
    """A run started without ``--resume`` never writes into another run's folder (it would append
    to its metrics, replace its exports and mix two runs in one W&B run)."""
    found = existing_run(run_dir)
    if found:
        raise GsvError(
            f"-o already holds a run ({found})", path=run_dir, fix="continue it with --resume, or choose a new -o"
        )


def own_output_dir(path: str | Path) -> RunOwner:
    """Claim ``-o`` for this process until it ends (or the owner is released), before anything is
    written there. One-line refusals: a path that cannot be a folder, the filesystem root, the home
    directory, a populated folder holding no run of ours, and an ``-o`` another live run owns."""
    p = Path(path)
    check_output_path(p)
    real = p.resolve()
    if real == Path(real.anchor):
        raise ConfigError("-o is the filesystem root", path=p, fix="choose a folder for the run, e.g. -o runs/myvoice")
    if real == Path.home().resolve():
        raise ConfigError(
            "-o is your home directory", path=p, fix=f"choose a folder for the run, e.g. -o {p / 'runs' / 'myvoice'}"
        )
    if real.is_dir():
        theirs = sorted(c.name for c in real.iterdir() if not c.name.startswith("."))
        if theirs and not any(n in RUN_ENTRIES or "_weights" in n for n in theirs):
            shown = ", ".join(theirs[:3]) + (", ..." if len(theirs) > 3 else "")
            raise ConfigError(
                f"-o is a folder with other files ({shown}) and no gsv-ray run: checkpoints, logs and "
                "exports would be mixed into them",
                path=p,
                fix=f"choose a new or empty folder, e.g. -o {p / 'run'}",
            )
    try:
        return RunOwner(p)
    except RunBusy as e:
        who, stop = (f"PID {e.pid}", f" (stop it: kill {e.pid})") if e.pid else ("a process starting up", "")
        raise GsvError(
            f"-o is in use by another gsv-ray run, {who}", path=p, fix=f"wait for it to end{stop}, or choose another -o"
        ) from None


# -- the run's settings, recorded and compared on resume ---------------------------------------------


def write_config(run_dir: Path, cfg: TrainConfig, inputs: dict[str, dict[str, Any]]) -> None:
    """``config.json``: the run's options, its input files' sha256 and what its epochs are (what a
    resume compares)."""
    record = {
        **cfg.to_json(),
        "input_sha256": {role: d.get("sha256") for role, d in inputs.items()},
        "epochs_are": EPOCHS_ARE,
    }
    write_json(run_dir / "config.json", record, indent=1)


def check_same_run(cfg: TrainConfig, recorded_file: Path, inputs: dict[str, dict[str, Any]]) -> None:
    """Refuse a resume whose settings would change the run's trajectory (one line naming the option,
    the recorded value and the fix). A run without a record (or an unreadable one) is not checked."""
    try:
        recorded = json.loads(recorded_file.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(recorded, dict):
        return
    now = cfg.to_json()
    recorded = {**LEGACY, **recorded}
    for key in TRAJECTORY:
        if key in recorded and recorded[key] != now[key]:
            f, old, new = flag(TrainConfig, key), _shown(recorded[key]), _shown(now[key])
            raise ConfigError(
                f"--resume with {f} {new}, but this run was started with {f} {old}",
                path=recorded_file,
                fix=f"resume with {f} {old}, or start a new -o with {f} {new}",
            )
    for role, sha in (recorded.get("input_sha256") or {}).items():
        given = (inputs.get(role) or {}).get("sha256")
        if not sha or given == sha:
            continue
        f, was = INPUT_FLAGS.get(role, role), recorded.get(role) or "the same file"
        what = (
            f"--resume without {f}"
            if given is None
            else f"--resume with {f} {now.get(role)}, a file with other content (sha256 {given[:12]})"
        )
        raise ConfigError(
            f"{what}, but this run was started from {f} {was} (sha256 {sha[:12]})",
            path=recorded_file,
            fix=f"resume with {f} {was} (or a copy of it), or start a new -o",
        )


def check_same_epoch(recorded_file: Path, copies: int, utterances: int) -> None:
    """Refuse to resume a run recorded before gsv-ray's epochs were upstream's (no ``epochs_are``:
    one pass over the training set per epoch) when its set is now repeated (``copies`` > 1): its
    steps per epoch, per-epoch LR decay and export counters would change mid-run."""
    try:
        recorded = json.loads(recorded_file.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(recorded, dict) or "epochs_are" in recorded or copies == 1:
        return
    raise ConfigError(
        f"--resume of a run started before gsv-ray repeated small sets as upstream does (its epoch "
        f"is one pass), but its {utterances} training utterances now make an epoch of x{copies}: "
        "its epochs, per-epoch LR decay and export counters would change",
        path=recorded_file,
        fix="finish it with the gsv-ray version that started it, or start a new -o",
    )


def _shown(v: Any) -> str:
    return "(default)" if v is None else str(v)


# -- a finished run -------------------------------------------------------------------------------


def record_finished(cfg: TrainConfig, steps: int, epochs: int, exports: list[Path]) -> None:
    """Say in ``-o`` that the run finished (what a later ``--resume`` reads)."""
    record = {
        "steps": steps,
        "epochs": epochs,
        "max_steps": cfg.max_steps,
        "asked_epochs": cfg.epochs,
        "exports": [str(p) for p in exports],
    }
    out = Path(cfg.output_dir)
    write_json(out / FINISHED, record, indent=1)


def finished_line(cfg: TrainConfig) -> str | None:
    """The line for a ``--resume`` of a run that already trained as long as asked (None: train on)."""
    try:
        r = json.loads((Path(cfg.output_dir) / FINISHED).read_text())
        steps, epochs = int(r["steps"]), int(r["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if cfg.max_steps is not None:
        done, longer = steps >= cfg.max_steps, f"--max-steps above {steps}"
    else:
        done = r.get("asked_epochs") is not None and cfg.epochs is not None and cfg.epochs <= epochs
        longer = f"--epochs above {epochs}"
    if not done:
        return None
    exports = ", ".join(map(str, r.get("exports") or [])) or "none"
    return (
        f"the run in {cfg.output_dir} finished at step {steps} (exports: {exports}); nothing to resume "
        f"(to train it longer: --resume with {longer})"
    )


def record_search_finished(out: Path, name: str, best: list[Path]) -> None:
    """Say in ``-o`` that the tune search ``name`` ran every trial to its end (what a later
    ``tune --resume`` reads)."""
    record = {"search": name, "best": [str(p) for p in best]}
    write_json(out / FINISHED, record, indent=1)


def finished_search_line(out: Path) -> str | None:
    """The line for a ``tune --resume`` of a search that finished (None: resume it): its results are
    kept as they are, and no second W&B summary run is opened."""
    try:
        r = json.loads((out / FINISHED).read_text())
        name, best = str(r["search"]), [str(p) for p in r.get("best") or []]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return (
        f"the tune search {name!r} in {out} finished (results: {out / 'results.json'}; best weights: "
        f"{', '.join(best) or 'none'}); nothing to resume (to search again: a new -o)"
    )
