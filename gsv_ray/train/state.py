"""Training state on disk, written and read back by us: nothing read back can run code.

Accelerate's ``load_state`` unpickles ``custom_checkpoint_*.pkl`` and ``random_states_*.pkl`` with
``weights_only=False``: a crafted pickle placed in a checkpoint folder (a shared ``--storage``, say)
ran code on ``--resume``. So a checkpoint folder holds only data formats:

* ``model.safetensors``, ``model_1.safetensors``, ...: the models' state dicts (unwrapped);
* ``optimizer.pt``, ``optimizer_1.pt``, ...: optimizer state dicts (tensors and plain values), read
  back with ``torch.load(weights_only=True)``;
* ``state.json``: the position in training, the LR schedulers, the loss scaler;
* ``rng_<rank>.json``: each process's Python, NumPy, torch CPU and CUDA RNG states;
* ``manifest.json``, written last: every file's size and sha256. A checkpoint is used only when it
  verifies against its manifest (a truncated, emptied or missing file is caught before loading).
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from gsv_ray.atomic import atomic_write, write_json
from gsv_ray.manifest import MANIFEST
from gsv_ray.manifest import entry as manifest_entry
from gsv_ray.manifest import problem as manifest_problem

FORMAT = 1
STATE = "state.json"


def _name(stem: str, i: int, ext: str) -> str:
    return f"{stem}{'' if i == 0 else f'_{i}'}.{ext}"


# -- RNG states as JSON ------------------------------------------------------------------------
def _tensor_b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _b64_tensor(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def rng_states() -> dict[str, Any]:
    py = random.getstate()
    npy = np.random.get_state()
    out = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npy[0], npy[1].tolist(), int(npy[2]), int(npy[3]), float(npy[4])],
        "torch": _tensor_b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [_tensor_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_states(d: dict[str, Any]) -> None:
    v, state, gauss = d["python"]
    random.setstate((int(v), tuple(int(x) for x in state), gauss))
    name, keys, pos, has_gauss, cached = d["numpy"]
    np.random.set_state((str(name), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(_b64_tensor(d["torch"]))
    if "cuda" in d and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_b64_tensor(s) for s in d["cuda"]])


# -- save --------------------------------------------------------------------------------------
def save(
    accelerator,
    directory: Path,
    *,
    models: Sequence[torch.nn.Module],
    optimizers: Sequence[Any],
    state: dict[str, Any],
    own_directory: bool = False,
) -> None:
    """Every process calls this: each writes its RNG states; the main process writes the models,
    optimizers, ``state`` (JSON-able: position, schedulers, scaler) and, after all, the manifest.

    ``own_directory``: each process writes into its own ``directory`` (Ray Train: every rank hands
    its folder to ``ray.train.report`` and Ray merges them into one checkpoint on storage, whatever
    node each rank ran on). The main process's manifest lists every rank's RNG file (size and
    sha256 gathered from the ranks), so a checkpoint missing one rank's file does not verify.
    """
    from accelerate.utils import gather_object

    directory = Path(directory)
    main = accelerator.is_main_process
    if own_directory or main:
        directory.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    rng = directory / f"rng_{accelerator.process_index}.json"
    write_json(rng, rng_states())
    entries = gather_object([{rng.name: _entry(rng)}])  # every rank's, in rank order
    if main:
        written = []
        for i, m in enumerate(models):
            sd = {k: v.detach().cpu().contiguous().clone() for k, v in accelerator.unwrap_model(m).state_dict().items()}
            path = directory / _name("model", i, "safetensors")
            atomic_write(path, lambda f, sd=sd: f.write(_safetensors_bytes(sd)), overwrite=True)
            written.append(path)
        for i, opt in enumerate(optimizers):
            sd = opt.state_dict()
            path = directory / _name("optimizer", i, "pt")
            atomic_write(path, lambda f, sd=sd: torch.save(sd, f), overwrite=True)
            written.append(path)
        write_json(directory / STATE, {"format": FORMAT, **state})
        written.append(directory / STATE)
        files = {p.name: _entry(p) for p in written}
        for e in entries:
            files.update(e)
        write_json(
            directory / MANIFEST,
            {"format": FORMAT, "world_size": accelerator.num_processes, "files": dict(sorted(files.items()))},
        )
    accelerator.wait_for_everyone()


def _entry(path: Path) -> dict[str, Any]:
    return manifest_entry(path, "sha256")


def _safetensors_bytes(sd: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(sd)


# -- verify and load ---------------------------------------------------------------------------
def is_state_dir(p: Path) -> bool:
    return (Path(p) / MANIFEST).is_file()


def problem(directory: Path) -> str | None:
    """Why ``directory`` is not a complete checkpoint (None when it verifies against its manifest)."""
    return manifest_problem(directory, checksum="sha256", needed=(STATE, "model.safetensors", "rng_0.json"), fmt=FORMAT)


def load(
    accelerator, directory: Path, *, models: Sequence[torch.nn.Module], optimizers: Sequence[Any]
) -> dict[str, Any]:
    """Load models, optimizers and this process's RNG states from a verified checkpoint; returns
    ``state.json``. Raises ValueError for a file that does not parse as what it should be."""
    directory = Path(directory)
    state = json.loads((directory / STATE).read_text())
    for i, m in enumerate(models):
        accelerator.unwrap_model(m).load_state_dict(
            load_file(str(directory / _name("model", i, "safetensors"))), strict=True
        )
    for i, opt in enumerate(optimizers):
        try:
            sd = torch.load(directory / _name("optimizer", i, "pt"), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 -- the weights-only unpickler refuses anything but data
            raise ValueError(f"{_name('optimizer', i, 'pt')} is not plain tensor data ({type(e).__name__})") from None
        opt.load_state_dict(sd)
    rng = directory / f"rng_{accelerator.process_index}.json"
    state["rng_restored"] = rng.is_file()
    if rng.is_file():
        set_rng_states(json.loads(rng.read_text()))
    return state
