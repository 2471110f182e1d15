"""The one reader of W&B 0.31's offline ``run-<id>.wandb`` files: records, config, history,
summary, artifacts, the run's identity and time span, and whether the file is complete.

``run.finish()`` returns once wandb-core has *received* the exit record, but the transaction log is
flushed to disk when wandb-core closes the stream, which it does asynchronously a few ms later
(observed: the file can still be its 7-byte header right after ``finish()`` returns). A caller that
reads, copies, syncs or reports the file right away must wait for the ``exit`` record to land
(:func:`wait_until_closed`).

Format (LevelDB log): 7-byte header ``b":W&B"``, uint16 0xBEE1, uint8 version; 32 KiB blocks of
chunks ``[crc32 u32][len u16][type u8][payload]`` (1 full, 2 first, 3 middle, 4 last; the crc is
zlib's crc32 of the type byte then the payload); a block tail shorter than a chunk header is zero
padding; each reassembled payload is a ``wandb.proto.wandb_internal_pb2.Record``.

A damaged chunk is read the way LevelDB's own log reader reads one: a zero-filled chunk header
(a file extended but never written: a crash, a preallocated region) or a chunk whose crc does not
match skips the rest of its block and drops the record being assembled; reading resumes at the
next block. A chunk cut short by the end of the file (a writer killed mid-write) ends the file.
So a file a killed or crashed writer left gives every record that reached the disk intact, and
nothing else.
"""

from __future__ import annotations

import json
import re
import struct
import time
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7  # the file header and a chunk header are both 7 bytes
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
MAGIC, IDENT = b":W&B", 0xBEE1


class NotARunFile(ValueError):
    """The file does not start with W&B's log header."""


def _payloads(data: bytes) -> Iterator[bytes]:
    """The reassembled record payloads of a log's bytes, in order (see the module doc for damage)."""
    pending: bytes | None = None
    pos = HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer (zero padding)
            pos += left
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        payload = data[pos + HEADER : pos + HEADER + length]
        if len(payload) < length:
            return  # torn: the writer stopped inside this chunk
        damaged = kind not in (FULL, FIRST, MIDDLE, LAST) or length > left - HEADER
        if damaged or zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            pending = None  # zero fill or garbage: the rest of this block is unreadable
            pos += left
            continue
        pos += HEADER + length
        if kind == FULL:
            pending = None
            yield payload
        elif kind == FIRST:
            pending = payload
        elif pending is not None:  # a MIDDLE/LAST without its FIRST (skipped with a block) is dropped
            pending += payload
            if kind == LAST:
                yield pending
                pending = None


def read_records(path: str | Path) -> list[Any]:
    """Every intact record of the file, in file order (``wandb_internal_pb2.Record`` messages).
    Raises :class:`NotARunFile` when the file lacks W&B's header, OSError when it cannot be read."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if len(data) < HEADER or struct.unpack_from("<4sH", data) != (MAGIC, IDENT):
        raise NotARunFile(f"{path}: not a W&B run log (no {MAGIC!r} header)")
    records = []
    for raw in _payloads(data):
        rec = pb.Record()
        rec.ParseFromString(raw)
        records.append(rec)
    return records


def last_record_type(path: str | Path) -> str | None:
    """The ``record_type`` of the file's last intact record (None: no record / not a readable log)."""
    try:
        records = read_records(path)
    except Exception:  # unreadable, not a W&B log, or a record protobuf cannot parse
        return None
    return records[-1].WhichOneof("record_type") if records else None


def wait_until_closed(path: str | Path, timeout: float = 30.0) -> bool:
    """Poll until the run file's last record is ``exit``; False on timeout."""
    deadline = time.monotonic() + timeout
    delay, size = 0.002, -1
    while True:
        try:
            now = Path(path).stat().st_size
        except OSError:
            now = -1
        if now != size and now > HEADER:
            size = now
            if last_record_type(path) == "exit":
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def find_run_files(root: str | Path) -> list[Path]:
    """Every ``run-*.wandb`` under ``root``, oldest folder first (an offline resume adds a folder
    ``offline-run-<time>-<id>`` beside the first; ``-1`` appended when ``<time>`` collides).
    W&B's ``latest-run`` symlink is not followed."""

    def order(p: Path) -> tuple:
        return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.parent.name))

    found = (p for p in Path(root).rglob("run-*.wandb") if not any(q.is_symlink() for q in p.parents))
    return sorted(found, key=order)


def find_run_file(root: str | Path) -> Path:
    """The single ``run-*.wandb`` under ``root`` (a wandb dir, a run folder, or the file itself);
    ValueError when there is not exactly one."""
    root = Path(root)
    if root.is_file():
        return root
    files = find_run_files(root)
    if len(files) != 1:
        raise ValueError(f"expected one W&B run file under {root}, found {len(files)}: {files}")
    return files[0]


