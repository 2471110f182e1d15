"""Mandarin text normalisation as upstream's zh normaliser does it (sentences, numbers, symbols).

Written from the behaviour described in the reference (TEXT_FRONTEND.md, "Mandarin (zh)") and the
goldens; the constants (digit names, units, quantifiers, measure words, replacements, the traditional
-> simplified table) are upstream's, read from ``tables/zh/``. Each ``_say_*`` function turns one
regular-expression match into Chinese words; :func:`normalize_sentences` applies them in upstream's order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

from gsv_ray.prepare.text._zh_tables import replace_pairs, traditional_to_simplified, typed_tables

_NORM = "tables_zh_normalization.json"

# --- the patterns (the logic; the reference deliberately keeps only the constants as data) ---------------
_SENTENCE_END = re.compile(r"([：、，；。？！,;?!][”’]?)")
_DROPPED_AT_SPLIT = re.compile(r"[——《》【】<>{}()（）#&@“”^_|\\]")
_DROPPED_AFTER = re.compile(r"[-——《》【】<=>{}()（）#&@“”^_|\\]")
_NUM = r"(-?)((\d+)(\.\d+)?)|(\.(\d+))"  # sign, number (integer part, decimals) | a bare decimal
_NUMBER = re.compile(_NUM)
_DECIMAL = re.compile(r"(-?)((\d+)(\.\d+))|(\.(\d+))")
_NEGATIVE_INTEGER = re.compile(r"(-)(\d+)")
_CODE_DIGITS = re.compile(r"\d{3}\d*")  # 3+ digits left over: a code, read digit by digit
_HHMM = r"([0-1]?[0-9]|2[0-3]):([0-5][0-9])(:([0-5][0-9]))?"
_TIME = re.compile(_HHMM)
_TIME_RANGE = re.compile(_HHMM + r"(~|-)" + _HHMM)
_DATE = re.compile(r"(\d{4}|\d{2})年((0?[1-9]|1[0-2])月)?(((0?[1-9])|((1|2)[0-9])|30|31)([日号]))?")
_DATE_SEPARATED = re.compile(r"(\d{4})([- /.])(0[1-9]|1[012])\2(0[1-9]|[12][0-9]|3[01])")
_FRACTION = re.compile(r"(-?)(\d+)/(\d+)")
_PERCENT = re.compile(r"(-?)(\d+(\.\d+)?)%")
_SUPERSCRIPT = "⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ"
_OPERAND = rf"((-?)((\d+)(\.\d+)?[{_SUPERSCRIPT}]*)|(\.\d+[{_SUPERSCRIPT}]*)|([A-Za-z][{_SUPERSCRIPT}]*))"
_ARITHMETIC = re.compile(_OPERAND + r"([\+\-\×÷=])" + _OPERAND)
_POWER = re.compile(rf"[{_SUPERSCRIPT}]+")
_MOBILE = re.compile(r"(?<!\d)((\+?86 ?)?1([38]\d|5[0-35-9]|7[678]|9[89])\d{8})(?!\d)")
_LANDLINE = re.compile(r"(?<!\d)((0(10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})(?!\d)")
_SERVICE_NUMBER = re.compile(r"(400)(-)?\d{3}(-)?\d{4}")
_RANGE = re.compile(r"(?<![\d\+\-\×÷=])((-?)((\d+)(\.\d+)?))[-~]((-?)((\d+)(\.\d+)?))(?![\d\+\-\×÷=])")
_UNITS_RE = r"(%|°C|℃|度|摄氏度|cm2|cm²|cm3|cm³|cm|db|ds|kg|km|m2|m²|m³|m3|ml|m|mm|s)"
_TILDE_RANGE = re.compile(rf"({_NUM}){_UNITS_RE}[~]({_NUM}){_UNITS_RE}")
_VERSION = re.compile(r"((\d+)(\.\d+)(\.\d+)?(\.\d+)+)")
_TEMPERATURE = re.compile(r"(-?)(\d+(\.\d+)?)(°C|℃|度|摄氏度)")


@lru_cache(maxsize=None)
def _quantified_number() -> re.Pattern[str]:
    """A positive integer before a counter word (``COM_QUANTIFIERS``), optionally with 多/余/几/+."""
    return re.compile(r"(\d+)([多余几\+])?" + typed_tables(_NORM)["COM_QUANTIFIERS"])


@lru_cache(maxsize=None)
def _fullwidth_to_ascii() -> dict[int, int | str]:
    """Full-width Latin letters, digits and the ideographic space -> ASCII (punctuation stays full-width)."""
    t = typed_tables(_NORM)
    table: dict[int, int | str] = {k: v for k, v in t["F2H_ASCII_LETTERS"]}
    table.update({k: v for k, v in t["F2H_DIGITS"]})
    table.update({ord(k): v for k, v in t["F2H_SPACE"].items()})
    return table


# --- numbers --------------------------------------------------------------------------------------------


def digits(value: str, alt_one: bool = False) -> str:
    """Digit by digit (二零二四); ``alt_one``: 1 as 幺, as in phone numbers and codes."""
    names = typed_tables(_NORM)["DIGITS"]
    out = "".join(names[d] for d in value)
    return out.replace("一", "幺") if alt_one else out


def _cardinal_parts(value: str, use_zero: bool = True) -> list[str]:
    """The words of an integer string: the largest unit below its length splits it in two, recursively."""
    stripped = value.lstrip("0")
    names = typed_tables(_NORM)["DIGITS"]
    if not stripped:
        return []
    if len(stripped) == 1:
        return [names["0"], names[stripped]] if use_zero and len(stripped) < len(value) else [names[stripped]]
    units = dict(typed_tables(_NORM)["UNITS"])
    largest = max(power for power in units if power < len(stripped))
    return _cardinal_parts(value[:-largest]) + [units[largest]] + _cardinal_parts(value[-largest:])


def cardinal(value: str) -> str:
    """An integer string in words (一百零五, 十五 not 一十五); all zeros is 零; empty stays empty."""
    if not value:
        return ""
    value = value.lstrip("0")
    if not value:
        return typed_tables(_NORM)["DIGITS"]["0"]
    parts = _cardinal_parts(value)
    if len(parts) >= 2 and parts[0] == "一" and parts[1] == "十":
        parts = parts[1:]
    return "".join(parts)


def number(value: str) -> str:
    """A number string (integer or decimal) in words: 3.20 -> 三点二, .5 -> 零点五."""
    pieces = value.split(".")
    if len(pieces) > 2:
        raise ValueError(f"{value!r} has more than one decimal point")
    out = cardinal(pieces[0])
    decimals = pieces[1].rstrip("0") if len(pieces) == 2 else ""
    if decimals:
        out = (out or "零") + "点" + digits(decimals)
    return out


def _clock_part(value: str) -> str:
    """Minutes/seconds keep a leading zero as 零 (05 -> 零五)."""
    out = number(value.lstrip("0"))
    return "零" + out if value.startswith("0") else out


def _say_clock(hour: str, minute: str, second: str | None, half_from: str) -> str:
    out = f"{number(hour)}点"
    if minute.lstrip("0"):
        out += "半" if int(half_from) == 30 else f"{_clock_part(minute)}分"
    if second and second.lstrip("0"):
        out += f"{_clock_part(second)}秒"
    return out


def _say_time(m: re.Match[str]) -> str:
    """3:30 -> 三点半; a range 8:30-9:30 -> …至…; as upstream, "半" in the second half of a range
    follows the first half's minutes."""
    out = _say_clock(m.group(1), m.group(2), m.group(4), m.group(2))
    if len(m.groups()) > 5:
        out += "至" + _say_clock(m.group(6), m.group(7), m.group(9), m.group(2))
    return out


