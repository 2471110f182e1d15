"""Cantonese text front-end (upstream ``cantonese.py``, v2 only): Jyutping from ToJyutping as ``Y`` phones.

``normalize``: the Mandarin normaliser (the zh front-end's: traditional to simplified, numbers read as
Mandarin numerals), then per sentence the marks mapped to upstream's six, quotes and brackets dropped,
and everything but CJK ideographs (U+4E00-9FA5) and the six marks deleted (Latin text vanishes); runs of
marks are kept. ``g2p``: each character's (or a phrase's) Jyutping split into an initial and a final with
the tone on the final, every phone but the marks prefixed ``Y``; ``word2ph`` is 2 per character, 1 per
mark. A character ToJyutping has no reading for is rejected (upstream drops the line with a TypeError).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from gsv_ray.prepare.text.base import TextRejected, table_path

_SYLLABLES = re.compile(r"^([a-z]+[1-6]+[ ]?)+$")  # one Jyutping syllable or several, space-separated


@lru_cache(maxsize=1)
def _tables() -> dict[str, Any]:
    """Upstream's cantonese.py tables by name (INITIALS, rep_map, punctuation_set)."""
    src = json.loads(table_path("yue", "tables_cantonese.json").read_text(encoding="utf-8"))["sources"][0]
    return {t["name"]: t["value"] for t in src["tables"]}


@lru_cache(maxsize=1)
def _patterns() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """(the rep_map keys as one alternation, what normalisation deletes, a run of marks only)."""
    tables = _tables()
    marks = re.escape("".join(tables["punctuation_set"]))  # escaped: "-" stays a literal in a class
    keys = re.compile("|".join(re.escape(k) for k in tables["rep_map"]))
    return keys, re.compile(f"[^\u4e00-\u9fa5{marks}]+"), re.compile(f"^[{marks}]+$")


def normalize(text: str, version: str) -> str:
    """Upstream's ``norm_text`` for Cantonese (simplified characters and the six marks only)."""
    from gsv_ray.prepare.text._zh_normalize import normalize_sentences  # the zh front-end's normaliser

    return "".join(_replace_punctuation(s) for s in normalize_sentences(text))


def _replace_punctuation(sentence: str) -> str:
    """Marks to the six (quotes and brackets to ``'``), then everything but CJK and the six deleted."""
    keys, drop, _ = _patterns()
    rep_map = _tables()["rep_map"]
    return drop.sub("", keys.sub(lambda m: rep_map[m.group()], sentence))


def g2p(norm_text: str, version: str) -> tuple[list[str], list[int]]:
    """(phones before the cleaner's UNK mapping, word2ph) for ``norm_text``."""
    phones: list[str] = []
    word2ph: list[int] = []
    for unit in _jyutping(norm_text):
        if unit in _tables()["punctuation_set"]:
            phones.append(unit)
            word2ph.append(1)
        else:
            phones += _initial_final(unit)
            word2ph.append(2)
    return phones, word2ph


def _jyutping(text: str) -> list[str]:
    """Per character (or phrase, as ToJyutping reads it) its Jyutping; a run of marks as single marks."""
    import ToJyutping

    _, _, marks_only = _patterns()
    out: list[str] = []
    for word, reading in ToJyutping.get_jyutping_list(text):
        if marks_only.match(word):
            out += list(word)
        elif reading is None:
            raise TextRejected(f"yue: ToJyutping has no reading for {word!r} in {text!r}; rewrite it or drop the line")
        elif not _SYLLABLES.search(reading):
            raise TextRejected(f"yue: {word!r} reads {reading!r}, not Jyutping, in {text!r}")
        else:
            out.append(reading)
    return out


def _initial_final(reading: str) -> list[str]:
    """``Y<initial>`` and ``Y<final><tone>``: the initial is the first of upstream's prefixes the toneless
    reading starts with, the final the rest (or the prefix's last letter if nothing is left). A
    multi-syllable reading of one character (卅 ``saa1 aa6``) stays one unit, as upstream."""
    tone, base = (reading[-1], reading[:-1]) if reading[-1].isdigit() else ("", reading)
    for initial in _tables()["INITIALS"]:
        if base.startswith(initial):
            final = base[len(initial) :] or initial[-1]
            return [f"Y{initial}", f"Y{final}{tone if tone != '0' else ''}"]
    raise TextRejected(f"yue: no Jyutping initial matches {reading!r}")
