"""Reading a Hugging Face model folder (config and weights) safely: the one home of it for HuBERT and BERT."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import torch

from gsv_ray.errors import GsvError

__all__ = ["WEIGHT_FILES", "load_strict", "read_config", "read_state_dict", "refuse_variants"]

C = TypeVar("C")
M = TypeVar("M", bound=torch.nn.Module)

#: the weight files a Hugging Face folder may hold, in the order transformers prefers them
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_state_dict(folder: Path, *, what: str, fix: str) -> dict[str, torch.Tensor]:
    """The tensors of ``folder``'s ``model.safetensors`` (or else ``pytorch_model.bin``, read with
    ``torch.load(weights_only=True)``: no pickled code runs). A missing, corrupt or foreign file raises a
    :class:`GsvError` naming it; ``what`` names the model in that line and ``fix`` says where to get it."""
    path = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if path is None:
        raise GsvError(f"no {what} weights ({' or '.join(WEIGHT_FILES)})", path=folder, fix=fix)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file: name it, whatever the reader raised
        raise GsvError(
            f"cannot read {what} weights ({type(e).__name__}: {str(e)[:120]})",
            path=path,
            fix="re-download the model folder",
        ) from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise GsvError("not a state_dict of tensors", path=path, fix=f"give a Hugging Face {what} folder")
    return sd


def read_config(path: Path, cls: type[C], *, what: str, fix: str) -> tuple[C, dict[str, Any]]:
    """``config.json`` as the dataclass ``cls`` (the fields the file has; JSON lists as tuples) and as the raw
    dict; an unreadable or ill-typed file raises a :class:`GsvError` naming it."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        kw = {
            f.name: tuple(raw[f.name]) if isinstance(raw[f.name], list) else raw[f.name]
            for f in fields(cls)
            if f.name in raw
        }
        return cls(**kw), raw
    except (OSError, ValueError, TypeError) as e:
        raise GsvError(f"cannot read the {what} config ({e})", path=path, fix=fix) from e


def refuse_variants(
    checks: Iterable[tuple[str, Any, Any]], *, what: str, path: Path, fix: str, more: Iterable[str] = ()
) -> None:
    """Raise a :class:`GsvError` listing every ``(name, value, required)`` whose value differs (and the
    ``more`` reasons): a variant this implementation does not compute."""
    bad = [f"{k}={v!r}" for k, v, ok in checks if v != ok] + list(more)
    if bad:
        raise GsvError(f"unsupported {what} variant ({', '.join(bad)})", path=path, fix=fix)


def load_strict(model: M, sd: dict[str, torch.Tensor], *, what: str, folder: Path) -> M:
    """``sd`` into ``model`` strictly, in float32; the model in eval mode. Weights that do not fit the
    config raise a :class:`GsvError` naming ``folder``."""
    try:
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    except RuntimeError as e:
        raise GsvError(
            f"weights do not fit the {what} config ({str(e).splitlines()[0]})",
            path=folder,
            fix="use the config.json that came with these weights",
        ) from e
    return model.eval()
