"""W&B tracking for one training run (or one Tune trial): a small explicit API over ``wandb.Run``.

* Mode: an explicit ``mode`` wins; else ``WANDB_MODE``; else ``online`` when an API key is found
  (``WANDB_API_KEY`` or a netrc entry for the W&B host) and ``offline`` otherwise. ``online``
  without a key falls back to ``offline`` with a one-line notice on stderr. ``disabled`` (and any
  rank other than 0) makes every call a cheap no-op; wandb is not even imported. An ``online``
  start that fails (server unreachable within ``init_timeout``, key rejected) also falls back to
  ``offline`` with a notice, so tracking never stops a training run.
* Files: W&B writes under ``$WANDB_DIR/wandb`` when ``WANDB_DIR`` is set, else ``<dir>/wandb``;
  audio samples are written as 16-bit WAVs under ``<dir>/samples/step_<N>/``.
* The local ``metrics.jsonl`` is not written here: compose with
  :class:`gsv_ray.track.metrics.MetricsWriter`.
* Offline resume (``run_id`` + ``resume="allow"``): W&B 0.31 offline cannot ask a server where the
  run stopped, so it opens a *new* folder ``offline-run-<time>-<id>-1`` holding another
  ``run-<id>.wandb`` with the same id (``resumed`` stays False, ``starting_step`` 0); ``wandb sync``
  of both folders appends to one run. Log only steps after the checkpoint's step: online W&B
  drops rows whose step is not above the run's last step.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gsv_ray.audio import to_pcm16, write_wav
from gsv_ray.errors import first_line
from gsv_ray.resources import WANDB_MODES
from gsv_ray.track.wandb_file import wait_until_closed

MODES = WANDB_MODES
RESUME = ("allow", "must", "never", "auto")
DEFAULT_BASE_URL = "https://api.wandb.ai"
TABLE_COLUMNS = ["target", "keys", "fate", "count", "reason", "source"]


# -- mode --------------------------------------------------------------------------------------
def has_api_key(env: Mapping[str, str] | None = None) -> bool:
    """Whether W&B would find credentials: ``WANDB_API_KEY`` / identity token file, or netrc.

    Only checks that an entry exists; the key itself is neither returned nor validated."""
    env = os.environ if env is None else env
    if env.get("WANDB_API_KEY") or env.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = env.get("WANDB_BASE_URL") or DEFAULT_BASE_URL
    try:  # wandb's own netrc lookup (honours NETRC, the Windows _netrc name, upstream hosts)
        from wandb.sdk.lib.wbauth import read_netrc_auth

        return bool(read_netrc_auth(host=host))
    except ImportError:  # pragma: no cover - internal layout changed: plain netrc lookup
        import netrc
        from urllib.parse import urlsplit

        try:
            path = env.get("NETRC") or os.path.expanduser("~/.netrc")
            return bool(netrc.netrc(path).authenticators(urlsplit(host).netloc))
        except (OSError, netrc.NetrcParseError):
            return False
    except Exception:
        return False


def resolve_mode(mode: str | None, env: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """``(mode, notice)``: the mode to run in and a one-line notice when it differs from what was
    asked (``None`` otherwise)."""
    env = os.environ if env is None else env
    asked = mode if mode is not None else (env.get("WANDB_MODE") or None)
    if asked == "dryrun":
        asked = "offline"
    if asked == "run":
        asked = "online"
    if asked is not None and asked not in MODES:
        raise ValueError(f"unknown W&B mode {asked!r}; use one of {', '.join(MODES)}")
    key = None if asked in ("offline", "disabled") else has_api_key(env)
    if asked is None:
        return ("online", None) if key else ("offline", None)
    if asked == "online" and not key:
        return "offline", (
            "W&B: no API key (WANDB_API_KEY or netrc) -- logging offline; upload later with `wandb sync <run folder>`"
        )
    return asked, None


# -- helpers -----------------------------------------------------------------------------------
def jsonable(obj: Any) -> Any:
    """Config values W&B can store: paths -> str, tuples/sets -> lists, tensors/np scalars -> numbers,
    dataclasses -> dicts, non-finite floats kept; anything else unknown -> ``str``."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        return [jsonable(v) for v in items]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "tolist"):  # numpy arrays / scalars, torch tensors: nested lists or a number
        return obj.tolist()
    return str(obj)


