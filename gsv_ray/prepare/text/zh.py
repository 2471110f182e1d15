"""Mandarin (zh) text front-end: upstream's ``chinese`` (v1) and ``chinese2`` (every other version).

``normalize(text, version)`` gives upstream's ``norm_text`` (only CJK characters and the marks
``! ? … , . -`` are left); ``g2p(norm_text, version)`` gives the phones (initial + final with its tone,
from the opencpop-strict table) and ``word2ph`` (2 per character, 1 per mark).

Versions other than v1 are upstream's ``chinese2``, whose default reads polyphonic characters with the
g2pW ONNX model (a user's download, ``GPT_SoVITS/text/G2PWModel``): ``g2pw_dir`` names that folder and
``bert_dir`` the chinese-roberta-wwm-ext-large folder whose tokenizer it uses (default: the
``pretrained_models`` folder beside it, as in a GPT-SoVITS checkout); :mod:`._zh_g2pw` runs upstream's g2pW
path (onnxruntime, OpenCC ``s2tw``, GPT-SoVITS's polyphonic dictionary), then the same tone sandhi, v2's
erhua rule and phone mapping. It follows upstream's code; no golden of the real model exists here.
``no_g2pw=True`` is upstream's ``chinese2`` with g2pW switched off (pypinyin readings, plus v2's erhua rule);
without either, every line is refused with one line saying so.

Readings come from pypinyin and word boundaries / POS tags from jieba_fast (pinned in the ``prepare``
extra). jieba_fast is set up lazily on first use, with its logging kept at warnings and its dictionary
cache written under gsv-ray's cache (``<cache>/text/jieba_fast-<version>/``), never the system temp dir.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from gsv_ray.prepare.text._zh_g2pw import check_folder as check_g2pw_folder
from gsv_ray.prepare.text._zh_g2pw import correct_pronunciation, g2pw_from_env, segment_pinyin
from gsv_ray.prepare.text._zh_normalize import normalize_sentences
from gsv_ray.prepare.text._zh_sandhi import modify_tones, pre_merge
from gsv_ray.prepare.text._zh_tables import membership, pinyin_to_phones, replace_pairs, typed_tables
from gsv_ray.prepare.text.base import PUNCTUATION, TextRejected

__all__ = ["G2PW_FOLDER", "G2PW_FOLDER_NAME", "check_g2pw_folder", "normalize", "g2p"]

#: where upstream keeps the g2pW model (in a GPT-SoVITS checkout)
G2PW_FOLDER = "GPT_SoVITS/text/G2PWModel"
G2PW_FOLDER_NAME = "G2PWModel"
#: the tokenizer folder g2pW reads, relative to the GPT-SoVITS checkout's ``GPT_SoVITS`` folder (upstream's default)
BERT_BESIDE = Path("pretrained_models") / "chinese-roberta-wwm-ext-large"
_CHINESE = "tables_chinese.json"
_LATIN = re.compile(r"[a-zA-Z]+")


#: the six marks of the symbol tables (``! ? … , . -``)
_MARKS = "".join(PUNCTUATION)


def _erhua_mode(version: str, g2pw_dir: str | Path | None, no_g2pw: bool) -> bool:
    """Whether v2's erhua rule applies (every version but v1); refuses a version other than v1 with neither
    a g2pW folder (holding its model) nor ``no_g2pw``."""
    if version == "v1":
        return False
    if no_g2pw:
        return True
    if g2pw_dir is None:
        raise TextRejected(
            f"zh {version} reads polyphonic characters with upstream's g2pW model ({G2PW_FOLDER}), which "
            "was not given: pass its folder (g2pw_dir), or no_g2pw=True for upstream's reading without it"
        )
    folder = Path(g2pw_dir)
    if not any((folder / name).is_file() for name in ("g2pW.onnx", "g2pw.onnx")):
        raise TextRejected(f"the g2pW folder {folder} has no g2pW.onnx: give the {G2PW_FOLDER} folder")
    return True


def _g2pw(version: str, g2pw_dir: str | Path | None, bert_dir: str | Path | None, no_g2pw: bool) -> Any:
    """The g2pW converter this call uses (built once per process and folder), or None (v1, ``no_g2pw``)."""
    if version == "v1" or no_g2pw or g2pw_dir is None:
        return None
    tokenizer = Path(bert_dir) if bert_dir is not None else Path(g2pw_dir).resolve().parent.parent / BERT_BESIDE
    return g2pw_from_env(g2pw_dir, tokenizer)


def normalize(text: str, version: str, *, g2pw_dir: str | Path | None = None, no_g2pw: bool = False) -> str:
    """Upstream's ``norm_text``: sentences normalised (numbers, dates, units in words, traditional ->
    simplified), marks mapped to the six symbols, everything else deleted, runs of marks collapsed."""
    _erhua_mode(version, g2pw_dir, no_g2pw)
    rep_map: dict[str, str] = typed_tables(_CHINESE)["rep_map"]
    mapped, others, runs = _mark_patterns()
    out = ""
    for sentence in normalize_sentences(text):
        for old, new in replace_pairs(_CHINESE, "replace_punctuation"):  # 嗯 -> 恩, 呣 -> 母
            sentence = sentence.replace(old, new)
        sentence = mapped.sub(lambda m: rep_map[m.group()], sentence)
        out += others.sub("", sentence)
    return runs.sub(r"\1", out)


@lru_cache(maxsize=None)
def _mark_patterns() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """Any key of the punctuation map; any run of what is neither CJK nor a mark; a run of marks."""
    marks = re.escape(_MARKS)
    return (
        re.compile("|".join(re.escape(k) for k in typed_tables(_CHINESE)["rep_map"])),
        re.compile(rf"[^\u4e00-\u9fa5{marks}]+"),
        re.compile(rf"([{marks}])([{marks}])+"),
    )


# --- jieba_fast and pypinyin --------------------------------------------------------------------------------


def _jieba_cache_dir(cache_root: str | Path | None) -> Path:
    from gsv_ray.cache import cache_root as resolve

    folder = resolve(cache_root) / "text" / f"jieba_fast-{package_version('jieba_fast')}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@lru_cache(maxsize=4)
def _tokenizer(cache_dir: str) -> Any:
    """A jieba_fast POS tokenizer of its default dictionary, its cache file in ``cache_dir``.

    Our own Tokenizer instance rather than jieba_fast's global one, so its cache location is ours; the
    library logs every load at DEBUG to stderr by default: its logger is raised to WARNING (library state,
    set once, harmless to other users of jieba_fast)."""
    import jieba_fast
    import jieba_fast.posseg

    logging.getLogger("jieba_fast").setLevel(logging.WARNING)
    tokenizer = jieba_fast.Tokenizer()
    tokenizer.tmp_dir = cache_dir
    tokenizer.initialize()
    return jieba_fast.posseg.POSTokenizer(tokenizer)


def _readings(word: str) -> tuple[list[str], list[str]]:
    """pypinyin's initials and TONE3 finals (neutral tone as 5) of a word; a non-Chinese run is one item."""
    from pypinyin import Style, lazy_pinyin

    initials = lazy_pinyin(word, neutral_tone_with_five=True, style=Style.INITIALS)
    finals = lazy_pinyin(word, neutral_tone_with_five=True, style=Style.FINALS_TONE3)
    return initials, finals


