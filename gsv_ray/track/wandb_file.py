"""Just enough of W&B 0.31's offline ``run-<id>.wandb`` format to know when it is complete.

``run.finish()`` returns once wandb-core has *received* the exit record, but the transaction log is
flushed to disk when wandb-core closes the stream, which it does asynchronously a few ms later
(observed: the file can still be its 7-byte header right after ``finish()`` returns). A caller that
reads, copies, syncs or reports the file right away must wait for the ``exit`` record to land.

Format (LevelDB log): 7-byte header ``b":W&B"``, uint16 0xBEE1, uint8 version; 32 KiB blocks of
chunks ``[crc32 u32][len u16][type u8][payload]`` (1 full, 2 first, 3 middle, 4 last); each
reassembled payload is a ``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def last_record_type(path: str | Path) -> str | None:
    """The ``record_type`` of the file's last complete record (None: no record / not readable)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if len(data) < HEADER or data[:4] != b":W&B":
        return None
    last, pending, pos = None, None, HEADER
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        if kind == 0 and length == 0:
            break
        payload = data[pos + 7 : pos + 7 + length]
        if len(payload) < length:
            break  # torn
        pos += 7 + length
        if kind == 1:
            last, pending = payload, None
        elif kind == 2:
            pending = payload
        elif kind in (3, 4) and pending is not None:
            pending += payload
            if kind == 4:
                last, pending = pending, None
    if last is None:
        return None
    from wandb.proto import wandb_internal_pb2 as pb

    rec = pb.Record()
    try:
        rec.ParseFromString(last)
    except Exception:
        return None
    return rec.WhichOneof("record_type")


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
