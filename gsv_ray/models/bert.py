"""BERT (``chinese-roberta-wwm-ext-large``) in plain PyTorch: the ``transformers.BertModel`` encoder that
GPT-SoVITS's ``1-get-text.py`` runs for Mandarin text (``3-bert/``), without transformers.

* embeddings: word + position (``0..T-1``) + token type, LayerNorm;
* encoder: post-norm layers (self-attention, dense, residual, LayerNorm; FFN with GELU, residual, LayerNorm).

Module and parameter names equal transformers', so a Hugging Face folder's weights load strictly: a
``BertForMaskedLM`` checkpoint (upstream loads the folder with ``AutoModelForMaskedLM``) has its ``bert.``
prefix dropped and its heads (``cls.*``) and pooler left out, which hidden states never use. Weights are
read safely (safetensors, or ``torch.load(weights_only=True)``: shared with :mod:`gsv_ray.models.hubert`)
and kept in float32 (the released folder stores float16; transformers 4.x upcasts them the same way).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gsv_ray.models.hf_folder import load_strict, read_config, read_state_dict, refuse_variants

__all__ = ["BertConfig", "Bert"]

_FIX = "give GPT-SoVITS's chinese-roberta-wwm-ext-large folder (config.json + weights)"
#: keys a BertForMaskedLM / BertForPreTraining checkpoint carries that the encoder's hidden states never use
_UNUSED_PREFIXES = ("cls.", "pooler.")
_UNUSED_KEYS = ("embeddings.position_ids",)  # a buffer older transformers saved


@dataclass(frozen=True)
class BertConfig:
    """The ``config.json`` fields this architecture uses (defaults: transformers' ``BertConfig``;
    chinese-roberta-wwm-ext-large sets 1024 / 24 layers / 16 heads / 4096 / 21128)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    position_embedding_type: str = "absolute"

    @classmethod
    def from_json(cls, path: Path) -> "BertConfig":
        """Read a Hugging Face ``config.json``; refuses variants this implementation does not compute."""
        cfg, raw = read_config(path, cls, what="BERT", fix=_FIX)
        checks = (
            ("model_type", raw.get("model_type", "bert"), "bert"),
            ("hidden_act", cfg.hidden_act, "gelu"),
            ("position_embedding_type", cfg.position_embedding_type, "absolute"),
            ("is_decoder", raw.get("is_decoder", False), False),
        )
        heads = cfg.hidden_size % cfg.num_attention_heads
        more = [f"hidden_size {cfg.hidden_size} not divisible by {cfg.num_attention_heads} heads"] if heads else []
        refuse_variants(checks, what="BERT", path=path, fix=_FIX, more=more)
        return cfg


class _Embeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, ids: torch.Tensor, token_type: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)[None]
        x = self.word_embeddings(ids) + self.token_type_embeddings(token_type) + self.position_embeddings(pos)
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.heads = c.num_attention_heads
        self.query, self.key, self.value = (nn.Linear(c.hidden_size, c.hidden_size) for _ in range(3))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            p(x).view(b, t, self.heads, d // self.heads).transpose(1, 2) for p in (self.query, self.key, self.value)
        )
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # scale 1/sqrt(head size), as BERT's
        return y.transpose(1, 2).reshape(b, t, d)


class _DenseNorm(nn.Module):
    """transformers' ``BertSelfOutput`` / ``BertOutput``: ``LayerNorm(dense(x) + residual)``."""

    def __init__(self, d_in: int, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(d_in, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _DenseNorm(c.hidden_size, c)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class _Intermediate(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # "gelu": the exact (erf) form


class _Layer(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _DenseNorm(c.intermediate_size, c)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = self.attention(x, mask)
        return self.output(self.intermediate(h), h)


class _Encoder(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class Bert(nn.Module):
    """``BertModel`` without its pooler, in eval mode: :meth:`forward` gives the hidden states."""

    def __init__(self, config: BertConfig = BertConfig()):
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)
        self.eval()

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        upto: int | None = None,
    ) -> list[torch.Tensor]:
        """transformers' ``hidden_states`` for ``input_ids`` [B, T]: ``[embeddings, layer 1, ..., layer upto]``
        (each [B, T, hidden]; ``upto`` defaults to every layer, fewer layers skip the rest's compute).
        ``attention_mask`` [B, T] is 1 for tokens, 0 for padding (None: all tokens)."""
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"{input_ids.shape[1]} tokens, more than {self.config.max_position_embeddings} positions")
        token_type = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        h = self.embeddings(input_ids, token_type)
        states = [h]
        for layer in self.encoder.layer[: self.config.num_hidden_layers if upto is None else upto]:
            h = layer(h, mask)
            states.append(h)
        return states

    @classmethod
    def from_folder(cls, folder: str | Path) -> "Bert":
        """Load a Hugging Face BERT folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``,
        a ``BertModel`` or ``BertForMaskedLM`` checkpoint), safely, strictly, in float32 and eval mode."""
        folder = Path(folder)
        model = cls(BertConfig.from_json(folder / "config.json"))
        sd = _encoder_keys(read_state_dict(folder, what="BERT", fix=_FIX))
        return load_strict(model, sd, what="BERT", folder=folder)


def _encoder_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's encoder tensors under :class:`Bert`'s names: the ``bert.`` prefix of the task models
    dropped, TF-era ``LayerNorm.gamma/beta`` renamed (as transformers does), heads and pooler left out."""
    out = {}
    for key, v in sd.items():
        k = (
            key.removeprefix("bert.")
            .replace("LayerNorm.gamma", "LayerNorm.weight")
            .replace("LayerNorm.beta", "LayerNorm.bias")
        )
        if not k.startswith(_UNUSED_PREFIXES) and k not in _UNUSED_KEYS:
            out[k] = v
    return out
