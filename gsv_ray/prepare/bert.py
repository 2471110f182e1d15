"""The Mandarin BERT features of GPT-SoVITS's ``1-get-text.py`` (``3-bert/<name>.pt``), as upstream computes
them from the user's ``chinese-roberta-wwm-ext-large`` folder:

1. the tokenizer on ``norm_text`` (``[CLS] chars [SEP]``, one token per CJK character or mark);
2. the model's hidden states; upstream keeps the third from last (``hidden_states[-3]``: the output of
   layer ``N - 2`` of ``N``), so the last two layers are not computed here;
3. ``[CLS]`` and ``[SEP]`` dropped; character ``i``'s vector repeated ``word2ph[i]`` times;
4. transposed to ``[hidden, sum(word2ph)]`` ([1024, phones]) and saved with ``torch.save``.

Upstream runs the model in float16 on a GPU (``is_half``) and in float32 on the CPU; the saved tensor has
the model's dtype. Where upstream raises for a line (``len(word2ph) != len(norm_text)``, fewer tokens than
characters, more than 512 tokens, an empty text) the line is dropped: :class:`TextRejected` says which and why.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from gsv_ray.atomic import atomic_write
from gsv_ray.errors import GsvError
from gsv_ray.models.bert import Bert
from gsv_ray.models.bert_tokenizer import BertTokenizer
from gsv_ray.prepare.text.base import TextRejected

__all__ = ["BertFolderError", "load_bert", "bert_features", "write_bert"]

_FIX = "give the chinese-roberta-wwm-ext-large folder from GPT-SoVITS's GPT_SoVITS/pretrained_models"


class BertFolderError(GsvError):
    """The BERT folder is missing, incomplete or not a Hugging Face BERT (exit 2)."""


def load_bert(
    folder: str | Path, *, device: str | torch.device = "cpu", half: bool = False
) -> tuple[Bert, BertTokenizer]:
    """The model (eval mode, on ``device``; float16 when ``half``, as upstream's ``is_half``, else float32)
    and tokenizer of a ``chinese-roberta-wwm-ext-large`` folder. Raises :class:`BertFolderError` (one line
    naming the folder or file) for a missing or wrong folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BertFolderError("BERT folder not found", path=folder, fix=_FIX)
    if not (folder / "config.json").is_file():
        raise BertFolderError("no config.json in the BERT folder", path=folder, fix=_FIX)
    try:
        model, tokenizer = Bert.from_folder(folder), BertTokenizer.from_folder(folder)
    except GsvError as e:
        raise BertFolderError(str(e).rstrip(".")) from e
    top = max(tokenizer.vocab.values(), default=-1)
    if top >= model.config.vocab_size:
        raise BertFolderError(
            f"the tokenizer's ids reach {top}, the model has {model.config.vocab_size} embeddings",
            path=folder,
            fix="use the tokenizer files that came with these weights",
        )
    model = model.to(device=device, dtype=torch.float16 if half else torch.float32)
    return model, tokenizer


def bert_features(norm_text: str, word2ph: list[int], model: Bert, tokenizer: BertTokenizer) -> torch.Tensor:
    """``3-bert`` features of one utterance: [hidden, sum(word2ph)] on the CPU in the model's dtype, the
    third-from-last hidden state of character ``i`` repeated ``word2ph[i]`` times (upstream's semantics).
    Raises :class:`TextRejected` where upstream raises and drops the line."""
    if len(word2ph) != len(norm_text):
        raise TextRejected(
            f"word2ph has {len(word2ph)} entries for {len(norm_text)} characters of {norm_text!r} (upstream asserts)"
        )
    if not norm_text:
        raise TextRejected("no characters left after normalisation (upstream: torch.cat of nothing)")
    ids = tokenizer.encode(norm_text)
    n_pos = model.config.max_position_embeddings
    if len(ids) > n_pos:
        raise TextRejected(f"{len(ids)} BERT tokens, more than the model's {n_pos} positions: split the text")
    if len(ids) - 2 < len(norm_text):
        raise TextRejected(
            f"{len(ids) - 2} BERT tokens for {len(norm_text)} characters of {norm_text!r} (upstream: IndexError)"
        )
    param = next(model.parameters())
    layer = model.config.num_hidden_layers - 2  # hidden_states[-3]: the output of layer N - 2
    with torch.inference_mode():
        states = model(torch.tensor([ids], device=param.device), upto=layer)
    per_char = states[layer][0, 1:-1].cpu()
    reps = torch.tensor(word2ph, dtype=torch.long)
    return per_char[: len(word2ph)].repeat_interleave(reps, dim=0).T


def write_bert(path: str | Path, feats: torch.Tensor, *, overwrite: bool = False) -> Path:
    """Write ``3-bert/<name>.pt`` atomically: ``torch.save`` of the [hidden, phones] tensor (contiguous,
    detached; ``torch.load(weights_only=True)`` reads it; upstream saves a transposed view, same values)."""
    if feats.dim() != 2 or not feats.is_floating_point():
        raise ValueError(
            f"BERT features must be a float [hidden, phones] tensor, got {feats.dtype} {tuple(feats.shape)}"
        )
    buf = io.BytesIO()
    torch.save(feats.detach().cpu().contiguous().clone(), buf)
    return atomic_write(path, lambda f: f.write(buf.getvalue()), overwrite=overwrite)
