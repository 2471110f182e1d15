"""A small random BERT in GPT-SoVITS's ``chinese-roberta-wwm-ext-large`` layout (built with Hugging Face
transformers, the test extra): the real config.json with fewer/smaller layers, a float16
``pytorch_model.bin`` of a ``BertForMaskedLM`` as GPT-SoVITS ships it, a vocabulary of the zh goldens'
characters. Used by the BERT step's tests and ``gsv-ray prepare``'s zh tests."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

#: GPT-SoVITS's chinese-roberta-wwm-ext-large config.json (hfl's, as transformers 4.x saves it)
FULL_CONFIG = {
    "architectures": ["BertForMaskedLM"],
    "attention_probs_dropout_prob": 0.1,
    "bos_token_id": 0,
    "directionality": "bidi",
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "output_past": True,
    "pad_token_id": 0,
    "pooler_fc_size": 768,
    "pooler_num_attention_heads": 12,
    "pooler_num_fc_layers": 3,
    "pooler_size_per_head": 128,
    "pooler_type": "first_token_transform",
    "type_vocab_size": 2,
    "vocab_size": 21128,
}
SMALL = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128}
WORDPIECES = ["hello", "world", "un", "##aff", "##able", "he", "##llo", "na", "##ive", "12", "##3", "text"]


def zh_sentences(reference_dir: Path) -> list[dict]:
    data = json.loads((reference_dir / "text" / "text_frontend.json").read_text(encoding="utf-8"))
    return [s for v in ("v1", "v2") for s in data["languages"]["zh"][v]["sentences"]]


def vocab(reference_dir: Path) -> list[str]:
    """Specials, then each character of the zh goldens' texts and a few ASCII words and pieces."""
    chars = set()
    for s in zh_sentences(reference_dir):
        chars.update(s["text"] + (s["norm_text"] or ""))
    chars.update("abcdefghijklmnopqrstuvwxyz0123456789.,!?-…")
    chars -= set(" \t\n")
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(chars), *WORDPIECES]


def build_small_bert(folder: Path, reference_dir: Path) -> Path:
    """Write the small BERT into ``folder`` (config.json, vocab.txt, pytorch_model.bin), with non-trivial
    LayerNorms; the same bytes every time (seeded)."""
    transformers = importlib.import_module("transformers")
    folder.mkdir(parents=True, exist_ok=True)
    words = vocab(reference_dir)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    config = {**FULL_CONFIG, **SMALL, "vocab_size": len(words)}
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(transformers.BertConfig(**config))
    sd = hf.state_dict()
    for k in sd:
        if "LayerNorm" in k:
            sd[k] = sd[k] + 0.1 * torch.randn_like(sd[k])
    torch.save({k: v.half() for k, v in sd.items()}, folder / "pytorch_model.bin")
    return folder
