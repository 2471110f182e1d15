"""The console of a command: our lines and one live progress display for people; the chatter of
Ray, W&B and other libraries into a log file in the run directory (``--verbose`` shows it too).

Ray forwards every worker's stdout/stderr to the driver and prints it through ``sys.stdout`` /
``sys.stderr``; Ray's and W&B's own loggers write to the stream they were given at import. While a
:class:`Chatter` is active both are pointed at the log file, so the demo printed 342 lines before
and prints a few dozen now. Our own lines (``Chatter.say``) and the progress display go to the real
terminal. Ray workers reach the console through :class:`gsv_ray.distributed.relay.Relay` (events the
driver drains), never through their stdout.

Only the standard library, ``rich`` and :mod:`gsv_ray.errors`: every layer may use this module.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from gsv_ray.errors import clip

#: Non-TTY output (a log file, CI): one plain progress line at most this often.
PLAIN_EVERY_S = 30.0
WIDTH = 80


class _Sink:
    """A text stream that writes to the log file (opened on first write) and, verbose, to the terminal."""

    def __init__(self, chatter: Chatter, tee: TextIO | None):
        self.chatter, self.tee = chatter, tee

    def write(self, s: str) -> int:
        if s:
            self.chatter.used = True
            self.chatter._log(s)
            if self.tee is not None:
                self.tee.write(s)
        return len(s)

    def flush(self) -> None:
        if self.chatter._file is not None:
            self.chatter._file.flush()
        if self.tee is not None:
            self.tee.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:  # faulthandler, subprocess: the real stream's descriptor
        return (self.tee or sys.__stderr__).fileno()

    @property
    def encoding(self) -> str:
        return "utf-8"


def _wants_traceback(exc: BaseException | None) -> bool:
    """A failure whose traceback belongs in the run's log: anything but the user's own bad input or
    option (one line says it all) and Ctrl-C."""
    from gsv_ray.errors import GsvError, os_error

    if exc is None or isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return False
    if isinstance(exc, OSError) and os_error(exc) is not None:  # a full disk, a read-only folder: the user's
        return False
    return not (isinstance(exc, GsvError) and exc.exit_code == 2)


class Chatter:
    """``with Chatter(log_file, verbose) as c:`` routes library output to ``log_file`` while
    ``c.say(line)`` and ``c.out`` reach the terminal. The log file is created on the first line
    written to it (a command refused for bad input creates nothing)."""

    def __init__(self, log_file: str | os.PathLike[str] | None, *, verbose: bool = False):
        self.log_file = Path(log_file) if log_file is not None else None
        self.verbose = verbose
        self._file: TextIO | None = None
        self.used = False  # library output went to the log in this command (its path is worth showing)
        # re-entrant: a library's signal handler (Ray's Ctrl-C handlers log) runs in this thread between
        # two statements of say() and its log line comes back through _log while say() holds the lock
        self._lock = threading.RLock()
        self._saved: list[tuple[Any, str, Any]] = []
        self.out: TextIO = sys.stdout
        self.err: TextIO = sys.stderr

    # -- routing -----------------------------------------------------------------------------
    def __enter__(self) -> Chatter:
        self.out, self.err = sys.stdout, sys.stderr
        if self.log_file is None:
            return self
        sink_out, sink_err = (
            _Sink(self, self.out if self.verbose else None),
            _Sink(self, self.err if self.verbose else None),
        )
        self._swap(sys, "stdout", sink_out)
        self._swap(sys, "stderr", sink_err)
        for logger in [logging.getLogger()] + [
            v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger)
        ]:
            for h in logger.handlers:  # handlers made at import hold the stream they were given then
                if isinstance(h, logging.StreamHandler) and h.stream in (self.out, self.err):
                    self._swap(h, "stream", sink_err if h.stream is self.err else sink_out)
        return self

    def _swap(self, obj: Any, attr: str, value: Any) -> None:
        self._saved.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    def __exit__(self, exc_type, exc, tb) -> None:
        for obj, attr, value in reversed(self._saved):
            setattr(obj, attr, value)
        self._saved.clear()
        traced = _wants_traceback(exc) and self.log_file is not None
        if traced:  # the machinery failed: the whole story goes to the log
            import traceback

            self._log("".join(traceback.format_exception(exc)))
            self.used = True
        if self._file is not None:
            self._file.close()
            self._file = None
        if exc_type is not None and self.used:  # the error line follows: the details are in the log
            what = "log and traceback" if traced else "log (Ray, W&B)"
            self.err.write(f"{what}: {shown(self.log_file)}\n")

    def _log(self, s: str) -> None:
        if self.log_file is None:
            return
        with self._lock:
            if self._file is None:
                self.log_file.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.log_file, "a", encoding="utf-8", errors="replace")
            self._file.write(s)

    # -- our lines -----------------------------------------------------------------------------
    def say(self, line: str) -> None:
        """One line for people, wrapped to the terminal (80 columns off one; a :class:`Copyable`
        keeps its command whole on a line of its own), also kept in the log, in order with the
        chatter around it."""
        with self._lock:
            self.out.write(wrap(line, self.width()) + "\n")
            self.out.flush()
        if self.log_file is not None and self._saved:
            self._log(f"{line}\n")

    def is_tty(self) -> bool:
        return bool(getattr(self.out, "isatty", lambda: False)())

    def width(self) -> int:
        """Columns to wrap prose at: the terminal's (``COLUMNS`` wins) on one, else :data:`WIDTH`."""
        if not self.is_tty():
            return WIDTH
        import shutil

        return max(40, shutil.get_terminal_size((WIDTH, 24)).columns)


