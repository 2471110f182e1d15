"""The errors users see: a single line naming the file, the problem and the fix.

Three kinds, by what the user does next (the CLI's exit status says which):

* :class:`GsvError` itself (alias :data:`InputError`): a bad input file or folder, exit 2;
* :class:`ConfigError`: an option or config value that cannot work, exit 2;
* :class:`InfraError`: the machinery failed (Ray workers, a cluster, a trial), exit 1. Raised
  ``from`` the real exception, so the cause is kept: the full traceback goes to the run's log
  (and to the terminal with ``gsv-ray --debug``).
"""

from __future__ import annotations

from pathlib import Path

from gsv_ray.masking import mask


class GsvError(Exception):
    """A user-facing failure. ``str(err)`` is one line: what, where, and what to do.

    The CLI prints it to stderr and exits with :attr:`exit_code`; library callers can catch it.
    """

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None, fix: str | None = None):
        parts = []
        if path is not None:
            parts.append(f"{path}:")
        parts.append(message.rstrip("."))
        line = " ".join(parts)
        if fix:
            line += f". Fix: {fix.rstrip('.')}"
        line += "."
        super().__init__(mask(" ".join(line.split())))  # a single line; no credentials of a URI in it
        self.path = None if path is None else mask(path)


def clip(text: str, width: int, mark: str = "…") -> str:
    """``text`` cut to at most ``width`` characters, ending in ``mark`` when it was cut (the one
    home of fitting a line to a terminal's or a message's width)."""
    return text if len(text) <= width else text[: width - len(mark)] + mark


def first_line(e: BaseException | str | None, limit: int = 160) -> str:
    """The first non-empty line of an error (a library's message, never its traceback), trimmed to
    ``limit`` characters; the exception's type name when it says nothing."""
    text = str(e or "").strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not line:
        return type(e).__name__ if isinstance(e, BaseException) else ""
    return clip(line, limit, "...")


def folded(e: BaseException, limit: int = 240) -> str:
    """The whole message of an error on one line (white space folded), trimmed to ``limit``
    characters; the exception's type name when it says nothing."""
    return clip(" ".join(str(e).split()) or type(e).__name__, limit, "...")


#: A bad input file or folder (the base class's own meaning).
InputError = GsvError


class ConfigError(GsvError):
    """An option or config value that cannot work (exit 2)."""


class InfraError(GsvError):
    """The machinery failed, not the user's input: Ray workers, a cluster, a trial (exit 1). Raise it
    ``from`` the real exception; the CLI points at the full traceback."""

    exit_code = 1


#: What a filesystem failure means to the user, and what to do (errno name -> (problem, fix)).
_OS_ERRORS = {
    "ENOSPC": (
        "no space left on the filesystem that holds it",
        "free space there, or choose another -o / cache (GSV_RAY_CACHE) / --storage",
    ),
    "EDQUOT": (
        "disk quota exceeded on the filesystem that holds it",
        "free space there, or choose another -o / cache (GSV_RAY_CACHE) / --storage",
    ),
    "EROFS": ("the filesystem that holds it is read-only", "choose a writable -o / cache (GSV_RAY_CACHE) / --storage"),
    "EACCES": ("permission denied", "choose a location you can write (or read), or fix its permissions"),
    "EPERM": ("operation not permitted", "choose a location you can write (or read), or fix its permissions"),
    "ENOTDIR": ("a parent of it is a file, not a directory", "choose another path"),
    "ELOOP": ("too many levels of symbolic links", "fix the symlinks or give the real path"),
    "ENAMETOOLONG": ("the path is too long", "choose a shorter path"),
    "EISDIR": ("is a directory where a file was expected", "choose another path"),
}


def os_error(e: OSError) -> GsvError | None:
    """The one-line error for a filesystem failure the user can fix (None for anything else)."""
    import errno as _errno

    name = _errno.errorcode.get(e.errno or -1, "")
    if name not in _OS_ERRORS:
        return None
    problem, fix = _OS_ERRORS[name]
    where = e.filename
    if name in ("ENOSPC", "EDQUOT", "EROFS") and e.filename2 is not None:
        where = e.filename2  # a copy (shutil.copyfile): the destination is what is full
    if where is not None and name in ("ENOSPC", "EDQUOT", "EROFS"):
        p = Path(str(where))
        where = p.parent if p.name.startswith(".") else p  # our hidden temp name: the directory is what matters
    return GsvError(problem, path=where, fix=fix)


def is_symlink_loop(path: str | Path) -> bool:
    """Whether resolving ``path`` goes round in circles (``Path.exists()`` says False, as for a missing file)."""
    import errno as _errno
    import os

    try:
        os.stat(path)
    except OSError as e:
        return e.errno == _errno.ELOOP
    return False


