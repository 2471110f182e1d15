"""Korean text front-end (upstream ``korean.py``, v2 only): g2pk2's pronounced Hangul as jamo phones.

No normalisation (``norm_text`` is the input). ``g2p``: Latin letters become their Korean letter names,
g2pk2 (Mecab-annotated rules, numerals, batchim, linking) gives the pronounced Hangul, which is split
into compatibility jamo with compound vowels divided; a fix for one g2pk2 error (ㄹ after ``을``/``를`` and
a space reads ㄴ); ``.`` appended after a final jamo; then per character: marks to upstream's six, a
space to ``空``, anything outside the v2 symbol table to ``停``.

g2pk2 wants NLTK's cmudict for English words. Every Latin letter is Hangul before g2pk2 runs, so an
empty dictionary gives the same output (the goldens' ``ko_cmudict_empty_variant``): we never load
NLTK data and never let g2pk2 call ``nltk.download``.
"""

from __future__ import annotations

import json
import re
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from gsv_ray.prepare.text.base import table_path
from gsv_ray.resources import symbol_lookup

_PAUSE = "停"
_FINAL_JAMO = re.compile(r"([\u3131-\u3163])$")


@lru_cache(maxsize=1)
def _tables() -> dict[str, Any]:
    """Upstream's korean.py tables by name (the regex-pair tables as ``(compiled, replacement)`` tuples)."""
    src = json.loads(table_path("ko", "tables_korean.json").read_text(encoding="utf-8"))["sources"][0]
    out: dict[str, Any] = {}
    for t in src["tables"]:
        value = t["value"]
        if t["python_type"].startswith("list[tuple[regex"):
            value = tuple((re.compile(p["pattern"], p["flags"]), new) for p, new in value)
        out[t["name"]] = value
    return out


def normalize(text: str, version: str) -> str:
    """Upstream's ``norm_text`` for Korean: the text unchanged."""
    return text


def g2p(norm_text: str, version: str) -> tuple[list[str], None]:
    """Jamo phones (and ``空``/``停``/marks) for ``norm_text``, before the cleaner's UNK mapping."""
    tables = _tables()
    text = norm_text
    for pattern, new in tables["_latin_to_hangul"]:
        text = pattern.sub(new, text)
    text = _g2pk2()(text)
    text = _divide_hangul(text, tables["_hangul_divided"])
    text = _fix_rieul_after_eul(text)
    text = _FINAL_JAMO.sub(r"\1.", text)
    rep_map, symbols = tables["rep_map"], symbol_lookup("v2")
    phones = [rep_map.get(ch, ch) for ch in text]
    return [ph if ph in symbols else _PAUSE for ph in phones], None


def _divide_hangul(text: str, divided: tuple[tuple[re.Pattern[str], str], ...]) -> str:
    """Hangul syllables to compatibility jamo, compound vowels split into two."""
    from jamo import h2j, j2hcj

    text = j2hcj(h2j(text))
    for pattern, new in divided:
        text = pattern.sub(new, text)
    return text


def _fix_rieul_after_eul(text: str) -> str:
    """``ㅇㅡㄹ``/``ㄹㅡㄹ``, a space, then ``ㄹ``: that ``ㄹ`` reads ``ㄴ`` (g2pk2 misses it). The last four
    characters are never the start of a match, as upstream's scan."""
    out, i = [], 0
    while i < len(text) - 4:
        if text[i : i + 3] in ("ㅇㅡㄹ", "ㄹㅡㄹ") and text[i + 3] == " " and text[i + 4] == "ㄹ":
            out.append(text[i : i + 3] + " ㄴ")
            i += 5
        else:
            out.append(text[i])
            i += 1
    out.append(text[i:])
    return "".join(out)


@lru_cache(maxsize=1)
def _g2pk2() -> Any:
    """A g2pk2 ``G2p`` with an empty English dictionary, built without NLTK data or a download.

    Workaround: importing ``g2pk2`` calls ``nltk.download('cmudict')`` unless NLTK can find
    ``corpora/cmudict.zip``, and ``G2p()`` loads that corpus. We put a throw-away empty corpus on
    ``nltk.data.path`` only while importing, and build the object with our own ``__init__`` (the same
    attributes, ``cmu = {}``), so NLTK's cmudict reader is never loaded and nothing prints.
    """
    import nltk

    with tempfile.TemporaryDirectory(prefix="gsv-ray-nltk-") as tmp:
        corpora = Path(tmp, "corpora")
        corpora.mkdir()
        with zipfile.ZipFile(corpora / "cmudict.zip", "w") as zf:
            zf.writestr("cmudict/cmudict", "")
        nltk.data.path.insert(0, tmp)
        try:
            import g2pk2
            from g2pk2.utils import get_rule_id2text, parse_table
        finally:
            nltk.data.path.remove(tmp)

    class _OfflineG2p(g2pk2.G2p):
        def __init__(self) -> None:  # upstream's constructor minus its pip/NLTK side effects
            import mecab

            self.use_konlpy = False
            self.mecab_path = None
            self.mecab = mecab.MeCab()
            self.table = parse_table()
            self.cmu: dict[str, list[list[str]]] = {}
            self.rule2text = get_rule_id2text()
            self.idioms_path = str(Path(g2pk2.__file__).with_name("idioms.txt"))

    return _OfflineG2p()
