"""Write files GPT-SoVITS itself loads, byte-format faithful, atomically.

SoVITS export: ``OrderedDict(weight=<fp16 dict without enc_q>, config=<utils.HParams>, info=...)``
(+ ``lora_rank``), with the 2-byte version tag for v2Pro "05", v2ProPlus "06", v3-LoRA "03",
v4-LoRA "04". GPT export: ``OrderedDict(weight=<fp16 OrderedDict, "model." keys>, config=<dict>,
info="GPT-e<N>")``, a plain zip. Every write goes to a temp file in the target folder, is fsynced
and renamed into place, and refuses to replace an existing file unless told to (never an input).

v1 and v2 exports are untagged "PK" zips, so GPT-SoVITS tells them apart by FILE SIZE
(tests/reference/gpt_sovits/FORMATS.md 2.3, 2.4): ``get_sovits_version_from_path_fast`` says v1 below
82978 KiB and v2 below 700 MiB;
``3-get-semantic.py`` says v1 below 82978 KiB, v2 below 100 MiB, v1 again below 103520 KiB, v2
below 700 MiB. A full-size v2 export lands only ~21 KB above the v1 line, so v2 exports get one
extra top-level entry after weight/config/info, :data:`PAD_KEY` (a float16 tensor of zeros), sized
so the file clears the line by :data:`SIZE_MARGIN`. Every loader reads only weight/config/info
and ignores it; on filesystems with sparse files the zeros are a hole and take no disk space.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from gsv_ray.atomic import atomic_write
from gsv_ray.errors import GsvError
from gsv_ray.resources import VITS_VERSIONS

#: Version tags written by upstream's ``my_save2`` (tests/reference/gpt_sovits/FORMATS.md section 2.1).
EXPORT_TAGS = {"v2Pro": b"05", "v2ProPlus": b"06"}
LORA_EXPORT_TAGS = {"v3": b"03", "v4": b"04"}

#: Upstream's size rules for untagged SoVITS files (tests/reference/gpt_sovits/FORMATS.md 2.3, 2.4), in bytes.
V1_SIZE_LINE = 82978 * 1024  # below: "v1" for both get_sovits_version_from_path_fast and 3-get-semantic
SEMANTIC_V1_WINDOW = (100 * 1024 * 1024, 103520 * 1024)  # 3-get-semantic's second "v1" range [lo, hi)
V3_SIZE_LINE = 700 * 1024 * 1024  # at or above: "v3" for both
#: How far a padded v2 export clears a size line.
SIZE_MARGIN = 1024 * 1024
#: Top-level key of the zero padding in v2 exports (after weight/config/info; no loader reads it).
#: It is float16 like the weights, so the pickle references no global an export lacks otherwise.
PAD_KEY = "gsv_ray_pad"
# Pad sizes (bytes) are whole multiples of this (any power-of-two storage alignment up to 4 KiB
# divides it), and at least _PAD_MIN (so the pickle encodes the element count with the same 4-byte
# opcode): then the file grows by exactly the pad's growth, and one probe predicts the final size.
_PAD_STEP = 4096
_PAD_MIN = 1 << 17


class HParams:
    """What we pickle as upstream's ``utils.HParams``: an attribute bag whose ``__dict__`` is the
    config section (nested sections are HParams too), exactly as upstream's class stores it."""

    def __init__(self, mapping: Mapping[str, Any]):
        for k, v in mapping.items():
            self.__dict__[k] = HParams(v) if isinstance(v, Mapping) else v