class Copyable(str):
    """A line that ends in something to copy whole: ``prose`` (wrapped like any line) and
    ``text`` (a command, a path), which is never split: when the two do not fit on one line,
    ``text`` gets a line of its own, as long as it is. As a plain ``str`` it is ``prose text``, so
    any ``say`` callable prints it as before."""

    prose: str
    text: str

    def __new__(cls, prose: str, text: str) -> Copyable:
        self = super().__new__(cls, f"{prose} {text}" if prose else text)
        self.prose, self.text = prose, text
        return self

    def __reduce__(self):  # pickles (a Ray queue) as itself, not as "prose text"
        return (Copyable, (self.prose, self.text))


def command(*words: str | os.PathLike[str], glob: str = "") -> str:
    """A shell command to print: each word quoted where the shell needs it (a path with spaces),
    ``glob`` (e.g. ``/offline-run-*``) appended unquoted to the last word so the shell expands it."""
    import shlex

    return " ".join(shlex.quote(os.fspath(w)) for w in words) + glob


def wrap(line: str, width: int = WIDTH) -> str:
    """``line`` in lines of at most ``width`` columns, continuations indented (a word longer than
    that, such as a long path, stays whole). A :class:`Copyable` line's text is never split: it
    follows its prose on the same line when both fit, else on a line of its own."""
    import textwrap

    if len(line) <= width:
        return str(line)
    if isinstance(line, Copyable) and line.prose:
        return f"{wrap(line.prose, width)}\n  {line.text}"
    indent = " " * min(len(line) - len(line.lstrip(" ")) + 2, 8)
    return (
        "\n".join(textwrap.wrap(line, width, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False))
        or line
    )


def shown(path: str | os.PathLike[str]) -> str:
    """A path as people read it: relative to the current directory when inside it; a URI with its
    credentials masked (:func:`gsv_ray.masking.mask`)."""
    if "://" in os.fspath(path):
        from gsv_ray.masking import mask

        return mask(path)
    p = Path(path)
    try:
        rel = p.resolve().relative_to(Path.cwd().resolve())
    except (ValueError, OSError):
        return str(p)
    return str(rel) if str(rel) != "." else "."


def _eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "--:--"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def progress_text(step: int, total: int, m: dict[str, float], rate: float) -> str:
    """``12/24  ETA 00:31  loss 1.234  lr 2.0e-04  1.9 it/s``: what one run's progress shows."""
    lr = next((v for k, v in m.items() if k.startswith("lr/")), m.get("lr"))
    parts = [f"{step}/{total}", f"ETA {_eta((total - step) / rate) if rate > 0 else '--:--'}"]
    if "loss" in m:
        parts.append(f"loss {m['loss']:.4g}")
    if lr is not None:
        parts.append(f"lr {lr:.2g}")
    parts.append(f"{rate:.2f} it/s")
    return "  ".join(parts)


