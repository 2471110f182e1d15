"""Full-size GPT-SoVITS files in every real format, generated from ``schemas/``.

Deliberately independent of gsv_ray's writers: configs are pickled through a real module named
``utils`` with an ``HParams`` class (as upstream's trainers do), tags are patched into the bytes
(as upstream's ``my_save2`` does), Lightning checkpoints carry a real ``pathlib.PosixPath``. So
reading these files tests our reader against the formats, not against ourselves.

Tensor values are random (seeded; read from a pool of 1 M normal values at a random start);
only keys, shapes and dtypes come from the schemas.
"""

from __future__ import annotations

import json
import pathlib
import sys
import types
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

SOVITS_VITS = ["v1", "v2", "v2Pro", "v2ProPlus"]
#: Values in the pool each floating tensor's values are read from (see :meth:`SchemaFiles._random`).
POOL = 1 << 20 | 1
TAGS = {"v2Pro": b"05", "v2ProPlus": b"06", "v3": b"03", "v4": b"04"}


def _upstream_utils_module() -> types.ModuleType:
    """A stand-in for GPT-SoVITS's ``utils`` module: an attribute bag built from keyword args."""
    mod = types.ModuleType("utils")

    class HParams:
        def __init__(self, **kwargs: Any):
            for k, v in kwargs.items():
                if isinstance(v, dict):
                    v = HParams(**v)
                self[k] = v

        def __setitem__(self, k: str, v: Any) -> None:
            setattr(self, k, v)

    HParams.__module__ = "utils"
    HParams.__qualname__ = "HParams"
    mod.HParams = HParams
    return mod


def save_like_upstream(obj: Any, path: Path, tag: bytes | None = None) -> Path:
    """torch.save with ``utils`` importable (so HParams pickles as ``utils.HParams``), then tag."""
    mod = _upstream_utils_module()
    saved = sys.modules.get("utils")
    sys.modules["utils"] = mod
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        obj = _materialise_hparams(obj, mod.HParams)
        with open(path, "wb") as f:  # a file object: the zip's inner folder is "archive", as my_save2's
            torch.save(obj, f)
    finally:
        if saved is None:
            sys.modules.pop("utils", None)
        else:
            sys.modules["utils"] = saved
    if tag is not None:
        with open(path, "r+b") as f:
            f.write(tag)
    return path


class AsHParams(dict):
    """Marks a config dict that must be pickled as ``utils.HParams`` (like upstream's ``hps``)."""


