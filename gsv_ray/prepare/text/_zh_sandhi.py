"""Mandarin tone sandhi as upstream applies it to jieba words and pypinyin finals (TONE3, neutral = 5).

Two halves: :func:`pre_merge` joins jieba's words where a sandhi rule needs them together (不, 一,
reduplication, third-tone runs, 儿); :func:`modify_tones` rewrites one word's finals (不, 一, neutral
tone, third-tone runs). Written from the behaviour the reference describes; the word lists and character
classes are upstream's (``tables/zh/tables_tone_sandhi.json``).

A final is ``"<vowels><tone digit>"``. pypinyin gives an empty final for a few characters (噷, 兙); such a
line is rejected later, so here an empty final simply has no tone (never "3", never "4").
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from gsv_ray.prepare.text._zh_tables import membership, typed_tables

_SANDHI = "tables_tone_sandhi.json"
Words = list[list[str]]  # [[word, pos], ...]
Finals = Callable[[str], list[str]]  # a word's TONE3 finals (pypinyin)
Splitter = Callable[[str], list[str]]  # jieba's search-mode cut of a word


@lru_cache(maxsize=None)
def _words() -> tuple[frozenset[str], frozenset[str], str]:
    t = typed_tables(_SANDHI)
    return (
        frozenset(t["self.must_neural_tone_words"]),
        frozenset(t["self.must_not_neural_tone_words"]),
        t["self.punc"],
    )


def _tone(final: str) -> str:
    return final[-1:] if final else ""


def _set_tone(finals: list[str], i: int, tone: str) -> None:
    finals[i] = finals[i][:-1] + tone


def _all_third(finals: list[str]) -> bool:
    return all(_tone(f) == "3" for f in finals)


# --- pre-merge --------------------------------------------------------------------------------------------


def _merge_bu(seg: Words) -> Words:
    """不 joins the word after it (不 at the end stays alone, tagged d)."""
    out: Words = []
    last = ""
    for word, pos in seg:
        if last == "不":
            word = last + word
        if word != "不":
            out.append([word, pos])
        last = word
    if last == "不":
        out.append([last, "d"])
    return out


def _merge_yi(seg: Words) -> Words:
    """Verb 一 verb (看一看) becomes one word, then a lone 一 joins the word after it.

    As upstream, the first pass indexes its output by the input position; where earlier merges shifted
    them apart and the index falls outside, the whole step is skipped (upstream catches the error)."""
    out: Words = []
    try:
        for i, (word, pos) in enumerate(seg):
            if 0 < i < len(seg) - 1 and word == "一" and seg[i - 1][0] == seg[i + 1][0] and seg[i - 1][1] == "v":
                out[i - 1][0] = out[i - 1][0] + "一" + out[i - 1][0]
            elif i >= 2 and seg[i - 1][0] == "一" and seg[i - 2][0] == word and pos == "v":
                continue
            else:
                out.append([word, pos])
    except IndexError:
        return seg
    merged: Words = []
    for word, pos in out:
        if merged and merged[-1][0] == "一":
            merged[-1][0] = merged[-1][0] + word
        else:
            merged.append([word, pos])
    return merged


def _merge_reduplication(seg: Words) -> Words:
    out: Words = []
    for word, pos in seg:
        if out and word == out[-1][0]:
            out[-1][0] = out[-1][0] + word
        else:
            out.append([word, pos])
    return out


def _merge_third_tones(seg: Words, finals_of: Finals, whole_words: bool) -> Words:
    """Two neighbouring third-tone words (``whole_words``: all syllables 3rd tone; else the last of one
    and the first of the next) join when together at most 3 characters and the first is no reduplication.
    A word with an empty final makes upstream's check fail: the step is skipped for the segment."""
    finals = [finals_of(word) for word, _ in seg]
    if any(not f or any(not x for x in f) for f in finals):
        return seg
    out: Words = []
    merged_last = [False] * len(seg)
    for i, (word, pos) in enumerate(seg):
        if whole_words:
            both = i > 0 and _all_third(finals[i - 1]) and _all_third(finals[i])
        else:
            both = i > 0 and _tone(finals[i - 1][-1]) == "3" and _tone(finals[i][0]) == "3"
        prev = seg[i - 1][0] if i > 0 else ""
        redup = len(prev) == 2 and prev[0] == prev[1]
        if both and not merged_last[i - 1] and not redup and len(prev) + len(word) <= 3:
            out[-1][0] = out[-1][0] + word
            merged_last[i] = True
        else:
            out.append([word, pos])
    return out


def _merge_er(seg: Words) -> Words:
    out: Words = []
    for i, (word, pos) in enumerate(seg):
        if i > 0 and word == "儿" and seg[i - 1][0] != "#":
            out[-1][0] = out[-1][0] + word
        else:
            out.append([word, pos])
    return out


def pre_merge(seg: list[tuple[str, str]], finals_of: Finals) -> Words:
    """jieba's (word, POS) list regrouped for the sandhi rules."""
    words = _merge_bu([[w, p] for w, p in seg])
    words = _merge_yi(words)
    words = _merge_reduplication(words)
    words = _merge_third_tones(words, finals_of, whole_words=True)
    words = _merge_third_tones(words, finals_of, whole_words=False)
    return _merge_er(words)


# --- per-word tone changes --------------------------------------------------------------------------------


