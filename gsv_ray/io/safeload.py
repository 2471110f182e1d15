"""Safe loading of any GPT-SoVITS file.

Upstream loads shared voice files with ``weights_only=False``, so a downloaded ``.pth`` can run
code. We always use torch's weights-only unpickler. Three upstream quirks need handling first:

* v2Pro/v2ProPlus/LoRA exports have their first two bytes replaced by a version tag ("05", ...),
  so torch no longer sees a zip. We present the file through a stream that reads "PK" there
  (no copy of the file in memory); plain zips are memory-mapped instead.
* SoVITS exports pickle ``utils.HParams`` and Lightning checkpoints ``pathlib.PosixPath``. We
  allow exactly those names, mapped to inert stand-ins, and convert them to dicts / strings.
* Anything else unusual is refused *before* torch runs, with the offending global named.
"""

from __future__ import annotations

import io
import ntpath
import pickletools
import posixpath
import stat
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from gsv_ray.errors import GsvError, first_line, missing_error, tree_problem

ZIP_MAGIC = b"PK\x03\x04"

#: What each 2-byte header tag means (upstream ``head2version``; 00/01/02 are reserved, never written).
HEADER_TAGS: dict[str, str] = {
    "00": "v1",
    "01": "v2",
    "02": "v3",
    "03": "v3",  # v3 LoRA export
    "04": "v4",  # v4 LoRA export
    "05": "v2Pro",
    "06": "v2ProPlus",
}

_PATH_CLASSES = {"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"}

# Globals a GPT-SoVITS file legitimately contains besides torch's own tensor machinery.
_PLAIN_GLOBALS = {"collections.OrderedDict", "builtins.set", "builtins.frozenset", "builtins.complex"}


class HParamsStandIn:
    """Inert stand-in for upstream's ``utils.HParams``: just restores the pickled ``__dict__``."""

    def __setstate__(self, state: dict) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)


def _posix_path(*parts: Any) -> str:
    return posixpath.join(*[str(p) for p in parts]) if parts else "."


def _windows_path(*parts: Any) -> str:
    return ntpath.join(*[str(p) for p in parts]) if parts else "."


@dataclass
class Loaded:
    """The unpickled top-level object (stand-ins already converted) and facts about the file."""

    obj: Any
    header: str  # first two bytes as text: "PK" for a plain zip, "05" etc. for tagged files
    pickle_globals: list[str]
    config_type: str | None  # "utils.HParams" when the top-level config was an HParams object


def is_hparams_name(name: str) -> bool:
    return name == "utils.HParams" or name.endswith(".utils.HParams")


def is_path_name(name: str) -> bool:
    module, _, cls = name.rpartition(".")
    return cls in _PATH_CLASSES and (module == "pathlib" or module.startswith("pathlib."))


class _TagPatchedFile(io.RawIOBase):
    """Read-only view of a file whose first two bytes read as ``PK`` (strips a version tag)."""

    def __init__(self, f: BinaryIO):
        self._f = f

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, b) -> int:  # type: ignore[override]
        pos = self._f.tell()
        n = self._f.readinto(b)
        if n and pos < 2:
            view = memoryview(b)
            for i in range(pos, min(2, pos + n)):
                view[i - pos] = ZIP_MAGIC[i]
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


_SPECIAL = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def check_path(path: Path) -> None:
    """One-line errors for the common non-file cases: missing, a directory, empty."""
    fix_missing = "check the path (GPT-SoVITS keeps exports in SoVITS_weights*/ and GPT_weights*/)"
    if not path.exists():
        raise missing_error(path, "no such file", fix_missing)
    if path.is_dir():
        raise GsvError("is a directory, not a weights file", path=path, fix="give the .pth/.ckpt file inside it")
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):  # never opened: reading a FIFO would block, a device never ends
        kind = next((what for test, what in _SPECIAL if test(mode)), "not a regular file")
        raise GsvError(f"is {kind}, not a weights file", path=path, fix="give the path of the .pth/.ckpt file itself")
    if path.stat().st_size == 0:
        raise GsvError("the file is empty (0 bytes)", path=path, fix="re-copy or re-export it")


