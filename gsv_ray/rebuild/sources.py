"""Normalise source state_dicts to our target key names, and merge LoRA deltas.

Wrapper prefixes (``module.``, ``_orig_mod.``) are stripped by the reader already. Here:
GPT keys lose their ``model.`` prefix (our decoder has bare keys), and PEFT's LoRA container names
(``cfm.base_model.model.<path>.base_layer.weight``) map back to the plain ``cfm.<path>.weight``,
with the ``lora_A``/``lora_B`` matrices collected per module for merging.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

_PEFT_ROOT = re.compile(r"^(?P<head>[^.]+)\.base_model\.model\.(?P<rest>.+)$")
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.(?P<adapter>[^.]+)\.weight$")


@dataclass
class Source:
    """One input file's tensors under target names, fp32, plus LoRA pairs to merge."""

    path: str
    tensors: dict[str, torch.Tensor]
    origin: dict[str, str]  # target name -> key as stored in the file
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # module -> (A, B)
    lora_origin: dict[str, tuple[str, str]] = field(default_factory=dict)


def normalise(path: str, state_dict: Mapping[str, torch.Tensor], *, stage: str) -> Source:
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    a_mats: dict[str, tuple[str, torch.Tensor]] = {}
    b_mats: dict[str, tuple[str, torch.Tensor]] = {}
    for key, t in state_dict.items():
        name = key
        if stage == "gpt" and name.startswith("model."):
            name = name[len("model.") :]
        if m := _PEFT_ROOT.match(name):
            name = f"{m['head']}.{m['rest']}"
        if m := _LORA.match(name):
            (a_mats if m["which"] == "A" else b_mats)[m["module"]] = (key, t)
            continue
        name = name.replace(".base_layer.", ".")
        tensors[name] = t
        origin[name] = key
    src = Source(path=path, tensors=tensors, origin=origin)
    for module in sorted(set(a_mats) | set(b_mats)):
        if module in a_mats and module in b_mats:
            src.lora[module] = (a_mats[module][1], b_mats[module][1])
            src.lora_origin[module] = (a_mats[module][0], b_mats[module][0])
    return src


def lora_delta(a: torch.Tensor, b: torch.Tensor, alpha: float, rank: int) -> torch.Tensor:
    """``B @ A * alpha / r``: what PEFT's ``merge_and_unload`` adds to a Linear's weight."""
    return (b.float() @ a.float()) * (alpha / rank)


def as_fp32(t: torch.Tensor) -> torch.Tensor:
    """fp32 view of a tensor: a cast when it is fp16/bf16, the tensor itself when already fp32.

    Inputs are memory-mapped copy-on-write, so an alias never writes through to the file.
    """
    return t.detach().to(torch.float32)


def cast_fp32(t: torch.Tensor) -> torch.Tensor:
    """A private fp32 copy (inputs may be memory-mapped and must never be written through)."""
    return t.detach().to(torch.float32, copy=True).contiguous()


PEFT_CFM = "cfm.base_model.model."


def peft_view(src: Source, adapted: set[str]) -> Source:
    """``src`` under the key names of the v3/v4 model with LoRA on its CFM (peft's layout): ``cfm.X``
    -> ``cfm.base_model.model.X``, an adapted Linear's ``weight``/``bias`` -> ``base_layer.*``, and
    the file's LoRA pairs as ``lora_A/lora_B.default.weight``. ``adapted``: the adapted modules'
    plain names (``cfm.estimator.transformer_blocks.0.attn.to_q``, ...)."""
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for name, t in src.tensors.items():
        new = name
        if name.startswith("cfm."):
            module, _, leaf = name.rpartition(".")
            rest = name[len("cfm.") :]
            if module in adapted and leaf in ("weight", "bias"):
                rest = f"{module[len('cfm.') :]}.base_layer.{leaf}"
            new = PEFT_CFM + rest
        tensors[new], origin[new] = t, src.origin[name]
    for module, pair in src.lora.items():
        rest = module[len("cfm.") :] if module.startswith("cfm.") else module
        for which, t, stored in zip("AB", pair, src.lora_origin[module]):
            key = f"{PEFT_CFM}{rest}.lora_{which}.default.weight"
            tensors[key], origin[key] = t, stored
    return Source(path=src.path, tensors=tensors, origin=origin)