def missing_error(path: str | Path, problem: str, fix: str) -> GsvError:
    """The error for a path that is not there: a symlink loop is named as one, not as missing."""
    if is_symlink_loop(path):
        return GsvError(
            "is a symbolic link loop (its links lead back to themselves, never to a file)",
            path=path,
            fix="fix or remove the symbolic link, or give the real path",
        )
    return GsvError(problem, path=path, fix=fix)


def usable_dir(path: str | Path, *, named: str, fix: str) -> Path:
    """``path`` as an existing directory (created with its parents when missing), or one line naming
    it and where it came from (``named``: "GSV_RAY_CACHE", "--dir", ...)."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file (or a link to one) is in the way
        raise GsvError(f"{named} is a file, not a directory", path=p, fix=fix) from None
    except OSError as e:
        if is_symlink_loop(p):
            raise missing_error(p, "", fix) from None
        raise GsvError(f"{named} cannot be created as a directory ({e.strerror})", path=p, fix=fix) from None
    return p


def check_output_path(path: str | Path) -> None:
    """One line before anything is written, for an output path that cannot be one: a dangling
    symlink (creating it would follow or replace the link), or a path under a regular file."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise GsvError(
            f"is a symbolic link to {p.readlink()}, which does not exist",
            path=p,
            fix="create the link's target directory, remove the link, or choose another path",
        )
    for parent in [p, *p.parents]:
        if parent.exists():
            if not parent.is_dir() and parent != p:
                raise GsvError(
                    "a parent of it is a file, not a directory", path=p, fix=f"choose another path ({parent} is a file)"
                )
            break


# ---------------------------------------------------------------- untrusted input: bounded echo, bounded size
#: How many characters of a user's value an error message shows.
SHOWN_CHARS = 80


def shown_value(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message, bounded: nested containers cut after a few items and
    levels (reprlib), the text after ``limit`` characters. A whole value could be megabytes (a YAML
    alias bomb printed whole reached 14 GB)."""
    import reprlib

    r = reprlib.Repr()  # attributes, not keywords: Python < 3.12 takes none
    r.maxlevel, r.maxstring, r.maxlong, r.maxother = 3, limit, 40, limit
    r.maxtuple = r.maxlist = r.maxarray = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = 4
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tree_problem(obj: object, children, *, max_nodes: int, max_depth: int) -> str | None:
    """Why ``obj`` is too big to walk as a tree, or None. ``children(o)`` gives a container's items
    (None for a leaf). A shared container counts once per place it appears, as json, repr or a copy
    would write it out; counts are memoised per object, so a DAG with 2**40 paths costs what its
    distinct containers do. Also refused: a container inside itself, nesting beyond ``max_depth``."""
    done: dict[int, tuple[int, int]] = {}  # id -> (nodes when written out, height)
    on_path: set[int] = set()

    class _Stop(Exception):
        pass

    def visit(o: object, depth: int) -> tuple[int, int]:
        kids = children(o)
        if kids is None:
            return 1, 0
        key = id(o)  # every object stays alive (reachable from obj) while we walk: ids are stable
        if key not in done:
            if key in on_path:
                raise _Stop("it contains a container that contains itself (a cycle)")
            if depth >= max_depth:
                raise _Stop(f"its containers nest deeper than {max_depth} levels")
            on_path.add(key)
            nodes, height = 1, 0
            for kid in kids:
                n, h = visit(kid, depth + 1)
                nodes, height = nodes + n, max(height, h + 1)
                if nodes > max_nodes:
                    raise _Stop(
                        f"it expands to more than {max_nodes:,} entries when written out (shared containers repeated)"
                    )
            on_path.discard(key)
            done[key] = (nodes, height)
        nodes, height = done[key]
        if depth + height > max_depth:
            raise _Stop(f"its containers nest deeper than {max_depth} levels")
        return nodes, height

    try:
        visit(obj, 0)
    except _Stop as e:
        return str(e)
    return None


#: the longest name a file-name option takes (filesystems allow 255 bytes; exports add a suffix)
MAX_NAME_BYTES = 200


def check_file_name(value: str, option: str) -> None:
    """An option that names a file or folder inside another (``--name``) is one plain name: no
    separator, not ``.``/``..``, no control characters, not too long, so it cannot lead out of its
    folder or into a subfolder."""
    bad = None
    if not value or value in (".", ".."):
        bad = "is not a name"
    elif "/" in value or "\\" in value:
        bad = "contains a path separator"
    elif any(ord(c) < 32 or ord(c) == 127 for c in value):
        bad = "contains a control character"
    elif len(value.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        bad = f"is longer than {MAX_NAME_BYTES} bytes"
    if bad:
        raise ConfigError(
            f"{option} {shown_value(value)} {bad}: it must be one plain file name",
            fix=f"give {option} a name like myvoice-v2 (letters, digits, '-', '_', '.')",
        )
