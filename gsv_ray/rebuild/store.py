"""Content-addressed rebuild results on disk, shared by every worker and trial.

A result directory holds ``<target>.safetensors`` (fp32, mmap-friendly), ``config.json`` and
``report.json``. Its name is a hash of the inputs' sha256 and the options, so the same inputs
always land in the same place and a second call reuses it without unpickling any input. Input
hashes are remembered by (path, size, mtime, inode), so an unchanged file is not even re-hashed.
Directories appear atomically (built under a temp name, then renamed): never half-written.

Every entry ends with ``manifest.json`` (each file's size and CRC-32, written last). A hit is used only
when the entry verifies against it; a damaged entry (a flipped block, a truncated or deleted file,
unreadable JSON) is reported in one line and rebuilt. CRC-32 guards against corruption, not
tampering: nothing in an entry can run code anyway (safetensors and JSON). What the cache trusts
about the *inputs* is their identity (path, size, mtime, inode); ``verify_inputs=True`` re-hashes them.
Losing the rename race to an identical concurrent writer is success: the winner's entry is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from gsv_ray import __version__
from gsv_ray.atomic import atomic_dir, lost_race, remove_dir, rust_os_error
from gsv_ray.cache import cache_root as usable_cache_root
from gsv_ray.errors import GsvError, check_output_path
from gsv_ray.io import sha256_file
from gsv_ray.io.safeload import check_path
from gsv_ray.manifest import MANIFEST
from gsv_ray.manifest import entry as manifest_entry
from gsv_ray.manifest import problem as manifest_problem
from gsv_ray.owned import OWNER, sweep
from gsv_ray.rebuild.core import RebuildSpec, Rebuilt, rebuild
from gsv_ray.rebuild.report import RebuildReport

#: Bump when the on-disk layout or the rebuild's semantics change: old entries then miss.
STORE_FORMAT = 3  # 3: inputs holding NaN/inf are refused (a format-2 entry may hold them)
_COMPLETE = MANIFEST  # written last inside the temp dir; a dir without it is never used
_log = logging.getLogger(__name__)


def _write_manifest(directory: Path) -> None:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name not in (_COMPLETE, OWNER))
    manifest = {
        "format": STORE_FORMAT,
        "files": {p.name: manifest_entry(p, "crc32", with_identity=True) for p in files},
    }
    (directory / _COMPLETE).write_text(json.dumps(manifest))


def entry_problem(directory: Path, *, full: bool = False) -> str | None:
    """Why a stored entry cannot be used (None when every file matches its manifest).

    Sizes are always checked. Checksums are checked for every file whose identity (mtime, inode)
    differs from when it was written — any write, truncation or replacement changes it — or for
    all files with ``full``. (A full check of a full-size v2 entry costs ~0.2 s; see
    ``benchmarks/bench_rebuild.py``.)"""
    return manifest_problem(directory, checksum="crc32", needed=("config.json", "report.json"), trust_identity=not full)


def file_sha256(path: str | Path, cache_root: Path, *, trust_index: bool = True) -> str:
    """sha256 of a file, remembered by (realpath, size, mtime_ns, inode) in the cache root
    (``trust_index=False`` re-hashes the file and refreshes what is remembered)."""
    p = Path(path)
    st = p.stat()
    key = f"{os.path.realpath(p)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    index_path = cache_root / "sha256-index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if not isinstance(index, dict) or not all(isinstance(v, str) for v in index.values()):
        index = {}  # malformed: start over
    if trust_index and key in index:
        return index[key]
    digest = sha256_file(p)
    index[key] = digest
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = index_path.with_name(f".{index_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(index))
    os.replace(tmp, index_path)
    return digest


def cache_key(inputs: dict[str, str | None], options: dict[str, Any]) -> str:
    blob = json.dumps(
        {"format": STORE_FORMAT, "gsv_ray": __version__, "inputs": inputs, "options": options}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _sweep_old_entries(final: Path) -> None:
    """In the cache, also the temp entries of versions before the lock file, once stale (a killed
    rebuild left a 173 MB ``.<key>.*`` dir that nothing ever removed); :func:`atomic_dir` sweeps the rest."""
    if _is_key(final.name):
        sweep(final.parent, _is_temp_entry, unlocked_after=3600.0)


def _is_key(name: str) -> bool:
    """A rebuild entry's name (:func:`cache_key`: 24 hex digits)."""
    return len(name) == 24 and all(c in "0123456789abcdef" for c in name)


def _is_temp_entry(name: str) -> bool:
    """A rebuild entry's temp dir: ``.<key>.<random>``."""
    parts = name.split(".")
    return len(parts) == 3 and parts[0] == "" and _is_key(parts[1])