def grouped(records: Iterable[Any]) -> dict[str, list[Any]]:
    """``{record_type: [the inner messages, in order]}``."""
    g: dict[str, list[Any]] = defaultdict(list)
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind:
            g[kind].append(getattr(r, kind))
    return dict(g)


def _items(items: Iterable[Any]) -> dict[str, Any]:
    """``key``/``nested_key`` items -> a dict; nested keys become nested dicts (a logged Table or
    Audio arrives as ``("rebuild/table", "_type")``, ... items -> ``{"rebuild/table": {...}}``)."""
    out: dict[str, Any] = {}
    for it in items:
        path = list(it.nested_key) if len(getattr(it, "nested_key", ())) else [it.key]
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = json.loads(it.value_json)
    return out


def run_config(records: Iterable[Any]) -> dict[str, Any]:
    """The merged config (later updates win; ``_wandb`` internals included), values json-decoded
    (the ``{"value": v}`` wrappers some records use are unwrapped)."""
    cfg: dict[str, Any] = {}
    g = grouped(records)
    for run in g.get("run", []):
        cfg.update(_items(run.config.update))
    for c in g.get("config", []):
        cfg.update(_items(c.update))
        for it in c.remove:
            cfg.pop(it.key, None)
    return {k: (v["value"] if isinstance(v, dict) and set(v) == {"value"} else v) for k, v in cfg.items()}


def history_rows(records: Iterable[Any]) -> list[dict[str, Any]]:
    """Each logged row (``_step``, ``_timestamp`` and the logged keys), in order."""
    return [_items(h.item) for h in grouped(records).get("history", [])]


def summary(records: Iterable[Any]) -> dict[str, Any]:
    """The run's summary after every update and removal."""
    s: dict[str, Any] = {}
    for rec in grouped(records).get("summary", []):
        s.update(_items(rec.update))
        for it in rec.remove:
            s.pop(it.key, None)
    return s


def artifacts(records: Iterable[Any]) -> list[Any]:
    """Artifact messages (``.name``, ``.type``, ``.metadata`` json, ``.manifest.contents``)."""
    return grouped(records).get("artifact", [])


@dataclass(frozen=True)
class RunInfo:
    """Who a run file belongs to (from its last ``run`` record); ``runs``: how many run records."""

    id: str
    name: str
    group: str
    job_type: str
    project: str
    resumed: bool
    starting_step: int
    runs: int


def run_info(records: Iterable[Any]) -> RunInfo:
    """The run's identity; ValueError when the file holds no ``run`` record."""
    runs = grouped(records).get("run", [])
    if not runs:
        raise ValueError("no run record")
    r = runs[-1]
    return RunInfo(
        id=r.run_id,
        name=r.display_name,
        group=r.run_group,
        job_type=r.job_type,
        project=r.project,
        resumed=r.resumed,
        starting_step=r.starting_step,
        runs=len(runs),
    )


@dataclass(frozen=True)
class WriterSpan:
    """When one writer wrote one run file: from the run's start to its last record's time."""

    run_id: str
    path: Path
    start: float  # seconds since the epoch
    end: float
    closed: bool  # the file ends with its exit record


def writer_span(path: str | Path) -> WriterSpan:
    """The time one writer (one ``wandb.init`` .. ``finish``) held this run file: the run record's
    start time to the latest of its rows' ``_timestamp`` and its start plus the exit's runtime."""
    records = read_records(path)
    g = grouped(records)
    run = g["run"][-1] if g.get("run") else None
    if run is None:
        raise ValueError(f"{path}: no run record")
    start = run.start_time.seconds + run.start_time.nanos / 1e9
    ends = [start] + [row["_timestamp"] for row in history_rows(records) if "_timestamp" in row]
    ends += [start + e.runtime for e in g.get("exit", [])]
    closed = bool(records) and records[-1].WhichOneof("record_type") == "exit"
    return WriterSpan(run.run_id, Path(path), start, max(ends), closed)


def overlapping_writers(root: str | Path) -> list[tuple[WriterSpan, WriterSpan]]:
    """Pairs of run files under ``root`` for one run id whose writers were active at the same time
    (empty: each run had one writer at a time). Files without a run record are skipped."""
    by_id: dict[str, list[WriterSpan]] = defaultdict(list)
    for f in find_run_files(root):
        try:
            span = writer_span(f)
        except ValueError:
            continue
        by_id[span.run_id].append(span)
    pairs = []
    for spans in by_id.values():
        spans.sort(key=lambda s: s.start)
        pairs += [(a, b) for a, b in zip(spans, spans[1:]) if b.start < a.end]
    return pairs