def read_header(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def _zip_error(path: Path, what: str) -> GsvError:
    return GsvError(
        f"{what}; it is not a readable PyTorch checkpoint",
        path=path,
        fix="re-download or re-export the file (a GPT-SoVITS .pth/.ckpt is a zip written by torch.save)",
    )


#: The largest data.pkl we read. A full-size GPT-SoVITS file's pickle is tens of KB (a Lightning
#: checkpoint with optimizer states: under 1 MiB); a 3 MB zip inflating to 3 GiB took 30 s and 6.5 GB.
MAX_PICKLE_BYTES = 64 << 20


def _check_entries(zf: zipfile.ZipFile, path: Path) -> None:
    """torch.save stores every entry uncompressed; a compressed entry can only be a decompression
    bomb or not torch's. Stored entries cannot be larger than the file, so nothing read is."""
    for info in zf.infolist():
        if info.compress_type != zipfile.ZIP_STORED:
            raise _zip_error(path, f"its zip entry {info.filename[:80]!r} is compressed (torch.save never compresses)")
        if info.file_size != info.compress_size:
            raise _zip_error(path, f"its zip entry {info.filename[:80]!r} declares a size that does not match")


def _find_data_pkl(zf: zipfile.ZipFile, path: Path) -> str:
    names = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(names) != 1:
        raise _zip_error(path, "the zip holds no single data.pkl")
    return names[0]


# Python-2 module names that protocol <= 2 pickles use (pickle maps them the same way on load).
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _global_name(module: str, attr: str) -> str:
    return f"{_PY2_MODULES.get(module, module)}.{attr}"


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_MARK = object()
_UNKNOWN = object()

#: How much a pickle may make the unpickler touch through shared references (see :class:`_Sized`).
#: Real files: a few thousand. A 1 KB pickle whose dict key is a tuple holding one tuple twice, 40
#: levels deep, made torch hash 2**40 items before returning anything.
MAX_PICKLE_WORK = 10_000_000


class _Sized:
    """A tuple or list on the shadow stack: how many items it holds when written out (a list's
    count grows as items are appended). Hashing a tuple (a dict key, a set's item) walks all of it,
    every time: the cost of each memo fetch (GET) is the size of what it pushes."""

    __slots__ = ("n",)

    def __init__(self, n: int = 1):
        self.n = n


def _size(item: Any) -> int:
    return item.n if isinstance(item, _Sized) else 1


class PickleTooCostly(ValueError):
    """A pickle whose shared references would make loading it unbounded work."""


def scan_globals(pickle_bytes: bytes) -> list[str]:
    """Every global a pickle references (GLOBAL/INST/STACK_GLOBAL), without executing anything.

    STACK_GLOBAL takes its module and name from the stack, where they may have come through the
    memo (``BINPUT`` ... ``BINGET``), so we keep a shadow of the stack and memo with the strings'
    values and the tuples' and lists' sizes (everything else is a placeholder): the global is named
    as the unpickler would see it, and the work shared references cost is bounded.
    Raises :class:`PickleTooCostly` beyond :data:`MAX_PICKLE_WORK`, ValueError on a malformed pickle
    (stack underflow, unknown opcode)."""
    found: list[str] = []
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    work = 0
    for op, arg, _pos in pickletools.genops(pickle_bytes):
        name = op.name
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            found.append(_global_name(module, attr))
        if name == "MEMOIZE":
            if not stack:
                raise ValueError("MEMOIZE on an empty stack")
            memo[len(memo)] = stack[-1]
            continue
        if name in _PUT_OPS:
            if not stack:
                raise ValueError(f"{name} on an empty stack")
            memo[int(arg)] = stack[-1]
            continue
        if name in _GET_OPS:
            item = memo.get(int(arg), _UNKNOWN)
            work += _size(item)
            if work > MAX_PICKLE_WORK:
                raise PickleTooCostly(
                    f"its pickle reuses shared tuples and lists more than {MAX_PICKLE_WORK:,} "
                    "times over (loading it would take unbounded time)"
                )
            stack.append(item)
            continue
        if name == "STACK_GLOBAL":
            if len(stack) < 2:
                raise ValueError("STACK_GLOBAL on a short stack")
            module, attr = stack[-2], stack[-1]
            found.append(
                _global_name(module, attr)
                if isinstance(module, str) and isinstance(attr, str)
                else "<unresolvable STACK_GLOBAL>"
            )
        _shadow_op(op, arg, stack)
    return sorted(set(found))


def _shadow_op(op: Any, arg: Any, stack: list[Any]) -> None:
    """Apply one opcode's stack effect to the shadow stack (strings and sizes kept, see scan_globals)."""
    name, before = op.name, op.stack_before
    if pickletools.markobject in before:  # pop the items above the mark, the mark, and those below it
        popped = 0
        while stack and stack[-1] is not _MARK:
            popped += _size(stack.pop())
        if not stack:
            raise ValueError(f"{name} without a MARK")
        stack.pop()
        below = before.index(pickletools.markobject)
    else:
        below, popped = len(before), 0
    if below > len(stack):
        raise ValueError(f"{name} on a short stack")
    taken = stack[len(stack) - below :]
    del stack[len(stack) - below :]
    if name in ("APPEND", "APPENDS") and taken and isinstance(taken[0], _Sized):
        taken[0].n += popped + sum(_size(x) for x in taken[1:])  # the list stays, one item longer
        stack.append(taken[0])
        return
    for item in op.stack_after:
        if item is pickletools.markobject:
            stack.append(_MARK)
        elif name in _STRING_OPS:
            stack.append(arg.decode("latin-1") if isinstance(arg, bytes) else str(arg))
        elif name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "LIST", "EMPTY_LIST", "EMPTY_TUPLE"):
            stack.append(_Sized(1 + popped + sum(_size(x) for x in taken)))
        else:
            stack.append(_UNKNOWN)