def _say_date(m: re.Match[str]) -> str:
    out = f"{digits(m.group(1))}年"
    if m.group(3):
        out += f"{cardinal(m.group(3))}月"
    if m.group(5):
        out += f"{cardinal(m.group(5))}{m.group(9)}"
    return out


def _say_separated_date(m: re.Match[str]) -> str:
    return f"{digits(m.group(1))}年{cardinal(m.group(3))}月{cardinal(m.group(4))}日"


def _sign(s: str | None) -> str:
    return "负" if s else ""


def _say_fraction(m: re.Match[str]) -> str:
    return f"{_sign(m.group(1))}{number(m.group(3))}分之{number(m.group(2))}"


def _say_percent(m: re.Match[str]) -> str:
    return f"{_sign(m.group(1))}百分之{number(m.group(2))}"


def _say_negative(m: re.Match[str]) -> str:
    return f"{_sign(m.group(1))}{number(m.group(2))}"


def _say_number(m: re.Match[str]) -> str:
    if m.group(5):
        return number(m.group(5))
    return f"{_sign(m.group(1))}{number(m.group(2))}"


def _say_quantified(m: re.Match[str]) -> str:
    said = number(m.group(1))
    more = "多" if m.group(2) == "+" else (m.group(2) or "")
    return f"{'两' if said == '二' else said}{more}{m.group(3)}"


def _say_code(m: re.Match[str]) -> str:
    return digits(m.group(0), alt_one=True)