class _UpstreamPickler(pickle._Pickler):  # pure-Python pickler: lets us name the class's global
    """Pickles :class:`HParams` under the global ``utils.HParams`` (what GPT-SoVITS's trainers
    write, since they ``import utils``); everything else as usual."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is HParams:
            self.write(pickle.GLOBAL + b"utils\nHParams\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


class _UpstreamPickleModule:
    """The ``pickle_module`` torch.save needs: only ``Pickler`` is used when saving."""

    Pickler = _UpstreamPickler
    Unpickler = pickle.Unpickler
    __name__ = "gsv_ray_upstream_pickle"


def _torch_save(obj: Any, tag: bytes | None = None, pickle_module: Any = pickle) -> Callable[[BinaryIO], None]:
    def write(f: BinaryIO) -> None:
        torch.save(obj, f, pickle_module=pickle_module, pickle_protocol=2)
        if tag is not None:  # upstream my_save2: overwrite the zip magic's first two bytes
            f.seek(0)
            f.write(tag)
            f.seek(0, os.SEEK_END)

    return write


class _CountingSink:
    """A write-only stream that keeps nothing but the byte count (to learn a serialised size)."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, b: Any) -> int:
        n = memoryview(b).nbytes
        self.size += n
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:  # torch skips metadata-only records
        self.size = offset if whence == os.SEEK_SET else self.size + offset
        return self.size

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass


def serialised_size(obj: Any, pickle_module: Any = pickle) -> int:
    """Bytes ``torch.save`` writes for ``obj`` into a file object (what the writers produce)."""
    sink = _CountingSink()
    torch.save(obj, sink, pickle_module=pickle_module, pickle_protocol=2)  # type: ignore[arg-type]
    return sink.size


class _SparseZeroWriter:
    """Wraps a fresh, empty file for ``torch.save``: a long all-zero write becomes a seek, leaving
    a hole (sparse file) where the filesystem supports it, plain zeros otherwise. Call
    :meth:`finish` afterwards so a trailing skipped range still counts in the file size."""

    MIN_HOLE = 1 << 16

    def __init__(self, f: BinaryIO):
        self._f = f
        try:
            self._sparse = f.tell() == 0 and os.fstat(f.fileno()).st_size == 0
        except (AttributeError, OSError, ValueError):
            self._sparse = False

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        n = view.nbytes
        if self._sparse and n >= self.MIN_HOLE and not np.frombuffer(view, dtype=np.uint8).any():
            self._f.seek(n, os.SEEK_CUR)  # we only ever append to a fresh file: skipped bytes read as 0
        else:
            self._f.write(view)
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def flush(self) -> None:
        self._f.flush()

    def finish(self) -> int:
        end = self._f.tell()
        self._f.truncate(end)  # extends the file when the last thing written was a hole
        return end


def v2_padded_size(natural: int) -> int | None:
    """The size an untagged v2 export of ``natural`` bytes is padded to, or None if it needs none.

    Below 100 MiB it must clear the v1 line by the margin (V1_SIZE_LINE + margin is far below
    100 MiB, so padding never pushes a file into 3-get-semantic's [100 MiB, 103520 KiB) "v1"
    window); inside that window (plus margin) it is padded past the window's top. A file of
    700 MiB or more is called "v3" by upstream whatever we do; padding cannot help there.
    """
    lo, hi = SEMANTIC_V1_WINDOW
    if natural < lo:
        return V1_SIZE_LINE + SIZE_MARGIN if natural < V1_SIZE_LINE + SIZE_MARGIN else None
    if natural < hi + SIZE_MARGIN:
        return hi + SIZE_MARGIN
    return None