def _refused(globals_: list[str], stream: BinaryIO) -> list[str]:
    """The globals of ``globals_`` (our scan's, in its order) that neither torch's weights-only
    unpickler nor our stand-ins accept. ``stream``: the file as a plain torch zip (a tagged export
    read through :class:`_TagPatchedFile`: torch's public check refuses the tagged file itself).

    torch's :func:`torch.serialization.get_unsafe_globals_in_checkpoint` says which are unsafe; it
    reads only the opcodes torch's weights-only unpickler takes (protocol 2: GLOBAL, no STACK_GLOBAL).
    For a pickle it cannot read torch.load refuses the file as well: ours (which follows
    STACK_GLOBAL and the memo) then names every global outside ``torch.*`` / ``collections.*``."""
    ours = [g for g in globals_ if not (is_hparams_name(g) or is_path_name(g) or g in _PLAIN_GLOBALS)]
    if not ours:
        return []
    stream.seek(0)
    try:
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(stream))
    except Exception:  # an opcode or archive torch's static check cannot read; torch.load fails on it too
        return [g for g in ours if not g.startswith(("torch.", "collections."))]
    return [g for g in ours if g in unsafe]


#: How deep a file's containers may nest. Real files nest 4 levels (checkpoint > config > train >
#: value); a crafted pickle can nest 10^5 levels or refer to itself, which recursive code (ours,
#: json, repr) turns into a RecursionError with a 3000-line traceback.
MAX_DEPTH = 64

#: How many entries (containers and leaves, tensors included) a file may hold when written out as a
#: tree. Real files hold 150-7,100 (a SoVITS G_*.pth with its optimizer state: 7,029). The pickle memo
#: shares containers for free: a 6.6 MB file whose config reused one dict 2**40 times never loaded.
MAX_NODES = 200_000


class StructureError(ValueError):
    """The unpickled object is cyclic, nested deeper than MAX_DEPTH or larger than MAX_NODES."""


def _children(obj: Any) -> list[Any] | None:
    """What :func:`to_plain` walks into (None: a leaf). A dict's keys count as entries too."""
    if isinstance(obj, torch.Tensor):
        return None
    if isinstance(obj, HParamsStandIn):
        return [*obj.__dict__.keys(), *obj.__dict__.values()]
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple)):
        return list(obj)
    return None


def check_structure(obj: Any) -> None:
    """Raise :class:`StructureError` unless ``obj`` is a bounded tree (see :data:`MAX_NODES`,
    :data:`MAX_DEPTH`): work linear in its distinct containers, before anything expands it."""
    problem = tree_problem(obj, _children, max_nodes=MAX_NODES, max_depth=MAX_DEPTH)
    if problem is not None:
        raise StructureError(problem)


def to_plain(obj: Any, _memo: dict[int, Any] | None = None) -> Any:
    """Convert stand-ins to plain Python: HParams -> dict (recursively). Tensors pass through.

    A container shared by several places is converted once and stays shared in the result (as
    the pickle memo had it). Call :func:`check_structure` first for input that may be cyclic or deep."""
    if isinstance(obj, torch.Tensor) or not isinstance(obj, (HParamsStandIn, dict, list, tuple)):
        return obj
    memo: dict[int, Any] = {} if _memo is None else _memo
    if id(obj) in memo:
        return memo[id(obj)]
    sub = lambda v: to_plain(v, memo)  # noqa: E731
    if isinstance(obj, HParamsStandIn):
        out: Any = {k: sub(v) for k, v in obj.__dict__.items()}
    elif isinstance(obj, OrderedDict):
        out = OrderedDict((k, sub(v)) for k, v in obj.items())
    elif isinstance(obj, dict):
        out = {k: sub(v) for k, v in obj.items()}
    elif isinstance(obj, list):
        out = [sub(v) for v in obj]
    else:
        out = tuple(sub(v) for v in obj)
    memo[id(obj)] = out
    return out