def _say_arithmetic(m: re.Match[str]) -> str:
    return m.group(1) + typed_tables(_NORM)["asmd_map"][m.group(8)] + m.group(9)


def _say_power(m: re.Match[str]) -> str:
    powers = typed_tables(_NORM)["power_map"]
    return "的" + "".join(powers[c] for c in m.group(0)) + "次方"


def _say_phone(m: re.Match[str]) -> str:
    return "，".join(digits(part, alt_one=True) for part in m.group(0).split("-"))


def _say_mobile(m: re.Match[str]) -> str:
    return "，".join(digits(part, alt_one=True) for part in m.group(0).strip("+").split())


def _say_range(m: re.Match[str]) -> str:
    return f"{_NUMBER.sub(_say_number, m.group(1))}到{_NUMBER.sub(_say_number, m.group(6))}"


def _say_tilde_range(m: re.Match[str]) -> str:
    return m.group(0).replace("~", "至")


def _say_version(m: re.Match[str]) -> str:
    return "".join("点" if c == "." else number(c) for c in m.group(1))


def _say_temperature(m: re.Match[str]) -> str:
    unit = "摄氏度" if m.group(4) == "摄氏度" else "度"
    return f"{'零下' if m.group(1) else ''}{number(m.group(2))}{unit}"


def _measure_words(sentence: str) -> str:
    """Unit abbreviations -> words by plain replacement, in the table's order (so any ``s`` becomes 秒)."""
    for abbreviation, words in typed_tables(_NORM)["measure_dict"].items():
        sentence = sentence.replace(abbreviation, words)
    return sentence


def _arithmetic(sentence: str) -> str:
    while _ARITHMETIC.search(sentence):
        sentence = _ARITHMETIC.sub(_say_arithmetic, sentence)
    return sentence


def _steps() -> tuple[Callable[[str], str], ...]:
    """The number and symbol verbalisations in upstream's order."""
    return (
        lambda s: _DATE.sub(_say_date, s),
        lambda s: _DATE_SEPARATED.sub(_say_separated_date, s),
        lambda s: _TIME_RANGE.sub(_say_time, s),
        lambda s: _TIME.sub(_say_time, s),
        lambda s: _TILDE_RANGE.sub(_say_tilde_range, s),
        lambda s: _TEMPERATURE.sub(_say_temperature, s),
        _measure_words,
        _arithmetic,
        lambda s: _POWER.sub(_say_power, s),
        lambda s: _FRACTION.sub(_say_fraction, s),
        lambda s: _PERCENT.sub(_say_percent, s),
        lambda s: _MOBILE.sub(_say_mobile, s),
        lambda s: _LANDLINE.sub(_say_phone, s),
        lambda s: _SERVICE_NUMBER.sub(_say_phone, s),
        lambda s: _RANGE.sub(_say_range, s),
        lambda s: _NEGATIVE_INTEGER.sub(_say_negative, s),
        lambda s: _VERSION.sub(_say_version, s),
        lambda s: _DECIMAL.sub(_say_number, s),
        lambda s: _quantified_number().sub(_say_quantified, s),
        lambda s: _CODE_DIGITS.sub(_say_code, s),
        lambda s: _NUMBER.sub(_say_number, s),
    )


# --- sentences ------------------------------------------------------------------------------------------


def split_sentences(text: str) -> list[str]:
    """Spaces and brackets/quotes removed, then one sentence after each sentence mark."""
    for old, new in replace_pairs(_NORM, "TextNormalizer._split"):
        text = text.replace(old, new)
    text = _DROPPED_AT_SPLIT.sub("", text)
    text = _SENTENCE_END.sub(r"\1\n", text).strip()
    return [s.strip() for s in re.split(r"\n+", text)]


def _post_replace(sentence: str) -> str:
    """``/`` -> 每, circled digits and Greek letters -> words, operators -> words; then symbols dropped."""
    for old, new in replace_pairs(_NORM, "TextNormalizer._post_replace"):
        sentence = sentence.replace(old, new)
    return _DROPPED_AFTER.sub("", sentence)


def normalize_sentence(sentence: str) -> str:
    """One sentence: traditional -> simplified, full-width -> ASCII, numbers and symbols in words."""
    t2s = traditional_to_simplified()
    sentence = "".join(t2s.get(c, c) for c in sentence).translate(_fullwidth_to_ascii())
    for step in _steps():
        sentence = step(sentence)
    return _post_replace(sentence)


def normalize_sentences(text: str) -> list[str]:
    """The text as normalised sentences (still with their original punctuation marks)."""
    return [normalize_sentence(s) for s in split_sentences(text)]
