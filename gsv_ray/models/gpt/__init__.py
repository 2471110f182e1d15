"""Our stage-1 GPT (text-to-semantic decoder), key-compatible with GPT-SoVITS.

Upstream holds ``Text2SemanticDecoder`` as attribute ``model`` of its Lightning module, so every
upstream file (exported ``weight``, Lightning ``state_dict``, pretrained ckpts) prefixes the keys
with ``model.``. Our module has bare keys; these helpers convert at the I/O boundary.
"""

from __future__ import annotations

from typing import Mapping, TypeVar

from .config import T2SConfig
from .sampling import sample_next_token
from .t2s import (
    MAX_DECODE_STEPS,
    MIN_STEPS_BEFORE_EOS,
    T2SDecodeResult,
    T2SOutput,
    Text2SemanticDecoder,
    attention_mask,
    top_k_accuracy,
)

#: Prefix of every GPT key in upstream files.
UPSTREAM_PREFIX = "model."

V = TypeVar("V")


def to_upstream_keys(state_dict: Mapping[str, V]) -> dict[str, V]:
    """Bare keys -> upstream ``model.``-prefixed keys (order kept)."""
    return {UPSTREAM_PREFIX + k: v for k, v in state_dict.items()}


def from_upstream_keys(state_dict: Mapping[str, V]) -> dict[str, V]:
    """Upstream ``model.``-prefixed keys -> bare keys (order kept); any other key is an error."""
    stray = [k for k in state_dict if not k.startswith(UPSTREAM_PREFIX)]
    if stray:
        raise KeyError(f"GPT state_dict keys without the {UPSTREAM_PREFIX!r} prefix: {stray[:5]}")
    return {k[len(UPSTREAM_PREFIX) :]: v for k, v in state_dict.items()}


def load_upstream_state_dict(
    model: Text2SemanticDecoder, state_dict: Mapping[str, object], strict: bool = True
) -> tuple[list[str], list[str]]:
    """Load an upstream (``model.``-prefixed) state_dict, e.g. an export's ``weight``; dtypes are cast.

    Returns ``(missing_keys, unexpected_keys)`` as ``nn.Module.load_state_dict`` does.
    """
    return model.load_state_dict(from_upstream_keys(state_dict), strict=strict)


__all__ = [
    "MAX_DECODE_STEPS",
    "MIN_STEPS_BEFORE_EOS",
    "UPSTREAM_PREFIX",
    "T2SConfig",
    "T2SDecodeResult",
    "T2SOutput",
    "Text2SemanticDecoder",
    "attention_mask",
    "from_upstream_keys",
    "load_upstream_state_dict",
    "sample_next_token",
    "to_upstream_keys",
    "top_k_accuracy",
]
