"""Temporary directories that know whether their owner is still alive, so orphans get cleaned.

A process killed mid-write (SIGKILL, OOM, a node lost) cannot clean up after itself: its temp dir
(a half-written rebuild entry, a half-copied ``-o``, a run's node scratch) would stay forever. So
every such directory holds a lock file, ``.gsv-owner``, locked (``flock``) by its owners while they
use it. The kernel drops the lock when the owner dies, however it dies; a directory whose lock can
be taken exclusively, and that is older than a grace period, is an orphan and :func:`sweep` removes
it. (``flock`` is per node: these directories are all node-local temp dirs or a cache directory,
never shared checkpoint storage.)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

OWNER = ".gsv-owner"
GRACE_S = 60.0  # never sweep a directory touched this recently (its owner may be between mkdir and lock)


class Owner:
    """A held lock on ``<directory>/.gsv-owner`` (shared: several processes of one run may hold it)."""

    def __init__(self, directory: str | os.PathLike[str], *, shared: bool = False):
        self.directory = Path(directory)
        fd = _lock(self.directory / OWNER, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        assert fd is not None  # a blocking lock always comes
        os.utime(fd)  # fresh: inside the grace period
        self._fd: int | None = fd

    def disown(self) -> None:
        """Remove the lock file (keeping the lock) before the directory is renamed into place."""
        (self.directory / OWNER).unlink(missing_ok=True)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def release_and_remove_if_last(self) -> bool:
        """Drop our lock; remove the directory if no other owner holds it (the last one out cleans)."""
        self.release()
        return _remove_if_orphan(self.directory, grace_s=0.0)

    def __enter__(self) -> Owner:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _lock(lock: Path, how: int, *, per_process: bool = False) -> int | None:
    """An open descriptor of ``lock`` (created with its directory), locked ``how`` (``flock``, or
    with ``per_process`` a POSIX record lock, ``lockf``); None when ``how`` has ``LOCK_NB`` and
    another process holds it."""
    while True:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
        try:
            (fcntl.lockf if per_process else fcntl.flock)(fd, how)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise
        try:  # a sweeper may have removed the directory while we waited: lock the file that is there now
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


#: In a run's ``-o``: locked by the process that runs it (its PID inside), for the run's whole life.
RUN_LOCK = ".gsv-run.lock"


class RunBusy(Exception):
    """Another live process owns the run directory (``pid``: its PID when it could be read)."""

    def __init__(self, directory: Path, pid: int | None):
        super().__init__(f"{directory} is owned by PID {pid}")
        self.directory, self.pid = directory, pid


class _PidLock:
    """A held per-process lock file with the holder's PID in it; released by :meth:`release`, the
    ``with`` block's end or the process's end."""

    _fd: int | None = None

    def _hold(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self: L) -> L:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


L = TypeVar("L", bound=_PidLock)


class RunOwner(_PidLock):
    """Exclusive ownership of a run directory: a lock on ``<directory>/.gsv-run.lock``, taken
    before the run writes anything and held until :meth:`release` or the process's end, however it
    ends (the kernel drops the lock of a killed process: no stale lock to remove by hand). The file
    holds the owner's PID, for the message a second run gets. It is never removed: removing it would
    let two processes lock two different files of the same name. Raises :class:`RunBusy`.

    A POSIX record lock (``lockf``), not the ``flock`` of :class:`Owner`: an ``flock`` is shared
    with forked children (DataLoader workers), which outlive a SIGKILLed run by seconds and kept its
    ``-o`` locked; a record lock belongs to the one process. (It is also dropped when that process
    closes any descriptor of the file: nothing else in the run opens it.)"""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        lock = self.directory / RUN_LOCK
        fd = _lock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB, per_process=True)
        if fd is None:
            raise RunBusy(self.directory, _pid_in(lock))
        self._hold(fd)


class WriterLock(_PidLock):
    """One live writer at a time on this node: the lock of :class:`RunOwner` (a per-process record
    lock on ``lock``, the holder's PID inside), taken as soon as no live process holds it. The
    kernel drops it when its holder dies, however it dies, so a waiter gets it exactly when the
    previous writer is gone. Raises :class:`RunBusy` (``directory``: the lock file) when it is
    still held after ``wait_s``. (Waiting is a 50 ms retry: it happens only while a process that
    should be gone still runs.)"""

    def __init__(self, lock: str | os.PathLike[str], *, wait_s: float = 60.0):
        self.lock = Path(lock)
        deadline = time.monotonic() + wait_s
        while (fd := _lock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB, per_process=True)) is None:
            if time.monotonic() >= deadline:
                raise RunBusy(self.lock, _pid_in(self.lock))
            time.sleep(0.05)
        self._hold(fd)


def _pid_in(lock: Path) -> int | None:
    try:
        text = lock.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # None: the owner has not written it yet


def owned_temp_dir(final: Path) -> tuple[Path, Owner]:
    """A temp dir beside ``final`` (same filesystem: the rename into place is atomic), readable like
    a normal directory (mkdtemp makes it private), owned by this process until released."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp.chmod(0o777 & ~_umask())
    return tmp, Owner(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_when_orphaned(directory: str | os.PathLike[str], *, wait_s: float = 0.0) -> bool:
    """Remove ``directory`` once no owner holds it (waiting up to ``wait_s`` for owners that are
    exiting); False if an owner is still alive then."""
    deadline = time.monotonic() + wait_s
    while True:
        if not Path(directory).exists() or _remove_if_orphan(Path(directory), grace_s=0.0):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _remove_if_orphan(directory: Path, *, grace_s: float, unlocked_after: float | None = None) -> bool:
    lock = directory / OWNER
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:  # no lock file: a temp dir from before locks, or killed between mkdir and lock
        if unlocked_after is None:
            return False
        try:
            age = time.time() - directory.stat().st_mtime
        except FileNotFoundError:
            return False
        if age < max(grace_s, unlocked_after):
            return False
        shutil.rmtree(directory, ignore_errors=True)
        return True
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its owner is alive
        if time.time() - os.fstat(fd).st_mtime < grace_s:
            return False
        hidden = directory.with_name(f".del-{directory.name.lstrip('.')}")
        try:
            os.replace(directory, hidden)  # out of its namespace first: a kill mid-delete leaves no half dir
        except OSError:
            return False
        shutil.rmtree(hidden, ignore_errors=True)
        return True
    finally:
        os.close(fd)


def sweep(
    parent: str | os.PathLike[str],
    match: Callable[[str], bool],
    *,
    grace_s: float = GRACE_S,
    unlocked_after: float | None = None,
) -> list[Path]:
    """Remove the orphaned directories under ``parent`` whose names ``match`` (and leftovers of an
    interrupted sweep); returns what was removed. A matching directory without a lock file is
    removed only with ``unlocked_after`` (seconds since its last change). Never raises: cleaning is
    best effort."""
    parent = Path(parent)
    removed = []
    try:
        children = list(parent.iterdir())
    except OSError:
        return removed
    for d in children:
        try:
            if not d.is_dir() or d.is_symlink():
                continue
        except OSError:
            continue
        if d.name.startswith(".del-"):  # a sweep interrupted mid-delete
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
        elif match(d.name) and _remove_if_orphan(d, grace_s=grace_s, unlocked_after=unlocked_after):
            removed.append(d)
    return removed


PRIVATE_TMP_PREFIX = "gsvr-"  # short: Ray puts Unix sockets under $TMPDIR/ray/session_<time>_<pid>/sockets/
#: Ray's longest socket path past its temp dir is ~69 bytes of the 107 Unix allows
_RAY_SOCKET_TAIL = 69


@contextlib.contextmanager
def private_temp_dir() -> Iterator[Path]:
    """Run a command with its own temp dir (``$TMPDIR`` for it and every process it starts),
    removed at the end, on success, failure or Ctrl-C.

    Libraries leave files in the temp dir (W&B: its media/artifact/table temp folders and service
    sockets; Python multiprocessing: ``pymp-*``; torch: ``torchinductor_<user>``; a local Ray: its
    session folder and the "newest cluster" record that a plain ``ray.init()`` elsewhere would then
    join). With a private temp dir nothing of a run is left outside ``-o``, the storage, the cache
    and W&B's own folders. ``RAY_TMPDIR`` set by the user still wins for Ray. A command killed
    before it could clean up leaves an orphan, removed by the next command (its lock is gone)."""
    parent = Path(tempfile.gettempdir())
    # unlocked_after: a folder of ours without a lock file is a leftover too (seen: a Ray process of
    # an ended command recreated ``ray/session_*`` in it after it was removed)
    sweep(parent, lambda n: n.startswith(PRIVATE_TMP_PREFIX), unlocked_after=GRACE_S)
    d = Path(tempfile.mkdtemp(prefix=PRIVATE_TMP_PREFIX, dir=parent))
    owner = Owner(d)
    saved = {k: os.environ.get(k) for k in ("TMPDIR", "RAY_TMPDIR")}
    cached = tempfile.tempdir
    os.environ["TMPDIR"] = str(d)
    if saved["RAY_TMPDIR"] is None and len(str(d)) + _RAY_SOCKET_TAIL > 107:
        os.environ["RAY_TMPDIR"] = str(parent)  # a long temp path: Ray's sockets would not fit in ours
    tempfile.tempdir = None  # recomputed from $TMPDIR on next use
    try:
        yield d
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        tempfile.tempdir = cached
        owner.release()
        shutil.rmtree(d, ignore_errors=True)