def _ceil_step(n: int) -> int:
    return -(-n // _PAD_STEP) * _PAD_STEP


def _with_pad(obj: Mapping[str, Any], nbytes: int) -> OrderedDict[str, Any]:
    out: OrderedDict[str, Any] = OrderedDict(obj)
    out[PAD_KEY] = torch.zeros(nbytes // 2, dtype=torch.float16)
    return out


def _padded_torch_save(obj: Mapping[str, Any], pickle_module: Any) -> Callable[[BinaryIO], None]:
    """``torch.save`` of an untagged v2 export, padded (see :func:`v2_padded_size`) when needed."""

    def write(f: BinaryIO) -> None:
        target = v2_padded_size(serialised_size(obj, pickle_module))
        if target is None:
            torch.save(obj, f, pickle_module=pickle_module, pickle_protocol=2)
            return
        probe = serialised_size(_with_pad(obj, _PAD_MIN), pickle_module)
        pad = _PAD_MIN + max(0, _ceil_step(target - probe))
        for _ in range(2):  # the probe is exact; the second round is only a safety net
            f.seek(0)
            f.truncate(0)
            out = _SparseZeroWriter(f)
            padded = _with_pad(obj, pad)
            torch.save(padded, out, pickle_module=pickle_module, pickle_protocol=2)  # type: ignore[arg-type]
            size = out.finish()
            if size >= target:
                return
            pad += _ceil_step(target - size)
        raise GsvError(
            f"could not pad the v2 export to {target} bytes (got {size})", fix="report this as a gsv-ray bug"
        )

    return write


def _fp16(sd: Mapping[str, torch.Tensor], drop: Callable[[str], bool] = lambda k: False) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", torch.float16).contiguous().clone() for k, v in sd.items() if not drop(k)}


def sovits_export_tag(version: str, lora: bool) -> bytes | None:
    if lora:
        if version not in LORA_EXPORT_TAGS:
            raise GsvError(f"LoRA exports exist only for v3/v4, not {version}")
        return LORA_EXPORT_TAGS[version]
    if version in ("v3", "v4"):
        raise GsvError(
            f"a full (non-LoRA) {version} export cannot be expressed in a form GPT-SoVITS reads as {version}",
            fix="export v3/v4 as LoRA",
        )
    if version not in VITS_VERSIONS:
        raise GsvError(f"unknown SoVITS version {version!r}")
    return EXPORT_TAGS.get(version)


def write_sovits_export(
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    config: Mapping[str, Any],
    info: str,
    version: str,
    lora_rank: int | None = None,
    overwrite: bool = False,
    protect: Iterable[str | Path] = (),
) -> Path:
    """Write a SoVITS export as upstream's ``savee`` does: fp16, no ``enc_q``, HParams config.

    A v2 export additionally carries the zero padding :data:`PAD_KEY` when it would otherwise be
    small enough for GPT-SoVITS's size rules to call it v1 (see the module docstring).
    """
    tag = sovits_export_tag(version, lora_rank is not None)
    obj: OrderedDict[str, Any] = OrderedDict()
    obj["weight"] = _fp16(state_dict, drop=lambda k: "enc_q" in k)
    obj["config"] = HParams(config)
    obj["info"] = info
    if lora_rank is not None:
        obj["lora_rank"] = int(lora_rank)
    if version == "v2" and tag is None and lora_rank is None:  # untagged: upstream decides by size
        write = _padded_torch_save(obj, _UpstreamPickleModule)
    else:
        write = _torch_save(obj, tag, _UpstreamPickleModule)
    return atomic_write(path, write, overwrite=overwrite, protect=protect)


def write_gpt_export(
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    config: Mapping[str, Any],
    info: str,
    overwrite: bool = False,
    protect: Iterable[str | Path] = (),
) -> Path:
    """Write a GPT export as upstream's ``s1_train.py`` does: fp16 ``model.`` keys, dict config.

    GPT-SoVITS loads the weights strictly and reads ``config["data"]["max_sec"]``, so both are checked.
    """
    model_cfg, data_cfg = config.get("model"), config.get("data")
    if not isinstance(model_cfg, Mapping) or not isinstance(data_cfg, Mapping) or "max_sec" not in data_cfg:
        raise GsvError("a GPT export's config needs a 'model' section and data.max_sec (GPT-SoVITS reads both)")
    weight = OrderedDict((k if k.startswith("model.") else f"model.{k}", v) for k, v in _fp16(state_dict).items())
    obj: OrderedDict[str, Any] = OrderedDict(weight=weight, config=_plain(config), info=info)
    return atomic_write(path, _torch_save(obj), overwrite=overwrite, protect=protect)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
