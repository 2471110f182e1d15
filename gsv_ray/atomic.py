"""Atomic filesystem writes: the one place files and directories appear whole or not at all.

Everything we write that someone reads back (exports, rebuild entries, checkpoints, downloads,
metrics, W&B staging) is built under a temp name beside its final path (same filesystem: the
rename is atomic), then renamed into place; a failure or a kill leaves no half-written file under
the final name. Temp files and folders are created like any new file (mode from the umask, not
``mkstemp``'s private 0600, which would survive the rename and hide exports from a GPT-SoVITS
running as another user). Temp folders hold an owner lock (:mod:`gsv_ray.owned`), so the orphans
of a killed writer are recognised and swept by the next one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from gsv_ray.errors import GsvError
from gsv_ray.owned import owned_temp_dir, sweep

__all__ = [
    "atomic_dir",
    "atomic_write",
    "commit_dir",
    "copy_sparse",
    "link_or_copy",
    "lost_race",
    "make_sparse",
    "remove_dir",
    "rust_os_error",
    "sweep_temp_files",
    "write_json",
]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


class _WriteErrors:
    """A file object that remembers the first OSError a write hit: torch.save reports a full disk as
    "unexpected pos ..." (a RuntimeError), which would hide ENOSPC from the user's one-line error."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self.error: OSError | None = None

    def write(self, b) -> int:
        try:
            return self._f.write(b)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def rust_os_error(e: Exception, path: str | Path) -> OSError | None:
    """The OSError inside a Rust library's error (safetensors: "... (os error 28)"), if any."""
    m = re.search(r"\(os error (\d+)\)", str(e))
    return OSError(int(m.group(1)), os.strerror(int(m.group(1))), str(path)) if m else None


#: Errors about the filesystem as a whole (full, over quota, read-only): the user's fix is about
#: where the output goes, so the error names the output, never the temp name it was built under.
_WHERE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _named(e: OSError, final: Path, tmp: Path) -> OSError | None:
    """``e`` re-addressed to ``final`` when it is about the filesystem and names no path, or names
    something under the temp name ``tmp`` (None: leave ``e`` as it is)."""
    if e.errno not in _WHERE_ERRNOS:
        return None
    names = [str(n) for n in (e.filename, e.filename2) if n is not None]
    if names and not any(n == str(tmp) or n.startswith(f"{tmp}/") for n in names):
        return None
    return OSError(e.errno, e.strerror or os.strerror(e.errno), str(final))


def atomic_write(
    path: str | Path,
    write: Callable[[BinaryIO], None],
    *,
    overwrite: bool = False,
    protect: Iterable[str | Path] = (),
) -> Path:
    """Write via ``write(fileobj)`` into a temp file beside ``path``, fsync, then rename.

    Refuses to replace an existing file unless ``overwrite``, and never replaces any file in
    ``protect`` (the inputs of the current job). A crash leaves no half-written file under the name.
    """
    path = Path(path)
    for p in protect:
        if _same_file(path, Path(p)):
            raise GsvError("refusing to write over an input file", path=path, fix="choose another output path")
    if path.is_dir():  # an OSError: callers that treat a failed write as a miss (caches) still do
        raise IsADirectoryError(errno.EISDIR, "is a directory, but a file is written here", str(path))
    if path.exists() and not overwrite:
        raise GsvError("already exists; not overwriting", path=path, fix="choose another output path or remove it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w+b") as f:
            sink = _WriteErrors(f)
            try:
                write(sink)  # type: ignore[arg-type]
            except Exception as e:
                if sink.error is not None and not isinstance(e, OSError):  # the real cause, with its errno
                    raise OSError(sink.error.errno, sink.error.strerror, str(path)) from e
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        named = _named(e, path, tmp) if isinstance(e, OSError) else None
        if named is not None:  # a write's ENOSPC has no filename (and a flush's names nothing either)
            raise named from e
        raise
    return path


#: the temp name :func:`atomic_write` and :func:`copy_sparse` use: ``.<name>.<pid>.<12 hex>.tmp``
_TEMP_FILE = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{12}\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_temp_files(folder: str | Path) -> int:
    """Remove the temp files a killed :func:`atomic_write` left in ``folder`` (their writer's process no
    longer runs on this host); the number removed. Files of live writers are left alone."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        m = _TEMP_FILE.match(entry.name)
        if m and entry.is_file(follow_symlinks=False) and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed


def write_json(path: str | Path, obj: Any, *, indent: int | None = None) -> Path:
    """``obj`` as JSON in ``path``, written atomically (:func:`atomic_write`), replacing what was there."""
    return atomic_write(path, lambda f: f.write(json.dumps(obj, indent=indent).encode()), overwrite=True)


def remove_dir(path: str | Path) -> None:
    """Delete a directory by first renaming it out of its namespace (``.del_<name>.<unique>``): a
    kill during the deletion leaves a hidden leftover, never a half-deleted entry under the real
    name; two processes removing the same entry do not collide (the second finds nothing)."""
    path = Path(path)
    hidden = path.with_name(f".del_{path.name.lstrip('.')}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        os.replace(path, hidden)
    except FileNotFoundError:
        return
    shutil.rmtree(hidden, ignore_errors=True)


def commit_dir(tmp: str | Path, final: str | Path, *, replace: bool = False) -> None:
    """Rename a finished temp folder into place; with ``replace`` an existing ``final`` is first
    removed (:func:`remove_dir`). Without it an existing non-empty ``final`` raises OSError
    (ENOTEMPTY/EEXIST): the caller decides whether a concurrent writer's result is as good."""
    if replace and Path(final).exists():
        remove_dir(final)
    os.replace(tmp, final)


