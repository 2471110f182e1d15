"""Read a W&B 0.31 offline ``run-<id>.wandb`` file back into records (test-only).

The file is a LevelDB-style log: a 7-byte header (``b":W&B"``, uint16 0xBEE1, uint8 version), then
32 KiB blocks of chunks ``[crc32 u32][len u16][type u8][payload]`` (1 full, 2 first, 3 middle, 4
last; a block tail shorter than a chunk header is padding). Each reassembled payload is a
``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import re
import struct
from collections import defaultdict
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> list[pb.Record]:
    """Every record in file order (a torn final record, as a killed run leaves, is skipped)."""
    data = Path(path).read_bytes()
    magic, ident, _version = struct.unpack("<4sHB", data[:HEADER])
    assert magic == b":W&B" and ident == 0xBEE1, f"not a W&B log: {path}"
    out, pending, pos = [], None, HEADER
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block tail padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            pending = None
            out.append(payload)
        elif kind == FIRST:
            pending = payload
        elif kind in (MIDDLE, LAST) and pending is not None:
            pending += payload
            if kind == LAST:
                out.append(pending)
                pending = None
        elif kind == 0 and length == 0:  # zero fill at the end of a preallocated block
            pos += left - 7
    records = []
    for raw in out:
        r = pb.Record()
        r.ParseFromString(raw)
        records.append(r)
    return records


def find_run_files(root: str | Path) -> list[Path]:
    """Every ``run-*.wandb`` under ``root``, oldest folder first (an offline resume adds a folder
    ``offline-run-<time>-<id>-1`` beside the first)."""

    def order(p: Path) -> tuple:
        return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.parent.name))

    found = (p for p in Path(root).rglob("run-*.wandb") if not any(q.is_symlink() for q in p.parents))
    return sorted(found, key=order)  # (W&B's "latest-run" is a symlink to one of them)


def find_run_file(root: str | Path) -> Path:
    """The single ``run-*.wandb`` under ``root`` (a wandb dir, a run folder, or the file)."""
    root = Path(root)
    if root.is_file():
        return root
    files = find_run_files(root)
    assert len(files) == 1, f"expected one run file under {root}, found {files}"
    return files[0]


def grouped(records: list[pb.Record]) -> dict[str, list[Any]]:
    """``{record_type: [the inner messages, in order]}``."""
    g: dict[str, list[Any]] = defaultdict(list)
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind:
            g[kind].append(getattr(r, kind))
    return dict(g)


def _items(items: Any) -> dict[str, Any]:
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


def run_config(records: list[pb.Record]) -> dict[str, Any]:
    """The merged config (later updates win; ``_wandb`` internals included), values json-decoded.

    Values arrive as ``{"value": v}`` wrappers in some records and bare in others; both unwrap."""
    cfg: dict[str, Any] = {}
    g = grouped(records)
    for run in g.get("run", []):
        cfg.update(_items(run.config.update))
    for c in g.get("config", []):
        cfg.update(_items(c.update))
        for it in c.remove:
            cfg.pop(it.key, None)
    return {k: (v["value"] if isinstance(v, dict) and set(v) == {"value"} else v) for k, v in cfg.items()}


def history_rows(records: list[pb.Record]) -> list[dict[str, Any]]:
    return [_items(h.item) for h in grouped(records).get("history", [])]


def summary(records: list[pb.Record]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for rec in grouped(records).get("summary", []):
        s.update(_items(rec.update))
        for it in rec.remove:
            s.pop(it.key, None)
    return s


def artifacts(records: list[pb.Record]) -> list[Any]:
    """Artifact messages (``.name``, ``.type``, ``.metadata`` json, ``.manifest.contents``)."""
    return grouped(records).get("artifact", [])


def run_info(records: list[pb.Record]) -> dict[str, Any]:
    """id/name/group/job_type/project of the (last) run record; ``runs`` = how many run records."""
    runs = grouped(records).get("run", [])
    assert runs, "no run record"
    r = runs[-1]
    return {
        "id": r.run_id,
        "name": r.display_name,
        "group": r.run_group,
        "job_type": r.job_type,
        "project": r.project,
        "resumed": r.resumed,
        "starting_step": r.starting_step,
        "runs": len(runs),
    }
