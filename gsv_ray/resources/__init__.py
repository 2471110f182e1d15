"""Facts carried over from upstream GPT-SoVITS: the versions and feature widths (here, the one
place they are stated), and, packaged as JSON, the s2/s1 configs per version and the two ordered
phone-symbol tables. One place to load them from."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

#: The two trained stages: SoVITS (stage 2, the acoustic model) and GPT (stage 1, text -> semantic tokens).
STAGES = ("sovits", "gpt")
#: SoVITS (stage 2) versions: the VITS family, then v3/v4 (CFM/DiT generators).
S2_VERSIONS = ("v1", "v2", "v2Pro", "v2ProPlus", "v3", "v4")
#: The VITS-family SoVITS versions (what gsv-ray trains); "Pro" ones add a speaker-verification input.
VITS_VERSIONS = ("v1", "v2", "v2Pro", "v2ProPlus")
PRO_VERSIONS = ("v2Pro", "v2ProPlus")
#: Each version's pretrained SoVITS base G, as a GPT-SoVITS ``pretrained_models`` folder keeps it
#: (upstream's config.py).
PRETRAINED_SOVITS = {
    "v1": "s2G488k.pth",
    "v2": "gsv-v2final-pretrained/s2G2333k.pth",
    "v2Pro": "v2Pro/s2Gv2Pro.pth",
    "v2ProPlus": "v2Pro/s2Gv2ProPlus.pth",
    "v3": "s2Gv3.pth",
    "v4": "gsv-v4-pretrained/s2Gv4.pth",
}
#: GPT (stage 1) configs, and the phone-symbol sets (v1: 322 symbols; v2 and later: 732).
S1_VERSIONS = ("v1", "v2")
SYMBOL_SETS = ("v1", "v2")

#: Feature widths: chinese-hubert-base's hidden size (SSL features, the codebook's vectors), the
#: codebook's size, chinese-roberta-wwm-ext-large's hidden size (BERT features), ERes2NetV2's
#: embedding (v2Pro/v2ProPlus speaker vectors).
SSL_DIM = 768
CODEBOOK_SIZE = 1024
BERT_DIM = 1024
SV_DIM = 20480

#: ``wandb.init(mode=...)``'s values (a fact of W&B, stated once for the option and the tracker).
WANDB_MODES = ("online", "offline", "disabled")


def load_json(name: str) -> Any:
    return json.loads(resources.files(__name__).joinpath(name).read_text(encoding="utf-8"))


def s2_config(version: str) -> dict:
    """Upstream's SoVITS (stage 2) json for ``version`` (train/data/model sections), a fresh copy."""
    if version not in S2_VERSIONS:
        raise ValueError(f"unknown SoVITS version {version!r}; expected one of {', '.join(S2_VERSIONS)}")
    return load_json(f"s2_{version}.json")


def s1_config(version: str) -> dict:
    """Upstream's GPT (stage 1) yaml as a dict: "v1" (s1longer.yaml) or "v2" (s1longer-v2.yaml)."""
    if version not in S1_VERSIONS:
        raise ValueError(f"unknown GPT config {version!r}; expected v1 or v2")
    return load_json(f"s1_{version}.json")


def symbols(symbol_set: str) -> list[str]:
    """The ordered phone symbols ("v1": 322, "v2": 732); a phone's id is its index."""
    table = load_json("symbols.json")
    if symbol_set not in SYMBOL_SETS:
        raise ValueError(f"unknown symbol set {symbol_set!r}; expected v1 or v2")
    return list(table[symbol_set]) if isinstance(table[symbol_set], list) else table[symbol_set]


@functools.cache
def symbol_lookup(symbol_set: str) -> frozenset[str]:
    """:func:`symbols` as a set, for membership tests (built once per process)."""
    return frozenset(symbols(symbol_set))
