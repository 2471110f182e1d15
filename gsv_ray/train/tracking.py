"""What a training run records: always ``metrics.jsonl`` in the run directory; one W&B run when
enabled (offline without an API key). Logged from the main process only.

The W&B run id is kept in ``<run dir>/wandb_run_id`` so that ``--resume`` continues the same run;
``metrics.jsonl`` drops rows past the resumed checkpoint's step so no step appears twice.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from gsv_ray.track import MetricsWriter, Tracker

RUN_CONFIG = "run_config.json"  # the W&B config of the run, in its run directory


class Tracking:
    def __init__(
        self,
        run_dir: str | Path,
        *,
        project: str = "gsv-ray",
        mode: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        name: str | None = None,
        run_id: str | None = None,
        config_overrides: dict[str, Any] | None = None,
        replay_on_resume: bool = False,
        stage_artifacts: bool = False,
        final_dir: str | Path | None = None,
        writer_lock: str | Path | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.config_overrides = dict(config_overrides or {})  # e.g. a Ray worker's real -o, not its scratch
        self.project, self.mode, self.group, self.job_type, self.name = project, mode, group, job_type, name
        self.run_id = run_id
        # a Ray worker restarted after a kill: the killed segment's W&B records are lost (they reach
        # disk only at finish), so the resumed run is given the history up to the checkpoint again
        self.replay_on_resume = replay_on_resume
        # files logged as artifacts leave this folder (a Ray worker's scratch). ``final_dir``: where
        # they end up (the driver's -o, on this node): the artifact names them there (a hard link
        # now, replaced by the same bytes when the driver places the outputs), so W&B stages no copy;
        # None with ``stage_artifacts``: W&B keeps a copy in its staging folder (another node)
        self.stage_artifacts = stage_artifacts
        self.final_dir = Path(final_dir) if final_dir is not None else None
        # a node-local lock file every writer of this run on this node takes before it opens the
        # W&B run and holds until it finishes it: a Ray worker restarted on the node where the
        # old one still runs waits for it to be gone (docs/design/architecture.md, one writer per run)
        self.writer_lock = Path(writer_lock) if writer_lock is not None else None
        self._writer: Any = None
        self.metrics: MetricsWriter | None = None
        self.tracker = Tracker()

    @classmethod
    def for_run(cls, cfg) -> Tracking:
        return cls(cfg.output_dir, project=cfg.wandb_project, mode=cfg.wandb_mode, name=cfg.run_name)

    # -- lifecycle -----------------------------------------------------------------------------
    def begin(self, config: dict[str, Any], rebuilt, *, resume_step: int = 0, rank: int = 0) -> None:
        """Open metrics.jsonl and the W&B run with the full config and the rebuild report."""
        config = {**config, **self.config_overrides}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        from gsv_ray.track.wandb_run import jsonable

        # the full config, beside metrics.jsonl: a run whose W&B records were lost (a killed trial) is
        # rebuilt from both with the same config keys (replay_run)
        (self.run_dir / RUN_CONFIG).write_text(json.dumps(jsonable(config), indent=1))
        # rows past the step trained from are another attempt's (also all of them at step 0: a run
        # started over after stopping before its first checkpoint)
        self.metrics = MetricsWriter(self.run_dir, drop_after=resume_step)
        id_file = self.run_dir / "wandb_run_id"
        resumed = resume_step > 0 and id_file.is_file()
        run_id = self.run_id or (id_file.read_text().strip() if resumed else secrets.token_hex(4))
        self._hold_writer_lock(run_id)
        self.tracker.start(
            config,
            project=self.project,
            dir=self.run_dir,
            mode=self.mode,
            group=self.group,
            job_type=self.job_type,
            name=self.name,
            run_id=run_id,
            resume="allow" if resumed else None,
            rank=rank,
        )
        if self.tracker.enabled:
            id_file.write_text(run_id)
            if not resumed:
                self.tracker.log_rebuild(rebuilt.report, step=0)
            elif self.replay_on_resume:
                self.tracker.log_rebuild(rebuilt.report, step=0)
                _replay_history(self.tracker, self.run_dir, upto=resume_step)
            else:
                self.tracker.update_config(_rebuild_counts(rebuilt))

    def _hold_writer_lock(self, run_id: str) -> None:
        if self.writer_lock is None:
            return
        from gsv_ray.errors import InfraError
        from gsv_ray.owned import RunBusy, WriterLock

        try:
            self._writer = WriterLock(self.writer_lock)
        except RunBusy as e:
            raise InfraError(
                f"W&B run {run_id}: another process (PID {e.pid}) still writes it on this node; "
                "end that process (a worker of an earlier attempt of this run)"
            ) from e

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """``train/...`` and ``val/...`` keys: one metrics.jsonl row per split, one W&B row."""
        if self.metrics is not None:
            by_split: dict[str, dict[str, float]] = {}
            for k, v in metrics.items():
                split, _, name = k.partition("/")
                by_split.setdefault(split if name else "train", {})[name or k] = v
            for split, values in by_split.items():
                self.metrics.log(step, values, split=split)
        self.tracker.log(step, metrics)

    def log_audio(self, step: int, items: list) -> None:
        """Validation samples: ``(name, waveform, rate)`` as audio, ``(name, mel [n_mels, T])`` as images."""
        self.tracker.log_audio(step, [it for it in items if len(it) == 3])
        self.tracker.log_images(step, [it for it in items if len(it) == 2])

    def log_exports(self, paths: list[Path], *, stage: str, version: str | None, step: int) -> None:
        """Log the exports as one ``model`` artifact, naming each file where it will stay."""
        if not paths or not self.tracker.enabled:
            return
        stage_copy = self.stage_artifacts
        finals = [self.final_dir / Path(p).relative_to(self.run_dir) for p in paths] if self.final_dir else []
        if finals and not any(f.exists() for f in finals):  # never replace a file there (an input?)
            from gsv_ray.atomic import link_or_copy

            paths = [link_or_copy(p, f) for p, f in zip(paths, finals)]
            stage_copy = False
        self.tracker.log_artifact(
            paths,
            name=f"{self.name or self.run_dir.name}-{stage}",
            type="model",
            metadata={"stage": stage, "version": version, "step": step},
            copy=stage_copy,
        )

    def set_summary(self, values: dict[str, Any]) -> None:
        self.tracker.set_summary(values)

    def finish(self, exit_code: int = 0) -> None:
        if exit_code:
            self.tracker.set_summary({"fate": "failed"})
        self.tracker.finish(exit_code)
        if self.metrics is not None:
            self.metrics.close()
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(1 if exc_type is not None else 0)


def _rebuild_counts(rebuilt) -> dict[str, Any]:
    from gsv_ray.track import rebuild_config

    return rebuild_config(rebuilt.report)


def replay_run(
    run_dir: str | Path,
    *,
    config: dict[str, Any],
    report,
    out_dir: str | Path,
    project: str,
    mode: str | None,
    group: str | None,
    job_type: str | None,
    run_id: str,
    name: str,
    fate: str,
) -> None:
    """Write the W&B run of a run whose own W&B records were lost, from what its run directory kept.

    W&B's offline writer puts records on disk only at ``finish()``: a trial killed from outside
    (Ctrl-C of the search, a failure) never gets there. Its run directory (attached to every
    checkpoint) keeps ``run_config.json`` (the full config it was logged with), ``metrics.jsonl``
    (every step, flushed per line) and ``samples/`` (the audio of each validation): the same
    config keys, history and audio. ``config`` fills in when ``run_config.json`` is missing."""
    run_dir = Path(run_dir)
    try:
        config = {**config, **json.loads((run_dir / RUN_CONFIG).read_text())}
    except (OSError, ValueError):
        pass
    tracker = Tracker()
    tracker.start(
        {**config, "fate": fate},
        project=project,
        dir=out_dir,
        mode=mode,
        group=group,
        job_type=job_type,
        name=name,
        run_id=run_id,
    )
    if not tracker.enabled:
        return
    tracker.log_rebuild(report, step=0)
    steps = _replay_history(tracker, run_dir)
    tracker.set_summary({"fate": fate, "steps": steps})
    tracker.finish()


def _replay_history(tracker: Tracker, run_dir: Path, upto: int | None = None) -> int:
    """Log a run directory's ``metrics.jsonl`` rows and ``samples/`` audio (up to step ``upto``)
    into ``tracker``; returns the last step."""
    from gsv_ray.track import read_metrics

    rows = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    by_step: dict[int, dict[str, Any]] = {}
    for row in rows:
        split = row.get("split", "train")
        values = {f"{split}/{k}": v for k, v in row.items() if k not in ("step", "split", "time")}
        by_step.setdefault(int(row["step"]), {}).update(values)
    audio: dict[int, list[tuple[str, Path]]] = {}
    for wav in sorted(run_dir.glob("samples/step_*/*.wav")):
        audio.setdefault(int(wav.parent.name[5:]), []).append((wav.stem, wav))
    steps = sorted(s for s in set(by_step) | set(audio) if upto is None or s <= upto)
    for step in steps:
        tracker.log(step, by_step.get(step, {}))
        if step in audio:
            tracker.log_audio_files(step, audio[step])
    return max(steps, default=0)


def offline_runs(run_dir: str | Path) -> list[Path]:
    """W&B's offline run folders under ``<run_dir>/wandb``, oldest first."""
    return sorted((Path(run_dir) / "wandb").glob("offline-run-*"), key=lambda p: p.name)


def run_summary(result) -> list[str]:
    """What a finished ``train`` ends with: steps, final and best validation loss, the exports, and
    where the W&B run is with the exact command that uploads it."""
    lines = [f"done: {result.steps} steps, {result.epochs} epochs"]
    if result.val_history:
        key = "loss" if "loss" in result.val_history[-1] else next(k for k in result.val_history[-1] if k != "step")
        vals = [(h["step"], h[key]) for h in result.val_history if key in h]
        best = min(vals, key=lambda sv: sv[1])
        lines[0] += f"; val {key} {vals[-1][1]:.4g} at the end, best {best[1]:.4g} at step {best[0]}"
    from gsv_ray.console import Copyable, command, shown

    lines += [f"exported: {shown(p)}" for p in result.exports]
    runs = offline_runs(result.run_dir)
    if runs:
        lines.append(Copyable("W&B (offline), upload with:", command("wandb", "sync", shown(runs[-1]))))
    return lines
