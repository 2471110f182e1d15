"""Reading a Hugging Face model folder's weights safely (the one home of it for HuBERT and BERT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gsv_ray.errors import GsvError

__all__ = ["WEIGHT_FILES", "read_state_dict"]

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