def write_result(result: Rebuilt, directory: Path) -> Path:
    """Write a result into a new ``directory`` atomically (fails if it exists)."""
    directory = Path(directory)
    if directory.exists():
        raise GsvError("output directory already exists", path=directory, fix="choose a new -o directory or remove it")
    _sweep_old_entries(directory)
    try:
        with atomic_dir(directory) as tmp:
            for name, sd in result.weights.items():
                try:
                    save_file(sd, str(tmp / f"{name}.safetensors"), metadata={"gsv_ray": __version__, "target": name})
                except Exception as e:  # a full disk is a SafetensorError: give it back its errno
                    err = rust_os_error(e, directory.parent)
                    if err is None:
                        raise
                    raise err from e
                (tmp / f"{name}.safetensors").chmod(0o644)
            (tmp / "config.json").write_text(json.dumps(result.config, indent=1))
            (tmp / "report.json").write_text(json.dumps(result.report.to_json(), indent=1))
            _write_manifest(tmp)
    except OSError as e:  # a concurrent identical writer renamed first: theirs is as good
        if not lost_race(e) or entry_problem(directory) is not None:
            raise
    return directory


def load_result(directory: str | Path, *, cache_hit: bool = False) -> Rebuilt:
    """Load a stored result. Tensors come from safetensors (the inputs are never opened)."""
    directory = Path(directory)
    why = entry_problem(directory)
    if why is not None:
        raise GsvError(f"not a usable rebuild result: {why}", path=directory, fix="run 'gsv-ray rebuild' again")
    report_json = json.loads((directory / "report.json").read_text())
    config = json.loads((directory / "config.json").read_text())
    weights = {p.stem: load_file(str(p)) for p in sorted(directory.glob("*.safetensors"))}
    report = RebuildReport.from_json(report_json)
    version = config.get("version")
    return Rebuilt(
        stage=config["stage"],
        version=version if version and "/" not in version else None,
        task=config["task"],
        kind=report.inputs["init"]["kind"],
        weights=weights,
        config=config,
        report=report,
        path=directory,
        cache_hit=cache_hit,
    )


def rebuild_cached(
    spec: RebuildSpec | str | Path,
    *,
    cache_root: str | Path | None = None,
    verify_inputs: bool = False,
    **options: Any,
) -> Rebuilt:
    """``rebuild`` once per distinct :class:`RebuildSpec` (inputs by content, options by value): the
    result lives under ``cache_root/rebuild/<key>``. A stored entry is verified before use and
    rebuilt when damaged. ``verify_inputs``: re-hash the inputs instead of trusting their remembered
    identity (path, size, mtime, inode), and checksum every file of the entry. ``spec`` may be the
    init path with the spec's other fields as keywords."""
    spec = RebuildSpec.of(spec, **options)
    root = usable_cache_root(cache_root)
    for p in spec.inputs().values():
        if p is not None:
            check_path(Path(p))  # missing / directory / empty: the precise one-line error before hashing
    inputs = {
        role: (file_sha256(p, root, trust_index=not verify_inputs) if p is not None else None)
        for role, p in spec.inputs().items()
    }
    directory = root / "rebuild" / cache_key(inputs, spec.options_json())
    if directory.exists():
        why = entry_problem(directory, full=verify_inputs)
        if why is None:
            hit = load_result(directory, cache_hit=True)
            for role, p in spec.inputs().items():  # the entry holds the paths of the run that filled it
                if p is not None and role in hit.report.inputs:
                    hit.report.inputs[role]["path"] = str(Path(p))
            return hit
        _log.warning("cache entry %s is damaged (%s): rebuilding it", directory, why)
        remove_dir(directory)
    result = rebuild(spec, cache_root=root)
    for role, sha in inputs.items():
        if sha is not None:
            result.report.inputs[role]["sha256"] = sha
    try:
        write_result(result, directory)
    except GsvError:
        if entry_problem(directory) is not None:  # lost a race to an identical writer: theirs is as good
            raise
    result.path = directory
    return result


def _clone(src: Path, dst: Path) -> None:
    """A copy that shares no inode with the cache (damage to one is not damage to the other): a
    reflink where the filesystem has them (btrfs, XFS: instant, no extra space), else a plain copy."""
    with open(src, "rb") as fs, open(dst, "wb") as fd:
        try:
            import fcntl

            fcntl.ioctl(fd.fileno(), 0x40049409, fs.fileno())  # FICLONE
            return
        except (ImportError, OSError):
            pass
    shutil.copyfile(src, dst)  # in-kernel copy (sendfile) on Linux


def export_result(result: Rebuilt, out_dir: str | Path) -> Path:
    """Materialise a stored result at ``out_dir`` as copies (reflinks where possible), atomically."""
    out = Path(out_dir)
    check_output_path(out)
    if out.exists():
        if (
            (out / _COMPLETE).is_file()
            and result.path is not None
            and (out / _COMPLETE).read_bytes() == (result.path / _COMPLETE).read_bytes()
            and entry_problem(out) is None
        ):
            return out  # the same result is already there
        raise GsvError("output directory already exists", path=out, fix="choose a new -o directory or remove it")
    if result.path is None:
        return write_result(result, out)
    with atomic_dir(out) as tmp:
        for f in sorted(result.path.iterdir(), key=lambda p: p.name == _COMPLETE):  # manifest last
            _clone(f, tmp / f.name)
    return out
