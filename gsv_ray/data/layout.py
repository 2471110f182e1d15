"""The layout of a GPT-SoVITS preprocessed experiment folder (``logs/<exp>/``), as upstream's
preprocessing writes it (``tests/reference/gpt_sovits/FORMATS.md`` section 7 in the repository)::

    2-name2text.txt        name \\t phones \\t word2ph \\t norm_text   (one line per utterance)
    3-bert/<name>.pt       [1024, n_phones]   (zh only; GPT stage)
    4-cnhubert/<name>.pt   [1, 768, T50]      (SoVITS stage)
    5-wav32k/<name>        32 kHz mono 16-bit PCM WAV (SoVITS stage)
    6-name2semantic.tsv    header + name \\t space-separated ids (GPT stage)
    7-sv_cn/<name>.pt      [1, 20480]          (SoVITS v2Pro / v2ProPlus)

``<name>`` is the basename of the source wav *including* its extension (``a.wav`` ->
``4-cnhubert/a.wav.pt``). Here: the names, the phone table a version uses, and how a text line
is split.
"""

from __future__ import annotations

import codecs

from gsv_ray.errors import GsvError
from gsv_ray.resources import CODEBOOK_SIZE, S2_VERSIONS, STAGES

__all__ = [
    "STAGES",
    "NAME2TEXT",
    "BERT_DIR",
    "HUBERT_DIR",
    "WAV_DIR",
    "SEMANTIC_TSV",
    "SV_DIR",
    "SEMANTIC_HEADER",
    "SEMANTIC_VOCAB",
    "symbol_set_of",
    "without_bom",
    "name2text_fields",
]

NAME2TEXT = "2-name2text.txt"
BERT_DIR = "3-bert"
HUBERT_DIR = "4-cnhubert"
WAV_DIR = "5-wav32k"
SEMANTIC_TSV = "6-name2semantic.tsv"
SV_DIR = "7-sv_cn"
SEMANTIC_HEADER = "item_name\tsemantic_audio"

SEMANTIC_VOCAB = CODEBOOK_SIZE  # 1024 itself is the GPT's EOS / padding value


def symbol_set_of(version: str) -> str:
    """Phone table a model version uses: ``"v1"`` for v1, ``"v2"`` for every later version."""
    if version not in S2_VERSIONS:
        raise GsvError(f"unknown GPT-SoVITS version {version!r}", fix=f"use one of {', '.join(S2_VERSIONS)}")
    return "v1" if version == "v1" else "v2"


def without_bom(data: bytes) -> bytes:
    """``data`` without a leading UTF-8 byte-order mark (Windows editors add one; it would become part
    of the first name). Text files of an experiment are read through this or ``encoding="utf-8-sig"``."""
    return data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data


def name2text_fields(line: str) -> tuple[str, str, str, str] | None:
    """``(name, phones, word2ph, norm_text)`` of a ``2-name2text.txt`` line, as both upstream loaders
    split it (on tabs); None for a line without exactly 4 fields (upstream ignores those)."""
    fields = line.split("\t")
    return (fields[0], fields[1], fields[2], fields[3]) if len(fields) == 4 else None