def _bu(word: str, finals: list[str]) -> None:
    if len(word) == 3 and word[1] == "不":  # 看不懂
        _set_tone(finals, 1, "5")
        return
    for i, char in enumerate(word):
        if char == "不" and i + 1 < len(word) and _tone(finals[i + 1]) == "4":  # 不怕
            _set_tone(finals, i, "2")


def _yi(word: str, finals: list[str]) -> None:
    if "一" in word and all(c.isnumeric() for c in word if c != "一"):  # a number: 一零零
        return
    if len(word) == 3 and word[1] == "一" and word[0] == word[-1]:  # 看一看
        _set_tone(finals, 1, "5")
    elif word.startswith("第一"):
        _set_tone(finals, 1, "1")
    else:
        for i, char in enumerate(word):
            if char == "一" and i + 1 < len(word):
                if _tone(finals[i + 1]) == "4":  # 一段
                    _set_tone(finals, i, "2")
                elif word[i + 1] not in _words()[2]:  # 一天; before a mark it stays yi1
                    _set_tone(finals, i, "4")


def _split_in_two(word: str, split: Splitter) -> list[str]:
    """The word's shortest search-mode piece and the rest, in reading order."""
    first = sorted(split(word), key=len)[0]
    if word.find(first) == 0:
        return [first, word[len(first) :]]
    return [word[: -len(first)], first]


def _neutral_ending(word: str, pos: str, finals: list[str]) -> int | None:
    """The index of the syllable that a neutral-tone rule of upstream's chain makes tone 5, if any."""
    (particles, structural, aspect, aspect_pos, plural, plural_pos, place, place_pos, direction, direction_before,
     counters) = membership(_SANDHI, "ToneSandhi._neural_sandhi")[1:]  # fmt: skip
    must_not = _words()[1]
    last = word[-1] if word else ""
    ge = word.find("个")
    if last and (last in particles or last in structural):  # 吧 呢 …, 的 地 得
        return len(finals) - 1
    if len(word) == 1 and word in aspect and pos in aspect_pos:  # 走了 看着 去过
        return len(finals) - 1
    if len(word) > 1 and last in plural and pos in plural_pos and word not in must_not:  # 我们 桌子
        return len(finals) - 1
    if len(word) > 1 and last in place and pos in place_pos:  # 桌上 地下 家里
        return len(finals) - 1
    if len(word) > 1 and last in direction and word[-2] in direction_before:  # 上来 下去
        return len(finals) - 1
    if (ge >= 1 and (word[ge - 1].isnumeric() or word[ge - 1] in counters)) or word == "个":  # 个 as a counter
        return ge
    if word in _words()[0] or word[-2:] in _words()[0]:
        return len(finals) - 1
    return None


def _neutral(word: str, pos: str, finals: list[str], split: Splitter) -> list[str]:
    """Reduplicated nouns/verbs/adjectives (奶奶 试试), particles, suffixes and the word lists -> tone 5."""
    pos_classes = membership(_SANDHI, "ToneSandhi._neural_sandhi")[0]
    for j in range(1, len(word)):
        if word[j] == word[j - 1] and pos[:1] in pos_classes and word not in _words()[1]:
            _set_tone(finals, j, "5")
    at = _neutral_ending(word, pos, finals)
    if at is not None:
        _set_tone(finals, at, "5")
    pieces = _split_in_two(word, split)
    halves = [finals[: len(pieces[0])], finals[len(pieces[0]) :]]
    for piece, half in zip(pieces, halves):
        if piece in _words()[0] or piece[-2:] in _words()[0]:
            _set_tone(half, len(half) - 1, "5")
    return halves[0] + halves[1]


def _third(word: str, finals: list[str], split: Splitter) -> list[str]:
    """Third tone before third tone -> second, by the word's inner structure (蒙古/包, 纸/老虎, 所有/人)."""
    if len(word) == 2 and _all_third(finals):
        _set_tone(finals, 0, "2")
    elif len(word) == 3:
        pieces = _split_in_two(word, split)
        if _all_third(finals):
            if len(pieces[0]) == 2:
                _set_tone(finals, 0, "2")
                _set_tone(finals, 1, "2")
            elif len(pieces[0]) == 1:
                _set_tone(finals, 1, "2")
        else:
            halves = [finals[: len(pieces[0])], finals[len(pieces[0]) :]]
            for i, half in enumerate(halves):
                if _all_third(half) and len(half) == 2:  # 所有/人
                    _set_tone(half, 0, "2")
                elif i == 1 and not _all_third(half) and _tone(half[0]) == "3" and _tone(halves[0][-1]) == "3":
                    _set_tone(halves[0], len(halves[0]) - 1, "2")  # 好/喜欢
            finals = halves[0] + halves[1]
    elif len(word) == 4:  # an idiom: two pairs
        for start in (0, 2):
            if _all_third(finals[start : start + 2]):
                _set_tone(finals, start, "2")
    return finals


def modify_tones(word: str, pos: str, finals: list[str], split: Splitter) -> list[str]:
    """One word's finals after the 不, 一, neutral-tone and third-tone rules (in that order)."""
    finals = list(finals)
    _bu(word, finals)
    _yi(word, finals)
    finals = _neutral(word, pos, finals, split)
    return _third(word, finals, split)