def _number(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    return v


def safe_name(name: str) -> str:
    """A file / artifact name: letters, digits, ``._-`` only."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-.")
    return s or "unnamed"


def rebuild_table_rows(report: Any) -> list[list[Any]]:
    """Rows of the rebuild table, one per (target, module prefix, fate, reason) group of keys
    that were *not* simply loaded, plus ``harmless`` groups and ``dropped`` source keys.

    Grouped rather than per key: a full rebuild touches hundreds of keys with the same fate and
    reason (e.g. 103 ``enc_q.*`` keys, 111 discriminator keys), and the groups are what the CLI
    prints too; the per-key fates stay in the rebuild report JSON the trainer writes."""
    j = report.to_json() if hasattr(report, "to_json") else dict(report)
    g: dict[tuple[str, str, str, str], list[Any]] = defaultdict(lambda: [0, set()])
    for model, keys in j.get("targets", {}).items():
        for key, f in keys.items():
            if f["fate"] == "loaded":
                continue
            e = g[(model, key.split(".", 1)[0], f["fate"], f.get("reason") or "")]
            e[0] += 1
            if f.get("source"):
                e[1].add(str(f["source"]))
    for model, keys in j.get("harmless", {}).items():
        for key, why in keys.items():
            g[(model, key.split(".", 1)[0], "harmless", why)][0] += 1
    for src, keys in j.get("dropped", {}).items():
        for key, why in keys.items():
            e = g[("(unused source)", key.split(".", 1)[0], "dropped", why)]
            e[0] += 1
            e[1].add(str(src))
    return [
        [t, p + ".*", fate, n, reason, ", ".join(sorted(srcs))] for (t, p, fate, reason), (n, srcs) in sorted(g.items())
    ]


def rebuild_config(report: Any) -> dict[str, Any]:
    """``rebuild/<model>/<fate>`` counts (every fate, zeros included) plus verdict and version."""
    j = report.to_json() if hasattr(report, "to_json") else dict(report)
    out: dict[str, Any] = {}
    for model, c in j.get("counts", {}).items():
        for fate, n in c.items():
            out[f"rebuild/{model}/{fate}"] = int(n)
    out["rebuild/verdict"] = j.get("verdict")
    out["rebuild/version"] = j.get("version")
    out["rebuild/stage"] = j.get("stage")
    out["rebuild/dropped"] = sum(len(v) for v in j.get("dropped", {}).values())
    out["rebuild/harmless"] = sum(len(v) for v in j.get("harmless", {}).values())
    return out


# -- the tracker -------------------------------------------------------------------------------
class Tracker:
    """One W&B run, driven from the main process (world rank 0) only.

    >>> t = Tracker().start(cfg, project="gsv", mode=None, dir=run_dir)
    >>> t.log_rebuild(report); t.log(step, {"train/loss": 0.8, "train/lr": 1e-4})
    >>> t.log_audio(step, [("utt1", wav, 32000)]); t.log_artifact([g_pth], "voice-sovits")
    >>> t.finish()
    """

    def __init__(self) -> None:
        self._run: Any = None
        self._wandb: Any = None
        self.mode: str = "disabled"
        self.notice: str | None = None
        self.dir: Path | None = None
        self.init_seconds: float = 0.0
        self._last_step = -1
        self.finish_seconds: float = 0.0
        self.run_file: Path | None = None  # the finished run's run-<id>.wandb

    # -- lifecycle --
    @property
    def enabled(self) -> bool:
        return self._run is not None

    @property
    def run_id(self) -> str | None:
        return self._run.id if self._run is not None else None

    @property
    def wandb_dir(self) -> Path | None:
        """W&B's folder for this run (``.../wandb/offline-run-<time>-<id>``), if any."""
        return Path(self._run.dir).parent if self._run is not None else None

    def start(
        self,
        config: Mapping[str, Any],
        *,
        project: str,
        dir: str | Path,
        mode: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        name: str | None = None,
        run_id: str | None = None,
        resume: str | None = None,
        entity: str | None = None,
        tags: Sequence[str] | None = None,
        rank: int = 0,
        settings: Mapping[str, Any] | None = None,
    ) -> Tracker:
        """Start the run (or do nothing when disabled / not rank 0). ``dir`` is the gsv-ray run
        directory; ``rank``: this process's world rank (only rank 0 logs; the caller knows it, from its
        launcher). ``settings`` overrides ``wandb.Settings`` fields. Returns ``self``."""
        if self._run is not None:
            raise RuntimeError("Tracker already started; finish() it first")
        if resume is not None and resume not in RESUME:
            raise ValueError(f"resume must be one of {', '.join(RESUME)} (or None), got {resume!r}")
        self.dir = Path(dir)
        if int(rank) != 0:  # only world rank 0 logs: every other rank gets the no-op tracker
            self.mode, self.notice = "disabled", None
            return self
        self.mode, self.notice = resolve_mode(mode)
        if self.notice:
            print(self.notice, file=sys.stderr, flush=True)
        if self.mode == "disabled":
            return self
        import wandb

        root = Path(os.environ.get("WANDB_DIR") or self.dir)
        root.mkdir(parents=True, exist_ok=True)
        s = dict(silent=True, quiet=True, show_info=False, console="off", disable_job_creation=True)
        s.update(settings or {})
        kw = dict(
            project=project,
            entity=entity,
            dir=str(root),
            config=jsonable(dict(config)),
            group=group,
            job_type=job_type,
            name=name,
            id=run_id,
            resume=resume,
            tags=list(tags) if tags else None,
            reinit="create_new",
        )
        t0 = time.perf_counter()
        self._run = self._init(wandb, s, kw)
        self.init_seconds = time.perf_counter() - t0
        self._wandb = wandb
        self._last_step = -1
        return self

    def _init(self, wandb: Any, settings: dict[str, Any], kw: dict[str, Any]) -> Any:
        """``wandb.init`` in this tracker's mode; online, a start that fails (server unreachable, key
        rejected) falls back to offline with a notice: training goes on."""
        try:
            return wandb.init(mode=self.mode, settings=wandb.Settings(**settings), **kw)
        except Exception as e:  # online: server unreachable / key rejected -> keep training, log offline
            if self.mode != "online":
                raise
            self.mode = "offline"
            self.notice = (
                f"W&B: online start failed ({type(e).__name__}: {first_line(e)}) "
                "-- logging offline; upload later with `wandb sync <run folder>`"
            )
            print(self.notice, file=sys.stderr, flush=True)
            # wandb 0.31 leaves the failed stream registered in wandb-core ("run ID ... is in use"
            # on a retry with the same id): restart the service. Its half-made folder
            # wandb/run-<time>-<id> stays (no history in it).
            wandb.teardown()
            return wandb.init(mode="offline", settings=wandb.Settings(**settings), **kw)

    def finish(self, exit_code: int = 0, *, wait_s: float = 30.0) -> None:
        """Finish the run, then wait (up to ``wait_s``) until its ``run-<id>.wandb`` file holds the
        exit record: wandb-core flushes that file asynchronously after ``run.finish()`` returns."""
        if self._run is not None:
            run, self._run = self._run, None
            log = Path(run.dir).parent / f"run-{run.id}.wandb"
            t0 = time.perf_counter()
            run.finish(exit_code=exit_code)
            if wait_s > 0 and log.exists() and not wait_until_closed(log, wait_s):
                warnings.warn(f"W&B run file not closed after {wait_s:.0f}s: {log}", stacklevel=2)
            self.finish_seconds = time.perf_counter() - t0
            self.run_file = log

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)

    # -- logging --
    def update_config(self, values: Mapping[str, Any]) -> None:
        if self._run is not None:
            self._run.config.update(jsonable(dict(values)), allow_val_change=True)

    def set_summary(self, values: Mapping[str, Any]) -> None:
        if self._run is not None:
            for k, v in values.items():
                self._run.summary[k] = jsonable(v)

    def _log_row(self, row: dict[str, Any], step: int) -> None:
        step = int(step)
        if step < self._last_step:
            warnings.warn(
                f"W&B drops rows logged below its current step (step {step} < {self._last_step}): {', '.join(row)}",
                stacklevel=3,
            )
        self._last_step = max(self._last_step, step)
        self._run.log(row, step=step)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """One history row at ``step``. Steps must not go down (W&B drops such rows; this warns);
        several calls at the same step merge into one row."""
        if self._run is not None:
            self._log_row({k: _number(v) for k, v in metrics.items()}, step)

    def log_rebuild(self, report: Any, *, step: int = 0, key: str = "rebuild/table") -> dict[str, Any]:
        """Log the rebuild report: ``rebuild/*`` counts into the config and a ``wandb.Table``
        (see :func:`rebuild_table_rows`) at ``step``. Returns the config entries."""
        cfg = rebuild_config(report)
        if self._run is None:
            return cfg
        self.update_config(cfg)
        table = self._wandb.Table(columns=TABLE_COLUMNS, data=rebuild_table_rows(report))
        self._log_row({key: table}, step)
        return cfg

    def log_audio(
        self,
        step: int,
        items: Iterable[tuple[str, Any, int]],
        *,
        key: str = "val/audio",
    ) -> list[Path]:
        """Write each ``(name, waveform [T], sample_rate)`` as ``<dir>/samples/step_<N>/<name>.wav``
        and log it as ``wandb.Audio`` under ``<key>/<name>`` at ``step``. Returns the WAV paths."""
        if self._run is None:
            return []
        assert self.dir is not None
        out, row = [], {}
        for name, waveform, sr in items:
            p = write_wav(self.dir / "samples" / f"step_{int(step):08d}" / f"{safe_name(name)}.wav", waveform, sr)
            out.append(p)
            row[f"{key}/{name}"] = self._wandb.Audio(str(p), sample_rate=int(sr), caption=str(name))
        if row:
            self._log_row(row, step)
        return out

    def log_images(self, step: int, items: Iterable[tuple[str, Any]], *, key: str = "val/mel") -> list[Path]:
        """Write each ``(name, 2-D array)`` (e.g. a mel spectrogram, low frequencies at the bottom) as
        ``<dir>/samples/step_<N>/<name>.png`` and log it as ``wandb.Image`` under ``<key>/<name>``."""
        if self._run is None:
            return []
        assert self.dir is not None
        import numpy as np

        out, row = [], {}
        for name, array in items:
            a = np.asarray(getattr(array, "numpy", lambda: array)(), dtype=np.float32)[::-1]
            lo, hi = float(a.min()), float(a.max())
            pixels = ((a - lo) / (hi - lo if hi > lo else 1.0) * 255).astype(np.uint8)
            p = self.dir / "samples" / f"step_{int(step):08d}" / f"{safe_name(name)}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            from PIL import Image

            Image.fromarray(np.ascontiguousarray(pixels), mode="L").save(p)
            out.append(p)
            row[f"{key}/{name}"] = self._wandb.Image(str(p), caption=str(name))
        if row:
            self._log_row(row, step)
        return out

    def log_audio_files(self, step: int, files: Iterable[tuple[str, Path]], *, key: str = "val/audio") -> None:
        """Log WAV files written earlier (``(name, path)``) as ``wandb.Audio`` at ``step``."""
        if self._run is None:
            return
        row = {f"{key}/{name}": self._wandb.Audio(str(p), caption=str(name)) for name, p in files}
        if row:
            self._log_row(row, step)

    def log_artifact(
        self,
        paths: Iterable[str | Path],
        name: str,
        type: str = "model",
        metadata: Mapping[str, Any] | None = None,
        aliases: Sequence[str] | None = None,
        copy: bool = False,
    ) -> Any:
        """Log files as one artifact (``name`` sanitised). Files are referenced in place
        (``policy="immutable"``: no staging copy), so they must not change afterwards -- true of
        exported weights -- nor move: ``copy=True`` stages a copy in W&B's folder instead, for files
        that will not stay where they are (a Ray worker's node scratch). Returns the
        ``wandb.Artifact`` (None when disabled)."""
        if self._run is None:
            return None
        paths = [Path(p) for p in paths]
        meta = {"files": {p.name: p.stat().st_size for p in paths}}
        meta.update(jsonable(dict(metadata or {})))
        art = self._wandb.Artifact(safe_name(name), type=type, metadata=meta)
        for p in paths:
            art.add_file(str(p), name=p.name, policy="mutable" if copy else "immutable")
        self._run.log_artifact(art, aliases=list(aliases) if aliases else None)
        return art


__all__ = [
    "MODES",
    "Tracker",
    "has_api_key",
    "jsonable",
    "rebuild_config",
    "rebuild_table_rows",
    "resolve_mode",
    "safe_name",
    "to_pcm16",
    "write_wav",
]