class ProgressDisplay:
    """One run's progress: a live bar on a terminal; a plain line every ``every_s`` seconds (and at
    the end) elsewhere. ``start(total, done)``, ``update(step, metrics)``, ``close()``; ``say(line)``
    prints a line above the bar."""

    def __init__(self, chatter: Chatter | None = None, *, label: str = "train", every_s: float = PLAIN_EVERY_S):
        self.chatter = chatter
        self.label, self.every_s = label, every_s
        self._bar = None
        self._last_plain = 0.0
        self._line = ""
        self.total = self.s0 = self.step = 0
        self.t0 = time.perf_counter()

    def _out(self) -> TextIO:
        return self.chatter.out if self.chatter is not None else sys.stdout

    def _say(self, line: str) -> None:
        if self._bar is not None:  # above the live bar
            self._bar.console.print(line, highlight=False, markup=False, soft_wrap=True)
            if self.chatter is not None and self.chatter.log_file is not None:
                self.chatter._log(f"{line}\n")
        elif self.chatter is not None:
            self.chatter.say(line)
        else:
            print(line)

    def say(self, line: str) -> None:
        self._say(line)

    def start(self, total: int, done: int = 0) -> None:
        self.close()
        self.total, self.s0, self.t0 = total, done, time.perf_counter()
        self.step, self.metrics = done, {}
        tty = self.chatter.is_tty() if self.chatter is not None else sys.stdout.isatty()
        if tty:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            console = Console(file=self._out(), width=min(WIDTH, Console(file=self._out()).width))
            self._bar = Progress(
                TextColumn(self.label),
                BarColumn(bar_width=16),
                TextColumn("{task.fields[info]}"),
                console=console,
                transient=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )  # chatter stays in the log
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=total, completed=done, info="")
        self._last_plain = time.monotonic()

    def rate(self) -> float:
        return (self.step - self.s0) / max(1e-9, time.perf_counter() - self.t0)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        self.step, self.metrics = step, metrics
        text = progress_text(step, self.total, metrics, self.rate())
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=clip(text, WIDTH - len(self.label) - 18))
        elif time.monotonic() - self._last_plain >= self.every_s:
            self._last_plain = time.monotonic()
            self._say(clip(f"{self.label} {text}", WIDTH))
            text = ""  # shown already: close() does not repeat it
        self._line = text

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self._line:
            self._say(clip(f"{self.label} {self._line}", WIDTH))
            self._line = ""


class TrialsDisplay:
    """Tune: one row per trial (step, best validation loss, status), live on a terminal; a plain
    summary line every ``every_s`` seconds elsewhere."""

    def __init__(self, chatter: Chatter, *, total: int, every_s: float = PLAIN_EVERY_S):
        self.chatter, self.total, self.every_s = chatter, total, every_s
        self.rows: dict[str, dict[str, Any]] = {}
        self._live = None
        self._last_plain = time.monotonic()
        self._lock = threading.Lock()

    def start(self) -> None:
        self._last_plain = time.monotonic()
        if self.chatter.is_tty():
            from rich.console import Console
            from rich.live import Live

            self._live = Live(
                self._table(),
                console=Console(file=self.chatter.out, width=WIDTH),
                refresh_per_second=2,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )  # chatter stays in the log
            self._live.start()

    def _table(self):
        from rich.table import Table

        t = Table(box=None, pad_edge=False, width=WIDTH)
        for col in ("trial", "lr_scale", "warmup", "step", "best val", "status"):
            t.add_column(col, justify="left" if col in ("trial", "status") else "right", no_wrap=True)
        for tid, r in self.rows.items():
            t.add_row(
                tid,
                _g(r.get("lr_scale")),
                str(r.get("warmup", "")),
                f"{r.get('step', 0)}/{self.total}",
                _g(r.get("best_val"), ".4f"),
                r.get("status", "running"),
            )
        return t

    def update(self, trial: str, **fields: Any) -> None:
        with self._lock:
            row = self.rows.setdefault(trial, {})
            if "val" in fields and fields["val"] is not None:
                best = row.get("best_val")
                row["best_val"] = fields["val"] if best is None else min(best, fields["val"])
            row.update({k: v for k, v in fields.items() if k != "val" and v is not None})
            if self._live is not None:
                self._live.update(self._table())
            elif time.monotonic() - self._last_plain >= self.every_s:
                self._last_plain = time.monotonic()
                self.chatter.say(clip(self.summary(), WIDTH))

    def summary(self) -> str:
        states: dict[str, int] = {}
        for r in self.rows.values():
            states[r.get("status", "running")] = states.get(r.get("status", "running"), 0) + 1
        steps = sum(int(r.get("step", 0)) for r in self.rows.values())
        bests = [r["best_val"] for r in self.rows.values() if r.get("best_val") is not None]
        return f"tune: {', '.join(f'{n} {s}' for s, n in states.items())}; {steps} steps so far" + (
            f"; best val loss {min(bests):.4f}" if bests else ""
        )

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def _g(v: Any, spec: str = ".3g") -> str:
    return "—" if v is None else format(float(v), spec)
