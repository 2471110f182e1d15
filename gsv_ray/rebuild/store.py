"""Content-addressed rebuild results on disk, shared by every worker and trial.

A result directory holds ``<target>.safetensors`` (fp32, mmap-friendly), ``config.json`` and
``report.json``. Its name is a hash of the inputs' sha256 and the options, so the same inputs
always land in the same place and a second call reuses it without unpickling any input. Input
hashes are remembered by (path, size, mtime, inode), so an unchanged file is not even re-hashed.
Directories appear atomically (built under a temp name, then renamed): never half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from gsv_ray import __version__
from gsv_ray.cache import default_cache_root
from gsv_ray.errors import GsvError
from gsv_ray.io import sha256_file
from gsv_ray.io.safeload import check_path
from gsv_ray.rebuild.core import RebuildPolicy, Rebuilt, rebuild
from gsv_ray.rebuild.report import RebuildReport

#: Bump when the on-disk layout or the rebuild's semantics change: old entries then miss.
STORE_FORMAT = 1
_COMPLETE = "report.json"  # written last inside the temp dir; a dir without it is never used


def file_sha256(path: str | Path, cache_root: Path) -> str:
    """sha256 of a file, remembered by (realpath, size, mtime_ns, inode) in the cache root."""
    p = Path(path)
    st = p.stat()
    key = f"{os.path.realpath(p)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    index_path = cache_root / "sha256-index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if key in index:
        return index[key]
    digest = sha256_file(p)
    index[key] = digest
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = index_path.with_name(f".{index_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(index))
    os.replace(tmp, index_path)
    return digest


def cache_key(inputs: dict[str, str | None], options: dict[str, Any]) -> str:
    blob = json.dumps({"format": STORE_FORMAT, "gsv_ray": __version__, "inputs": inputs, "options": options},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _new_temp_dir(final: Path) -> Path:
    """A temp dir beside ``final`` (same filesystem, so the rename is atomic), world-readable like a
    normal directory (mkdtemp makes it private)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp.chmod(0o755)
    return tmp


def write_result(result: Rebuilt, directory: Path) -> Path:
    """Write a result into a new ``directory`` atomically (fails if it exists)."""
    directory = Path(directory)
    if directory.exists():
        raise GsvError("output directory already exists", path=directory, fix="choose a new -o directory or remove it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_dir(directory)
    try:
        for name, sd in result.weights.items():
            save_file(sd, str(tmp / f"{name}.safetensors"), metadata={"gsv_ray": __version__, "target": name})
            (tmp / f"{name}.safetensors").chmod(0o644)
        (tmp / "config.json").write_text(json.dumps(result.config, indent=1))
        (tmp / _COMPLETE).write_text(json.dumps(result.report.to_json(), indent=1))
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_result(directory: str | Path, *, cache_hit: bool = False) -> Rebuilt:
    """Load a stored result. Tensors come from safetensors (the inputs are never opened)."""
    directory = Path(directory)
    if not (directory / _COMPLETE).is_file():
        raise GsvError("not a complete rebuild result (no report.json)", path=directory,
                       fix="run 'gsv-ray rebuild' again")
    report_json = json.loads((directory / _COMPLETE).read_text())
    config = json.loads((directory / "config.json").read_text())
    weights = {p.stem: load_file(str(p)) for p in sorted(directory.glob("*.safetensors"))}
    report = RebuildReport.from_json(report_json)
    version = config.get("version")
    return Rebuilt(stage=config["stage"], version=version if version and "/" not in version else None,
                   task=config["task"], kind=report.inputs["init"]["kind"], weights=weights, config=config,
                   report=report, path=directory, cache_hit=cache_hit)


def rebuild_cached(
    init: str | Path,
    *,
    base_g: str | Path | None = None,
    base_d: str | Path | None = None,
    stage: str | None = None,
    version: str | None = None,
    task: str = "train",
    policy: RebuildPolicy = RebuildPolicy(),
    config: dict[str, Any] | None = None,
    cache_root: str | Path | None = None,
) -> Rebuilt:
    """``rebuild`` once per distinct input: the result lives under ``cache_root/rebuild/<key>``."""
    root = Path(cache_root) if cache_root else default_cache_root()
    for p in (init, base_g, base_d):
        if p is not None:
            check_path(Path(p))  # missing / directory / empty: the precise one-line error before hashing
    inputs = {role: (file_sha256(p, root) if p is not None else None)
              for role, p in (("init", init), ("base_g", base_g), ("base_d", base_d))}
    options = {"stage": stage, "version": version, "task": task, "policy": policy.to_json(), "config": config}
    directory = root / "rebuild" / cache_key(inputs, options)
    if (directory / _COMPLETE).is_file():
        return load_result(directory, cache_hit=True)
    result = rebuild(init, base_g=base_g, base_d=base_d, stage=stage, version=version, task=task, policy=policy,
                     config=config, cache_root=root)
    for role, sha in inputs.items():
        if sha is not None:
            result.report.inputs[role]["sha256"] = sha
    try:
        write_result(result, directory)
    except GsvError:
        if not (directory / _COMPLETE).is_file():  # lost a race to an identical writer: theirs is as good
            raise
    result.path = directory
    return result


def export_result(result: Rebuilt, out_dir: str | Path) -> Path:
    """Materialise a stored result at ``out_dir`` (hard links where possible, else copies), atomically."""
    out = Path(out_dir)
    if out.exists():
        if (out / _COMPLETE).is_file() and result.path is not None and \
                (out / _COMPLETE).read_bytes() == (result.path / _COMPLETE).read_bytes():
            return out  # the same result is already there
        raise GsvError("output directory already exists", path=out, fix="choose a new -o directory or remove it")
    if result.path is None:
        return write_result(result, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_dir(out)
    try:
        for f in sorted(result.path.iterdir(), key=lambda p: p.name == _COMPLETE):  # report last
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
