"""A folder's checksum manifest: ``manifest.json``, written last, lists every file's size and checksum;
the folder is used only when its files verify against it (a truncated, emptied, replaced, corrupted
or missing file is caught before anything reads it).

One verifier for the rebuild store (CRC-32, trusting a file whose identity is unchanged) and the
training checkpoints (sha256 of every file). Only the standard library: every layer may use it.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Collection
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(_CHUNK):
            h.update(b)
    return h.hexdigest()


def crc32_file(path: str | Path) -> int:
    """The CRC-32 of a file (cheaper than sha256; enough to catch damage, not tampering)."""
    crc = 0
    with open(path, "rb") as f:
        while b := f.read(_CHUNK):
            crc = zlib.crc32(b, crc)
    return crc


_CHECKSUMS = {"sha256": sha256_file, "crc32": crc32_file}


def identity(path: Path) -> dict[str, int]:
    """What changes with any write, truncation or replacement of a file: its mtime and inode."""
    st = path.stat()
    return {"mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def entry(path: Path, checksum: str, *, with_identity: bool = False) -> dict[str, Any]:
    """A file's manifest entry: its size and ``checksum`` (``"sha256"`` or ``"crc32"``), and its
    :func:`identity` when ``with_identity`` (so a verifier may skip re-reading an unchanged file)."""
    out: dict[str, Any] = {"size": path.stat().st_size, checksum: _CHECKSUMS[checksum](path)}
    return {**out, **identity(path)} if with_identity else out


def problem(
    directory: str | Path,
    *,
    checksum: str,
    needed: Collection[str] = (),
    fmt: int | None = None,
    trust_identity: bool = False,
) -> str | None:
    """Why ``directory`` does not verify against its ``manifest.json`` (None when it does).

    ``needed``: names the manifest must list; ``fmt``: the ``"format"`` it must carry (None: any).
    Every file's size is checked; its ``checksum`` too, except, with ``trust_identity``, for a file
    whose recorded :func:`identity` is unchanged."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        files = manifest["files"]
        if (fmt is not None and manifest.get("format") != fmt) or not isinstance(files, dict):
            return "unknown manifest format"
    except FileNotFoundError:
        return f"no {MANIFEST} (incomplete, or written by another tool)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"unreadable {MANIFEST} ({type(e).__name__})"
    if missing := sorted(set(needed) - set(files)):
        return f"the manifest lists no {', '.join(missing)}"
    for name, meta in files.items():
        p = directory / str(name)
        try:
            if "/" in str(name) or p.stat().st_size != meta["size"]:
                return f"{name}: size differs from the manifest (truncated or replaced)"
            if trust_identity and identity(p) == {k: meta.get(k) for k in ("mtime_ns", "ino")}:
                continue
            if _CHECKSUMS[checksum](p) != meta.get(checksum):
                return f"{name}: content differs from the manifest (corrupted)"
        except FileNotFoundError:
            return f"{name} is missing"
        except (OSError, KeyError, TypeError) as e:
            return f"{name}: {type(e).__name__}"
    return None