@contextlib.contextmanager
def atomic_dir(final: str | Path, *, sweep_orphans: bool = True) -> Iterator[Path]:
    """Build a directory under a temp name beside ``final`` and rename it into place on success.

    Yields the temp folder (owned: a later writer sweeps it if this process is killed); on an
    exception it is removed and ``final`` untouched. ``final`` must not exist when the block ends:
    the rename raises OSError (ENOTEMPTY/EEXIST) if another writer got there first, after removing
    our copy; callers for whom an identical winner is success catch that (:func:`lost_race`)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if sweep_orphans:
        sweep(final.parent, lambda n: n.startswith(f".{final.name}."))
    tmp, owner = owned_temp_dir(final)
    try:
        yield tmp
        owner.disown()
        os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        named = _named(e, final, tmp) if isinstance(e, OSError) else None
        if named is not None:  # a full disk while building: name the output, not .<name>.<random>/<file>
            raise named from e
        raise
    finally:
        owner.release()


def lost_race(e: OSError) -> bool:
    """Whether an :func:`atomic_dir` rename failed because ``final`` was already there."""
    return e.errno in (errno.ENOTEMPTY, errno.EEXIST)


# -- sparse copies ------------------------------------------------------------------------------
#: Granularity of the zero runs a sparse copy leaves as holes (a multiple of every common block size).
HOLE_BLOCK = 1 << 16
_ZEROS = bytes(HOLE_BLOCK)


def _data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of the ranges of ``fd`` that may hold data: SEEK_DATA/SEEK_HOLE where the
    filesystem reports holes, else the whole file."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = os.lseek(fd, start, os.SEEK_HOLE)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after pos: the rest is a hole
                return
            yield pos, size  # no SEEK_DATA here (EINVAL): read it all
            return
        yield start, min(end, size)
        pos = end


def _sparse_copier(src: Path) -> Callable[[BinaryIO], None]:
    """A writer for :func:`atomic_write` (a fresh, empty file) copying ``src``: the source's holes
    are skipped without reading them, and aligned all-zero blocks of :data:`HOLE_BLOCK` are left as
    holes, so a file whose zeros were written out (Ray's checkpoint upload, pyarrow's copy) becomes
    sparse again; bytes read back are identical."""

    def write(f: BinaryIO) -> None:
        with open(src, "rb") as s:
            size = os.fstat(s.fileno()).st_size
            for start, end in _data_ranges(s.fileno(), size):
                s.seek(start)
                pos = start
                while pos < end:
                    block = s.read(min(HOLE_BLOCK - pos % HOLE_BLOCK, end - pos))
                    if not block:
                        raise OSError(errno.EIO, "file shrank while being copied", str(src))
                    if block != _ZEROS[: len(block)]:
                        f.seek(pos)
                        f.write(block)
                    pos += len(block)
            f.truncate(size)  # the end of the file may be a hole

    return write


def copy_sparse(src: str | Path, dst: str | Path, *, overwrite: bool = False) -> Path:
    """Copy ``src`` to ``dst`` atomically (:func:`atomic_write`), keeping holes: skipped source holes
    and zero blocks become holes of ``dst`` (st_blocks counts only the data). Mode bits and times
    follow ``shutil.copy2``."""
    dst = atomic_write(dst, _sparse_copier(Path(src)), overwrite=overwrite)
    shutil.copystat(src, dst)
    return dst


def make_sparse(path: str | Path, *, min_saving: int = 1 << 20) -> bool:
    """Rewrite ``path`` in place of itself (atomic rename) with its zero blocks as holes, when that
    frees at least ``min_saving`` bytes of disk; returns whether it did. The bytes read are unchanged."""
    path = Path(path)
    st = path.stat()
    if st.st_blocks * 512 < st.st_size // 2 or st.st_size < min_saving:  # already sparse, or small
        return False
    zero = 0
    with open(path, "rb") as f:
        for start, end in _data_ranges(f.fileno(), st.st_size):
            f.seek(start - start % HOLE_BLOCK)
            for _ in range(start - start % HOLE_BLOCK, end, HOLE_BLOCK):
                block = f.read(HOLE_BLOCK)
                zero += len(block) if block == _ZEROS[: len(block)] else 0
    if zero < min_saving:
        return False
    copy_sparse(path, path, overwrite=True)
    return True


def link_or_copy(src: str | Path, dst: str | Path) -> Path:
    """``dst`` as a hard link of ``src`` (no data written), or a sparse copy where links are not
    possible (another filesystem, no link support). Only for files nobody writes into in place:
    every writer here replaces files by renaming (:func:`atomic_write`). An existing ``dst`` is
    replaced atomically."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    try:
        os.link(src, tmp)
    except OSError:
        return copy_sparse(src, dst, overwrite=True)
    try:
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return dst