def _finals(word: str) -> list[str]:
    return _readings(word)[1]


# --- g2p --------------------------------------------------------------------------------------------------


def _erhua(word: str, pos: str, finals: list[str]) -> list[str]:
    """v2: a word-final 儿 er1 is er2; then, unless the word is an exception or its POS is a/j/nr, a
    final 儿 (er2/er5) takes the tone of the syllable before it (小孩儿 er2, 胡同儿 er5)."""
    t = typed_tables(_CHINESE)
    must, never = frozenset(t["must_erhua"]), frozenset(t["not_erhua"])
    skip_pos, er_finals = (frozenset(v) for v in membership(_CHINESE, "_merge_erhua"))  # {a j nr}, {er2 er5}
    finals = list(finals)
    last = len(finals) - 1
    if finals and last < len(word) and word[last] == "儿" and finals[last] == "er1":
        finals[last] = "er2"
    if word not in must and (word in never or pos in skip_pos):
        return finals
    if len(finals) != len(word) or len(finals) < 2:
        return finals
    if word[-1] == "儿" and finals[-1] in er_finals and word[-2:] not in never and finals[-2]:
        finals[-1] = "er" + finals[-2][-1]
    return finals


def _syllable_phones(initial: str, final: str, word: str, text: str) -> list[str]:
    """One syllable (or mark) -> its phones: [mark], or [initial, final + tone] from opencpop-strict."""

    def rejected() -> TextRejected:
        return TextRejected(
            f"no usable pinyin for {word!r} in {text!r} (pypinyin gives {initial!r}+{final!r}); "
            "upstream drops the line: rewrite that character"
        )

    if initial == final:
        if initial and initial in _MARKS:
            return [initial]
        raise rejected()
    if not final or final[-1] not in "12345":
        raise rejected()
    toneless, tone = final[:-1], final[-1]
    t = typed_tables(_CHINESE)
    if initial:
        pinyin = initial + t["v_rep_map"].get(toneless, toneless)
    elif toneless in t["pinyin_rep_map"]:
        pinyin = t["pinyin_rep_map"][toneless]
    elif toneless and toneless[0] in t["single_rep_map"]:
        pinyin = t["single_rep_map"][toneless[0]] + toneless[1:]
    else:
        pinyin = toneless
    phones = pinyin_to_phones().get(pinyin)
    if phones is None:
        raise rejected()
    return [phones[0], phones[1] + tone]