# long: the ordered refusals of a hostile file before anything is unpickled, kept in one place to audit
def safe_load(path: str | Path) -> Loaded:
    """Load a GPT-SoVITS file with weights-only semantics. Raises :class:`GsvError` on bad input.

    Plain zips are memory-mapped (tensors are not copied into RAM until used); tagged files are
    read through a header-patching stream, so at most one copy of the tensors exists.
    """
    path = Path(path)
    check_path(path)
    head = read_header(path)
    if len(head) < 4:
        raise _zip_error(path, f"the file is only {len(head)} bytes long")
    if head[2:4] != ZIP_MAGIC[2:4]:
        if head[:1] in (b"\x80",):
            raise GsvError(
                "legacy (pre-zip) torch pickle format is not supported",
                path=path,
                fix="re-save it with a current torch (torch.save) or re-export from GPT-SoVITS",
            )
        raise _zip_error(path, "the file does not start like a zip archive")
    tag = head[:2].decode("latin-1")
    tagged = head[:2] != b"PK"
    if tagged and not (tag.isascii() and tag.isdigit()):
        raise _zip_error(path, f"unknown header bytes {head[:2].hex()}")

    with open(path, "rb") as raw:
        stream: BinaryIO = _TagPatchedFile(raw) if tagged else raw  # type: ignore[assignment]
        try:
            with zipfile.ZipFile(stream) as zf:
                _check_entries(zf, path)
                pkl_name = _find_data_pkl(zf, path)
                with zf.open(pkl_name) as f:
                    pickle_bytes = f.read(MAX_PICKLE_BYTES + 1)
                if len(pickle_bytes) > MAX_PICKLE_BYTES:
                    raise _zip_error(path, f"its data.pkl is larger than {MAX_PICKLE_BYTES >> 20} MiB")
        except zipfile.BadZipFile:
            raise _zip_error(path, "the zip archive is truncated or corrupt") from None
        except (OSError, EOFError, ValueError, KeyError):
            raise _zip_error(path, "the zip archive is truncated or corrupt") from None
        try:
            globals_ = scan_globals(pickle_bytes)
        except PickleTooCostly as e:
            raise GsvError(
                f"refusing to load: {e}",
                path=path,
                fix="do not use this file; re-export it or get it from a source you trust",
            ) from None
        except Exception:
            raise _zip_error(path, "its pickle (data.pkl) is malformed") from None
        refused = _refused(globals_, stream)
        if refused:
            raise GsvError(
                f"refusing to load: its pickle references {', '.join(refused)}, which could run code "
                "(GPT-SoVITS files only hold tensors, dicts, HParams and paths)",
                path=path,
                fix="do not use this file; get the weights from a source you trust",
            )
        allow = [(HParamsStandIn, g) for g in globals_ if is_hparams_name(g)]
        allow += [(_windows_path if "Windows" in g else _posix_path, g) for g in globals_ if is_path_name(g)]
        stream.seek(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with torch.serialization.safe_globals(allow):
                    if tagged:
                        obj = torch.load(stream, map_location="cpu", weights_only=True)
                    else:
                        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except GsvError:
            raise
        except Exception as e:  # torch raises many types for corrupt data; keep the line short
            first = first_line(e, limit=10**6)
            if "Unsupported global" in first or "unsupported GLOBAL" in first:
                raise GsvError(
                    f"refusing to load: {first[:160]}",
                    path=path,
                    fix="do not use this file; get the weights from a source you trust",
                ) from None
            raise _zip_error(path, f"torch could not read it ({type(e).__name__}: {first[:120]})") from None

    try:
        check_structure(obj)
    except StructureError as e:
        raise GsvError(
            f"refusing to load: {e} (GPT-SoVITS files hold shallow dicts of tensors)",
            path=path,
            fix="do not use this file; re-export it or get it from a source you trust",
        ) from None
    plain = to_plain(obj)
    config_type = None
    if isinstance(obj, dict) and isinstance(obj.get("config"), HParamsStandIn):
        config_type = next((g for g in globals_ if is_hparams_name(g)), "utils.HParams")
    elif isinstance(obj, dict) and isinstance(obj.get("config"), dict):
        config_type = "dict"
    return Loaded(obj=plain, header=tag, pickle_globals=globals_, config_type=config_type)
