"""Shape config of the stage-1 GPT (text-to-semantic decoder).

Built from the ``model`` section of an s1 config (``s1longer.yaml`` / ``s1longer-v2.yaml``, or the
``config["model"]`` stored in every exported GPT file and Lightning checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from gsv_ray.resources import CODEBOOK_SIZE, s1_config

#: Which packaged s1 config each GPT-SoVITS version trains with (only v1 has a different GPT).
_S1_CONFIG_OF_VERSION: dict[str, str] = {
    "v1": "v1",
    "v2": "v2",
    "v2Pro": "v2",
    "v2ProPlus": "v2",
    "v3": "v2",
    "v4": "v2",
}

#: Width of the BERT features added to the phoneme embeddings (hard-coded upstream).


@dataclass(frozen=True)
class T2SConfig:
    """Sizes of :class:`~gsv_ray.models.gpt.Text2SemanticDecoder`.

    Field names follow the yaml where they are unambiguous; ``num_heads`` is yaml ``head``,
    ``num_layers`` is ``n_layer`` and ``embedding_dropout`` is ``dropout`` (which upstream only
    applies to the token embeddings: attention, FFN and positional dropout are fixed at 0.1).
    """

    vocab_size: int = 1025
    phoneme_vocab_size: int = 732
    embedding_dim: int = 512
    hidden_dim: int = 512
    num_heads: int = 16
    num_layers: int = 24
    embedding_dropout: float = 0.0
    eos: int = CODEBOOK_SIZE  # the token after the codebook's ids

    #: Dropout that upstream hard-codes for attention weights, residual branches and positions.
    fixed_dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.eos != self.vocab_size - 1:
            raise ValueError(f"EOS must be the last semantic id (vocab_size - 1), got {self.eos}")
        if self.embedding_dim != self.hidden_dim:
            # Upstream adds embeddings straight into the transformer stream, so it only runs if equal.
            raise ValueError(f"embedding_dim ({self.embedding_dim}) must equal hidden_dim ({self.hidden_dim})")
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"hidden_dim {self.hidden_dim} is not divisible by {self.num_heads} heads")

    @property
    def ffn_dim(self) -> int:
        """FFN width. Upstream uses ``4 * hidden_dim`` and ignores the yaml's ``linear_units``."""
        return 4 * self.hidden_dim

    @classmethod
    def from_s1_config(cls, cfg: Mapping[str, Any]) -> "T2SConfig":
        """From an s1 config: either the whole config (with a ``model`` key) or its ``model`` section."""
        model = cfg["model"] if isinstance(cfg.get("model"), Mapping) else cfg
        return cls(
            vocab_size=int(model["vocab_size"]),
            phoneme_vocab_size=int(model["phoneme_vocab_size"]),
            embedding_dim=int(model["embedding_dim"]),
            hidden_dim=int(model["hidden_dim"]),
            num_heads=int(model["head"]),
            num_layers=int(model["n_layer"]),
            embedding_dropout=float(model.get("dropout", 0.0)),
            eos=int(model["EOS"]),
        )

    @classmethod
    def default(cls, version: str = "v2") -> "T2SConfig":
        """The full-size config GPT-SoVITS trains ``version`` with (packaged ``s1_v1``/``s1_v2``)."""
        try:
            name = _S1_CONFIG_OF_VERSION[version]
        except KeyError:
            known = sorted(_S1_CONFIG_OF_VERSION)
            raise ValueError(f"unknown GPT-SoVITS version {version!r}; known: {known}") from None
        return cls.from_s1_config(s1_config(name))