def _word_readings(word: str, pinyins: list[str], text: str) -> tuple[list[str], list[str]]:
    """chinese2's g2pW branch for one jieba word: its slice of the segment's readings, corrected by the
    polyphonic dictionary, split into initials and TONE3 finals (a mark is both)."""
    from pypinyin.contrib.tone_convert import to_finals_tone3, to_initials

    initials: list[str] = []
    finals: list[str] = []
    for pinyin in correct_pronunciation(word, pinyins):
        if not pinyin:
            raise TextRejected(f"no reading for {word!r} in {text!r} (upstream fails on it): rewrite that word")
        if pinyin[0].isalpha():
            initials.append(to_initials(pinyin))
            finals.append(to_finals_tone3(pinyin, neutral_tone_with_five=True))
        else:
            initials.append(pinyin)
            finals.append(pinyin)
    return initials, finals


def _segment_phones(
    segment: str, erhua: bool, tokenizer: Any, text: str, g2pw: Any = None
) -> tuple[list[str], list[int]]:
    """One segment (text up to and including a mark): jieba words, readings (per word from pypinyin, or the
    whole segment through ``g2pw``), sandhi, erhua (v2), phones."""
    segment = _LATIN.sub("", segment)
    words = pre_merge([(w, p) for w, p in tokenizer.lcut(segment)], _finals)
    pinyins = None if g2pw is None else segment_pinyin(segment, g2pw)
    phones: list[str] = []
    word2ph: list[int] = []
    end = 0
    for word, pos in words:
        start, end = end, end + len(word)  # the word's slice of the segment's readings (upstream's counter)
        if pos == "eng":
            continue
        if pinyins is None:
            initials, finals = _readings(word)
        else:
            initials, finals = _word_readings(word, pinyins[start:end], text)
        finals = modify_tones(word, pos, finals, tokenizer.tokenizer.lcut_for_search)
        if erhua:
            finals = _erhua(word, pos, finals)
        for initial, final in zip(initials, finals):
            syllable = _syllable_phones(initial, final, word, text)
            phones += syllable
            word2ph.append(len(syllable))
    return phones, word2ph


def g2p(
    norm_text: str,
    version: str,
    *,
    g2pw_dir: str | Path | None = None,
    bert_dir: str | Path | None = None,
    no_g2pw: bool = False,
    cache_root: str | Path | None = None,
) -> tuple[list[str], list[int]]:
    """Phones and ``word2ph`` of a normalised text (one entry per character: 2, or 1 for a mark).

    Raises :class:`TextRejected` for a character pypinyin has no table reading for (upstream drops the
    line: 噷, 兙), and for a version other than v1 with neither ``g2pw_dir`` nor ``no_g2pw`` (see the module
    docstring). ``bert_dir``: the tokenizer folder g2pW uses (default: beside ``g2pw_dir``, as upstream);
    ``cache_root``: where jieba_fast's dictionary cache goes (default: gsv-ray's cache root)."""
    erhua = _erhua_mode(version, g2pw_dir, no_g2pw)
    marks = re.escape(_MARKS)
    segments = [s for s in re.split(rf"(?<=[{marks}])\s*", norm_text) if s.strip() != ""]
    if not segments:
        return [], []
    g2pw = _g2pw(version, g2pw_dir, bert_dir, no_g2pw)
    tokenizer = _tokenizer(str(_jieba_cache_dir(cache_root)))
    phones: list[str] = []
    word2ph: list[int] = []
    for segment in segments:
        seg_phones, seg_word2ph = _segment_phones(segment, erhua, tokenizer, norm_text, g2pw)
        phones += seg_phones
        word2ph += seg_word2ph
    return phones, word2ph
