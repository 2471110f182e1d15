"""The local ``metrics.jsonl``: always written, whatever W&B does.

One JSON object per line::

    {"step": 120, "split": "train", "loss": 0.83, "lr": 0.0001, "time": 1732190000.12}

Each line goes to the file in a single ``os.write`` on an ``O_APPEND`` descriptor, so a killed run
keeps every complete line and at most one torn last line, which :func:`read_metrics` skips and
which reopening the file for writing cuts off. Non-finite values are written as JSON's common
extension tokens ``NaN`` / ``Infinity`` (Python's ``json`` reads them back). Steps should not go
backwards; after resuming from a checkpoint at step N, open with ``drop_after=N`` so lines logged
after that checkpoint (and about to be logged again) are removed.
"""

from __future__ import annotations

import json
import os
import time as _time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from gsv_ray.atomic import atomic_write

RESERVED = ("step", "split", "time")
FILENAME = "metrics.jsonl"


def to_number(v: Any) -> float | int:
    """A plain Python number from a float/int/bool, 0-d numpy array or 1-element torch tensor."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if hasattr(v, "item"):  # torch.Tensor / numpy scalar or 0-d array
        v = v.item()
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return float(v)


class MetricsWriter:
    """Append-only writer of ``metrics.jsonl`` (give a file path or a run directory)."""

    def __init__(self, path: str | Path, *, drop_after: int | None = None, fsync: bool = False):
        path = Path(path)
        if path.is_dir() or path.suffix != ".jsonl":
            path = path / FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fsync = fsync
        _cut_torn_tail(path)
        if drop_after is not None and path.exists():
            keep = [r for r in read_metrics(path) if r["step"] <= drop_after]
            atomic_write(path, lambda f: _write_lines(f, keep), overwrite=True)
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def log(self, step: int, metrics: Mapping[str, Any], *, split: str = "train", time: float | None = None) -> dict:
        """Append one line; returns the object written."""
        if self._fd is None:
            raise ValueError(f"{self.path}: writer is closed")
        bad = [k for k in metrics if k in RESERVED]
        if bad:
            raise ValueError(f"metric names {bad} are reserved in metrics.jsonl ({', '.join(RESERVED)})")
        rec: dict[str, Any] = {"step": int(step), "split": str(split)}
        rec.update({str(k): to_number(v) for k, v in metrics.items()})
        rec["time"] = _time.time() if time is None else float(time)
        data = (json.dumps(rec, allow_nan=True) + "\n").encode()
        view = memoryview(data)
        while view:  # a regular-file write is not split in practice; loop anyway for correctness
            n = os.write(self._fd, view)
            view = view[n:]
        if self._fsync:
            os.fsync(self._fd)
        return rec

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def _write_lines(f: BinaryIO, rows: list[dict]) -> None:
    for r in rows:
        f.write((json.dumps(r, allow_nan=True) + "\n").encode())


def _cut_torn_tail(path: Path) -> None:
    """Truncate a file back to its last newline (the torn line a killed writer may leave)."""
    if not path.exists():
        return
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "r+b") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        pos = size
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            chunk = f.read(step)
            i = chunk.rfind(b"\n")
            if i >= 0:
                f.truncate(pos + i + 1)
                return
        f.truncate(0)


def iter_metrics(path: str | Path) -> Iterator[dict[str, Any]]:
    """The complete lines of a ``metrics.jsonl`` (file or run dir), in order; a torn last line is
    skipped, a malformed line elsewhere raises ``ValueError``."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline; else a torn line
    del tail
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not a JSON line: {e}") from None


def read_metrics(path: str | Path, *, split: str | None = None) -> list[dict[str, Any]]:
    """All complete lines (optionally only one split)."""
    return [r for r in iter_metrics(path) if split is None or r.get("split") == split]


def series(path: str | Path, metric: str, *, split: str | None = "train") -> list[tuple[int, float]]:
    """``[(step, value)]`` of one metric (lines that have it)."""
    return [(r["step"], r[metric]) for r in read_metrics(path, split=split) if metric in r]