def _materialise_hparams(obj: Any, cls: type) -> Any:
    if isinstance(obj, AsHParams):
        return cls(**obj)
    if isinstance(obj, OrderedDict):
        return OrderedDict((k, _materialise_hparams(v, cls)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialise_hparams(v, cls) for k, v in obj.items()}
    return obj


class SchemaFiles:
    """Generates (on demand, cached) full-size files of each kind and version into ``root``."""

    def __init__(self, schemas_dir: Path, root: Path, seed: int = 0):
        self.schemas_dir = Path(schemas_dir)
        self.root = Path(root)
        self.seed = seed
        self.gen = torch.Generator().manual_seed(seed)
        self._cache: dict[tuple[str, str], Path] = {}  # in order of use, the most recent last
        self._pools: dict[torch.dtype, torch.Tensor] = {}

    # -- schema access -------------------------------------------------------------------------
    def schema(self, name: str) -> dict:
        return json.loads((self.schemas_dir / f"{name}.json").read_text())

    def s2_config(self, version: str) -> dict:
        cfg = json.loads((self.schemas_dir / f"config_s2_{version}.json").read_text())["config"]
        cfg["model"]["version"] = version
        cfg.update(
            s2_ckpt_dir="logs/exp",
            content_module="cnhubert",
            save_weight_dir=f"SoVITS_weights_{version}",
            name="exp",
            version=version,
            pretrain=None,
            resume_step=None,
        )
        return cfg

    def s1_config(self, version: str) -> dict:
        return json.loads((self.schemas_dir / f"config_s1_{version}.json").read_text())["config"]

    def tensors(self, entries: dict[str, dict], dtype: torch.dtype | None = None) -> OrderedDict:
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for key, e in entries.items():
            dt = dtype or getattr(torch, e.get("dtype", "float32"))
            out[key] = self._random(e["shape"], dt)
        return out

    def _random(self, shape: list[int], dtype: torch.dtype) -> torch.Tensor:
        """Standard-normal values: the pool of :data:`POOL` seeded values, read from a start the file's
        generator draws and repeated to fill. Drawing every value (~0.9 G for a v3/v4 G) with
        ``normal_`` and then casting took most of a full-size test's time; copying is ~10x faster
        and a tensor's values are still random, distinct from its neighbours' and reproducible."""
        t = torch.empty(shape, dtype=dtype)
        n = t.numel()
        if not n:
            return t
        if not dtype.is_floating_point:
            return torch.empty(shape, dtype=torch.float32).normal_(generator=self.gen).to(dtype)
        pool = self._pool(dtype)
        flat, i, at = t.view(-1), 0, int(torch.randint(POOL, (), generator=self.gen))
        while i < n:
            m = min(n - i, POOL - at)
            flat[i : i + m] = pool[at : at + m]
            i, at = i + m, 0
        return t

    def _pool(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._pools:
            gen = torch.Generator().manual_seed(self.seed)  # its own stream: the same pool whatever the order
            self._pools[dtype] = torch.empty(POOL).normal_(generator=gen).to(dtype)
        return self._pools[dtype]

    # -- the file kinds ------------------------------------------------------------------------
    def path(self, kind: str, version: str) -> Path:
        """The file, generated on first use (or again after :meth:`trim` removed it: the same bytes,
        each file's values come from its own seed)."""
        key = (kind, version)
        if key in self._cache and self._cache[key].is_file():
            self._cache[key] = self._cache.pop(key)  # most recently used
        else:
            self._cache.pop(key, None)
            self.gen.manual_seed(self.seed * 1_000_003 + zlib.crc32(f"{kind}/{version}".encode()))
            self._cache[key] = getattr(self, "_" + kind.replace("-", "_"))(version)
        return self._cache[key]

    def trim(self, budget_bytes: int) -> None:
        """Remove the least recently used files until the rest fit in ``budget_bytes``: every kind and
        version together is ~5.5 GB, more than a CI machine may have free (a run failed with ENOSPC).
        Called between tests, so a test's own files stay while it runs."""
        sizes = {k: p.stat().st_size for k, p in self._cache.items() if p.is_file()}
        total = sum(sizes.values())
        for key in list(self._cache):
            if total <= budget_bytes:
                break
            total -= sizes.get(key, 0)
            self.delete(*key)

    def delete(self, kind: str, version: str) -> None:
        p = self._cache.pop((kind, version), None)
        if p is not None:
            p.unlink(missing_ok=True)

    def _g_schema(self, version: str) -> dict:
        return self.schema(f"sovits_G_{version}")["state_dict"]

    def _sovits_export(self, version: str) -> Path:
        sd = {k: v for k, v in self._g_schema(version).items() if "enc_q" not in k}
        obj = OrderedDict(
            weight=dict(self.tensors(sd, torch.float16)),
            config=AsHParams(self.s2_config(version)),
            info="8epoch_200iteration",
        )
        return save_like_upstream(obj, self.root / f"SoVITS_weights_{version}" / "exp_e8_s200.pth", TAGS.get(version))

    def _sovits_lora_export(self, version: str) -> Path:
        entries = self.schema(f"sovits_G_{version}_lora32")["lora_exported_weight_keys"]
        cfg = self.s2_config(version)
        cfg["train"]["lora_rank"] = "32"
        obj = OrderedDict(
            weight=dict(self.tensors(entries, torch.float16)),
            config=AsHParams(cfg),
            info="2epoch_50iteration",
            lora_rank=32,
        )
        return save_like_upstream(obj, self.root / f"SoVITS_weights_{version}" / "exp_e2_s50_l32.pth", TAGS[version])

    def _sovits_pretrained_g(self, version: str) -> Path:
        weight = dict(self.tensors(self._g_schema(version), torch.float16))
        obj: dict[str, Any] = {"weight": weight}
        if version in SOVITS_VITS:  # v2/Pro bases are loadable for inference, so they carry a config
            obj["config"] = AsHParams(self.s2_config(version))
        return save_like_upstream(obj, self.root / "pretrained" / f"s2G_{version}.pth")

    def _sovits_pretrained_d(self, version: str) -> Path:
        obj = {"weight": dict(self.tensors(self.schema(f"sovits_D_{version}")["state_dict"], torch.float32))}
        return save_like_upstream(obj, self.root / "pretrained" / f"s2D_{version}.pth")

    def _train_ckpt(self, entries: dict, groups: list[list[int]], name: str) -> Path:
        model = self.tensors(entries, torch.float32)
        param_groups = [
            {
                "lr": 1e-4,
                "betas": (0.8, 0.99),
                "eps": 1e-9,
                "weight_decay": 0.01,
                "amsgrad": False,
                "initial_lr": 1e-4,
                "params": g,
            }
            for g in groups
        ]
        obj = {
            "model": model,
            "iteration": 8,
            "optimizer": {"state": {}, "param_groups": param_groups},
            "learning_rate": 1e-4,
        }
        return save_like_upstream(obj, self.root / name)

    def _sovits_train_g(self, version: str) -> Path:
        schema = (
            self.schema(f"sovits_G_{version}_lora32") if version in ("v3", "v4") else self.schema(f"sovits_G_{version}")
        )["state_dict"]
        n = sum(1 for e in schema.values() if e.get("kind") == "parameter")
        return self._train_ckpt(schema, [list(range(n))], f"logs/exp/logs_s2_{version}/G_233333333333.pth")

    def _sovits_train_d(self, version: str) -> Path:
        schema = self.schema(f"sovits_D_{version}")["state_dict"]
        return self._train_ckpt(schema, [list(range(len(schema)))], f"logs/exp/logs_s2_{version}/D_233333333333.pth")

    def _gpt_export(self, version: str) -> Path:
        weight = self.tensors(self.schema(f"gpt_t2s_{version}")["state_dict"], torch.float16)
        obj = OrderedDict(weight=weight, config=self.s1_config(version), info="GPT-e15")
        return save_like_upstream(obj, self.root / f"GPT_weights_{version}" / "exp-e15.ckpt")

    def _gpt_lightning(self, version: str) -> Path:
        sd = self.tensors(self.schema(f"gpt_t2s_{version}")["state_dict"], torch.float32)
        cfg = self.s1_config(version)
        obj = {
            "epoch": 14,
            "global_step": 3000,
            "pytorch-lightning_version": "2.6.6",
            "state_dict": sd,
            "loops": {},
            "callbacks": {},
            "optimizer_states": [],
            "lr_schedulers": [],
            "hparams_name": "kwargs",
            "hyper_parameters": {
                "config": cfg,
                "output_dir": pathlib.PosixPath(f"logs/exp/logs_s1_{version}"),
                "is_train": True,
            },
        }
        return save_like_upstream(obj, self.root / f"logs/exp/logs_s1_{version}/ckpt/epoch=14-step=3000.ckpt")


#: Every (kind, version) that exists in the real world, with what identification must say.
#: versions: the list ``inspect`` must report.
EXPECTED: list[tuple[str, str, list[str]]] = (
    [("sovits-export", v, [v]) for v in SOVITS_VITS]
    + [("sovits-lora-export", v, [v]) for v in ("v3", "v4")]
    + [("sovits-pretrained-g", v, [v]) for v in SOVITS_VITS]
    + [("sovits-pretrained-g", v, ["v3", "v4"]) for v in ("v3", "v4")]
    + [("sovits-pretrained-d", v, ["v1", "v2"] if v in ("v1", "v2") else ["v2Pro", "v2ProPlus"]) for v in SOVITS_VITS]
    + [("sovits-train-g", v, [v]) for v in SOVITS_VITS]
    + [("sovits-train-g", v, ["v3", "v4"]) for v in ("v3", "v4")]
    + [("sovits-train-d", v, ["v1", "v2"] if v in ("v1", "v2") else ["v2Pro", "v2ProPlus"]) for v in SOVITS_VITS]
    + [("gpt-export", v, [v]) for v in ("v1", "v2")]
    + [("gpt-lightning", v, [v]) for v in ("v1", "v2")]
)
