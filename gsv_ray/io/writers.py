"""Write files GPT-SoVITS itself loads, byte-format faithful, atomically.

SoVITS export: ``OrderedDict(weight=<fp16 dict without enc_q>, config=<utils.HParams>, info=...)``
(+ ``lora_rank``), with the 2-byte version tag for v2Pro "05", v2ProPlus "06", v3-LoRA "03",
v4-LoRA "04". GPT export: ``OrderedDict(weight=<fp16 OrderedDict, "model." keys>, config=<dict>,
info="GPT-e<N>")``, a plain zip. Every write goes to a temp file in the target folder, is fsynced
and renamed into place, and refuses to replace an existing file unless told to (never an input).
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

from gsv_ray.errors import GsvError

#: Version tags written by upstream's ``my_save2`` (FORMATS section 2.1).
EXPORT_TAGS = {"v2Pro": b"05", "v2ProPlus": b"06"}
LORA_EXPORT_TAGS = {"v3": b"03", "v4": b"04"}


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


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


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
    if path.exists() and not overwrite:
        raise GsvError("already exists; not overwriting", path=path, fix="choose another output path or remove it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w+b") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _torch_save(obj: Any, tag: bytes | None = None, pickle_module: Any = pickle) -> Callable[[BinaryIO], None]:
    def write(f: BinaryIO) -> None:
        torch.save(obj, f, pickle_module=pickle_module, pickle_protocol=2)
        if tag is not None:  # upstream my_save2: overwrite the zip magic's first two bytes
            f.seek(0)
            f.write(tag)
            f.seek(0, os.SEEK_END)

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
    if version not in ("v1", "v2", "v2Pro", "v2ProPlus"):
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
    """Write a SoVITS export as upstream's ``savee`` does: fp16, no ``enc_q``, HParams config."""
    tag = sovits_export_tag(version, lora_rank is not None)
    obj: OrderedDict[str, Any] = OrderedDict()
    obj["weight"] = _fp16(state_dict, drop=lambda k: "enc_q" in k)
    obj["config"] = HParams(config)
    obj["info"] = info
    if lora_rank is not None:
        obj["lora_rank"] = int(lora_rank)
    return atomic_write(path, _torch_save(obj, tag, _UpstreamPickleModule), overwrite=overwrite, protect=protect)


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
    weight = OrderedDict(
        (k if k.startswith("model.") else f"model.{k}", v) for k, v in _fp16(state_dict).items()
    )
    obj: OrderedDict[str, Any] = OrderedDict(weight=weight, config=_plain(config), info=info)
    return atomic_write(path, _torch_save(obj), overwrite=overwrite, protect=protect)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
