"""English: upstream's ``english.py`` front-end (the same for v1 and v2), offline.

``normalize`` spells out numbers, units, money, times and capitals the way upstream's English normaliser does
(its quirks included: ``;`` and ``:`` vanish rather than becoming commas, ``120km/h`` reads "kilometersh");
``g2p`` turns the normalised text into ARPAbet phones: CMUdict (upstream's merged dictionary, package data),
a name dictionary for Titlecase words, spelling of short unknown words, the possessive ``'s``, compound
splitting with wordsegment and, last, g2p_en's neural model (its weights read from the installed package).

Nothing here touches the network: g2p_en and nltk are never imported in a way that downloads (g2p_en's
``__init__`` calls ``nltk.download`` when NLTK data is missing, so its module is not imported at all; its
data files are read from the package folder). Homographs need a part-of-speech tagger: NLTK's
``averaged_perceptron_tagger_eng`` when the user's NLTK data has it, else :func:`tag_all_nn`, the stand-in
the goldens were made with (it decides only the homographs: "read", "used", "resume", "refuse" ...).

Latin text inside ja/ko/zh/yue lines never reaches this module upstream (ja spells it with OpenJTalk, ko
turns letters into Hangul names, zh/yue delete it), so no other language module needs it.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from gsv_ray.prepare.text.base import TextRejected, table_path
from gsv_ray.resources import symbol_lookup

log = logging.getLogger(__name__)

#: A part-of-speech tagger: one tag per token (Penn Treebank tags, as ``nltk.pos_tag`` gives).
PosTagger = Callable[[Sequence[str]], list[str]]


# ---------------------------------------------------------------------------------------------- tables


@lru_cache(maxsize=1)
def _english_json() -> list[dict[str, Any]]:
    """The literals of upstream's english.py and its number normaliser (``tables/en/tables_english.json``)."""
    return json.loads(table_path("en", "tables_english.json").read_text(encoding="utf-8"))["sources"]


def _literal(name: str, scope: str = "module") -> Any:
    """One named table of ``tables_english.json``."""
    for source in _english_json():
        for table in source["tables"]:
            if table["name"] == name and table["scope"] == scope:
                return table["value"]
    raise KeyError(f"tables_english.json has no table {name!r} in scope {scope!r}")


def _membership(scope: str, line: int) -> list[str]:
    """One membership literal (a set or list upstream tests with ``in``) of ``tables_english.json``."""
    for source in _english_json():
        for lit in source["membership_literals"]:
            if lit["scope"] == scope and lit["line"] == line:
                return lit["value"]
    raise KeyError(f"tables_english.json has no membership literal at {scope}:{line}")


def _read_tsv(path: Path) -> dict[str, list[str]]:
    """headword -> phones; phones split on single spaces (a leading empty phone is upstream's, kept)."""
    out: dict[str, list[str]] = {}
    opened = gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")
    with opened as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            out[fields[0]] = fields[1].split(" ")
    return out


@lru_cache(maxsize=1)
def _engdict() -> dict[str, list[str]]:
    """Upstream's runtime dictionary: cmudict.rep + cmudict-fast.rep + engdict-hot.rep, 143,199 keys."""
    return _read_tsv(table_path("en", "engdict_runtime.tsv.gz"))


@lru_cache(maxsize=1)
def _namedict() -> dict[str, list[str]]:
    """Upstream's name dictionary (19,929 names), consulted for Titlecase words only."""
    return _read_tsv(table_path("en", "namedict.tsv"))


@lru_cache(maxsize=1)
def _g2p_en_dir() -> Path:
    """The installed g2p_en package folder, found without importing it (its import may call nltk.download)."""
    spec = find_spec("g2p_en")
    if spec is None or not spec.submodule_search_locations:
        raise TextRejected("English needs the g2p_en package: pip install 'gsv-ray[prepare]'")
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def _homographs() -> dict[str, tuple[list[str], list[str], str]]:
    """word -> (pronunciation when the POS tag matches, otherwise, POS prefix): g2p_en's list plus
    upstream's two overrides (read -> VBP, complex -> JJ)."""
    out: dict[str, tuple[list[str], list[str], str]] = {}
    for line in (_g2p_en_dir() / "homographs.en").read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            continue
        word, first, other, pos = line.strip().split("|")
        out[word.lower()] = (first.split(), other.split(), pos)
    for word, (first, other, pos) in _literal("homograph2features[read|complex]", "en_G2p.__init__").items():
        out[word] = (first, other, pos)
    return out


@lru_cache(maxsize=1)
def _inflect() -> Any:
    import inflect

    return inflect.engine()


@lru_cache(maxsize=1)
def _segmenter() -> Any:
    """wordsegment's corpus, loaded once (its own ``load()`` fills module globals; an instance keeps ours)."""
    import wordsegment

    seg = wordsegment.Segmenter()
    seg.load()
    return seg


@lru_cache(maxsize=1)
def _tokenize() -> Callable[[str], list[str]]:
    from nltk.tokenize import TweetTokenizer

    return TweetTokenizer().tokenize


# -------------------------------------------------------------------------------------- normalisation

_PUNCTUATION = "!?…,.-"  # the six marks of the symbol tables


def _say(n: int | str, **kwargs: Any) -> str:
    """inflect's words for ``n``; a number inflect cannot read rejects the line (upstream raises)."""
    import inflect

    try:
        return _inflect().number_to_words(n, **kwargs)
    except inflect.NumOutOfRangeError as e:
        raise TextRejected(f"the number {str(n)[:40]} is too large to read out") from e


def _say_integer(match: re.Match[str]) -> str:
    """Plain integers: 1001-2999 read like years ("nineteen ninety-nine", "two thousand five"), others in
    full without "and"."""
    n = int(match.group(0))
    if not 1000 < n < 3000:
        return _say(n, andword="")
    if n == 2000:
        return "two thousand"
    if 2000 < n < 2010:
        return "two thousand " + _say(n % 100)
    if n % 100 == 0:
        return _say(n // 100) + " hundred"
    return _say(n, andword="", zero="oh", group=2).replace(", ", " ")


def _say_time(match: re.Match[str]) -> str:
    hours, minutes = int(match.group(1)), int(match.group(2))
    period = "a.m." if hours < 12 else "p.m."
    if hours > 12:
        hours -= 12
    if minutes == 0:
        return f"{_say(hours)} o'clock {period}"
    return f"{_say(hours)} {_say(minutes)} {period}"


def _say_measurement(match: re.Match[str]) -> str:
    number, unit = match.group(1), match.group(2)
    singular, plural = _literal("measurement_map")[unit]
    return f"{number} {singular if float(number) == 1 else plural}"


def _say_money(amount: str, units: tuple[str, str, str, str]) -> str:
    """``6.24`` -> "6 dollars and 24 cents" (digits read later); cents padded to two digits ("32.3" -> 30)."""
    parts = amount.replace(",", "").split(".")
    if len(parts) > 2:  # "1.2.3": not an amount; the digits are read as they stand
        return f"{amount} {units[1]}"
    whole, frac = parts if len(parts) == 2 else (parts[0], "")
    big = int(whole) if whole else 0
    small = int(frac.ljust(2, "0")) if frac else 0
    big_word = units[0] if big == 1 else units[1]
    small_word = units[2] if small == 1 else units[3]
    if big and small:
        return f"{big} {big_word} and {small} {small_word}"
    if small:
        return f"{small} {small_word}"
    return f"{big} {big_word}"


def _say_fraction(match: re.Match[str]) -> str:
    numerator, denominator = int(match.group(1)), int(match.group(2))
    if denominator == 2:
        word = _literal("denominator_part", "_expend_fraction") if numerator == 1 else "halves"
    else:
        word = _inflect().ordinal(_say(denominator)) + ("s" if numerator > 1 else "")
    return f"{numerator} {word}"


def _say_decimal(match: re.Match[str]) -> str:
    whole, frac = match.group(1), match.group(2)
    return f"{whole} point " + " ".join(_say(int(d)) for d in frac)


def _asmd(text: str) -> str:
    """``a + b`` (spaces around + - × ÷ =) -> "a plus b", repeated so chains read fully ("3 + 4 = 7")."""
    words = _literal("asmd_map")
    pattern = re.compile(r"(\d+(?:\.\d+)?) ([" + re.escape("".join(words)) + r"]) (\d+(?:\.\d+)?)")
    while (m := pattern.search(text)) is not None:
        text = text[: m.start()] + m.group(1) + words[m.group(2)] + m.group(3) + text[m.end() :]
    return text


_DOLLARS, _POUNDS = ("dollar", "dollars", "cent", "cents"), ("pound", "pounds", "penny", "pence")


def _units_pattern() -> str:
    """The unit alternation in the table's order (``km`` before ``km/h``: upstream's "kilometersh")."""
    return "|".join(re.escape(u) for u in _literal("measurement_map"))


def _expand_numbers(text: str) -> str:
    """Numbers, units, money, times, fractions and ordinals to words, in upstream's order."""
    text = re.sub(r"\b(\d+)\. ", lambda m: _say(_inflect().ordinal(m.group(1))) + ", ", text)
    text = _asmd(text)
    text = re.sub(r"(?:^|\s)-(?=\d)", "negative ", text)
    text = re.sub(r"\d[\d,]+\d", lambda m: m.group(0).replace(",", ""), text)
    text = re.sub(r"\b([01]?\d|2[0-3]):([0-5]\d)\b", _say_time, text)
    text = re.sub(rf"\b(\d+(?:\.\d+)?)({_units_pattern()})\b", _say_measurement, text)
    text = re.sub(r"£([\d.,]*\d)", lambda m: _say_money(m.group(1), _POUNDS), text)
    text = re.sub(r"([\d.,]*\d)£", lambda m: _say_money(m.group(1), _POUNDS), text)
    text = re.sub(r"\$([\d.,]*\d)", lambda m: _say_money(m.group(1), _DOLLARS), text)
    text = re.sub(r"([\d.,]*\d)\$", lambda m: _say_money(m.group(1), _DOLLARS), text)
    text = re.sub(r"(\d+)\.(\d+)", _say_decimal, text)
    text = re.sub(r"(\d+)/(\d+)", _say_fraction, text)
    text = re.sub(r"\d+(?:st|nd|rd|th)", lambda m: _say(m.group(0)), text)
    return re.sub(r"\d+", _say_integer, text)


def _spell_out(text: str) -> str:
    """After the numbers: accents off, % read, other characters deleted, i.e./e.g., capitals spaced."""
    text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    text = text.replace("%", " percent")
    text = re.sub(r"[^ A-Za-z'.,?!\-]", "", text)
    text = text.replace("i.e.", "that is").replace("e.g.", "for example")
    return re.sub(r"(?<=\S)(?=[A-Z])", " ", text)


def normalize(text: str, version: str) -> str:
    """Upstream's English ``norm_text`` (v1 and v2 alike): the text as words, one mark for a run of marks.

    The full-width ``。！？`` become ``.!?``; upstream's intended ``;:，`` -> ``,`` and curly-quote mappings
    never match (their keys are escaped as literals), so those characters are deleted instead.
    """
    del version  # identical for every version
    for old, new in _literal("rep_map").items():
        text = text.replace(old, new)  # the bracketed keys stay literal strings, as upstream escapes them
    text = _spell_out(_expand_numbers(text))
    marks = re.escape(_PUNCTUATION)
    return re.sub(rf"([{marks}\s])([{marks}])+", r"\1", text)


# ------------------------------------------------------------------------------------------------- g2p


def tag_all_nn(words: Sequence[str]) -> list[str]:
    """The POS stand-in the goldens were made with: every token ``NN`` (homographs get their non-verb
    reading: "read" -> R EH1 D, "refuse" -> R EH1 F Y UW2 Z)."""
    return ["NN"] * len(words)


@lru_cache(maxsize=1)
def _nltk_tagger() -> PosTagger | None:
    """NLTK's English averaged perceptron when the user's NLTK data has it (never downloaded), else None."""
    import nltk

    try:
        nltk.data.find("taggers/averaged_perceptron_tagger_eng/")
    except LookupError:
        return None
    from nltk.tag import PerceptronTagger

    tagger = PerceptronTagger(lang="eng")
    return lambda words: [tag for _, tag in tagger.tag(list(words))]


def default_pos_tagger() -> PosTagger:
    """NLTK's ``averaged_perceptron_tagger_eng`` if installed in the user's NLTK data, else :func:`tag_all_nn`."""
    return _nltk_tagger() or tag_all_nn


def _dict_letter(ch: str) -> list[str]:
    """One lowercase letter as the dictionary reads it."""
    phones = _engdict().get(ch)
    if phones is None:  # upstream raises KeyError; normalize() never lets such a letter through
        raise TextRejected(f"English g2p cannot spell the letter {ch!r}")
    return list(phones)


def _spelled(word: str) -> list[str]:
    """A short unknown word letter by letter ("a" reads EY1 here); other characters stay as they are."""
    eh = _literal("pron", "en_G2p.__call__")
    return [p for ch in word for p in (eh if ch == "a" else _dict_letter(ch) if ch.isalpha() else [ch])]


def _possessive(stem_phones: list[str]) -> list[str]:
    """``'s`` after a stem: S after a voiceless stop/fricative, AH0 Z after a sibilant, Z otherwise."""
    last = stem_phones[-1] if stem_phones else ""
    if last in _membership("en_G2p.qryword", 337):
        return [*stem_phones, "S"]
    if last in _membership("en_G2p.qryword", 340):
        return [*stem_phones, "AH0", "Z"]
    return [*stem_phones, "Z"]


def _lookup(token: str) -> list[str]:
    """A word that is not a homograph nor a single letter: dictionary, names, spelling, 's, compounds, model."""
    word = token.lower()
    if len(word) > 1 and word in _engdict():
        return list(_engdict()[word])
    if token.istitle() and word in _namedict():
        return list(_namedict()[word])
    if len(word) <= 3:
        return _spelled(word)
    if re.fullmatch(r"[a-z]+'s", word):
        return _possessive(_lookup(word[:-2]))
    pieces = _segmenter().segment(word)
    if len(pieces) == 1:
        return predict(word)
    return [p for piece in pieces for p in _lookup(piece)]


def _word(token: str, tag: str) -> list[str]:
    """The phones of one token (before cleanup)."""
    word = token.lower()
    if re.search("[a-z]", word) is None:
        return [word]
    if len(word) == 1:
        if token == "A":  # the capital letter; a lowercase "a" is the article (AH0)
            return list(_literal("pron", "en_G2p.__call__"))
        return _dict_letter(word)
    if word in _homographs():
        first, other, pos = _homographs()[word]
        matches = tag.startswith(pos) or (len(tag) < len(pos) and pos.startswith(tag))
        return list(first if matches else other)
    return _lookup(token)


def _cleanup(phones: list[str]) -> list[str]:
    """Drop g2p_en's structural tokens, <unk> -> UNK, ' -> -, and any phone outside the symbol table."""
    dropped = set(_membership("g2p", 366))
    replace = {"<unk>": "UNK", **_literal("rep_map", "replace_phs")}
    out = []
    for ph in phones:
        if ph in dropped:
            continue
        ph = replace.get(ph, ph)
        if ph in symbol_lookup("v2"):
            out.append(ph)
        else:
            log.info("English g2p: phone %r is not in the symbol table; dropped (as upstream)", ph)
    return out


def g2p(norm_text: str, version: str, *, pos_tagger: PosTagger | None = None) -> tuple[list[str], None]:
    """ARPAbet phones of ``normalize``'s output (v1 and v2 alike; word2ph is None for English).

    ``pos_tagger`` decides homographs only; default :func:`default_pos_tagger`. Upstream's cleaner puts
    ``,`` in front of a result shorter than 4 phones; that is the shared cleaner's job, not done here.
    """
    del version
    words = _tokenize()(norm_text)
    tags = (pos_tagger or default_pos_tagger())(words)
    phones: list[str] = []
    for token, tag in zip(words, tags, strict=True):
        phones.extend(_word(token, tag))
    return _cleanup(phones), None


# ------------------------------------------------------------------------------- g2p_en's neural model

_GRAPHEMES = ["<pad>", "<unk>", "</s>", *"abcdefghijklmnopqrstuvwxyz"]
_PHONEMES = ["<pad>", "<unk>", "<s>", "</s>"] + (
    "AA0 AA1 AA2 AE0 AE1 AE2 AH0 AH1 AH2 AO0 AO1 AO2 AW0 AW1 AW2 AY0 AY1 AY2 B CH D DH EH0 EH1 EH2 ER0 ER1 ER2 "
    "EY0 EY1 EY2 F G HH IH0 IH1 IH2 IY0 IY1 IY2 JH K L M N NG OW0 OW1 OW2 OY0 OY1 OY2 P R S SH T TH UH0 UH1 UH2 "
    "UW UW0 UW1 UW2 V W Y Z ZH"
).split()
_MAX_PHONES = 20  # g2p_en decodes at most 20 phones per word


@dataclass(frozen=True)
class _Gru:
    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray

    def step(self, x: np.ndarray, h: np.ndarray) -> np.ndarray:
        """One GRU step (PyTorch's gate layout r, z, n), in float32 as g2p_en computes it."""
        gi = np.matmul(x, self.w_ih.T) + self.b_ih
        gh = np.matmul(h, self.w_hh.T) + self.b_hh
        k = gi.shape[-1] // 3
        rz = 1 / (1 + np.exp(-(gi[:, : 2 * k] + gh[:, : 2 * k])))
        r, z = rz[:, :k], rz[:, k:]
        n = np.tanh(gi[:, 2 * k :] + r * gh[:, 2 * k :])
        return (1 - z) * n + z * h


@dataclass(frozen=True)
class _Seq2Seq:
    enc_emb: np.ndarray
    encoder: _Gru
    dec_emb: np.ndarray
    decoder: _Gru
    fc_w: np.ndarray
    fc_b: np.ndarray


@lru_cache(maxsize=1)
def _model() -> _Seq2Seq:
    """g2p_en's checkpoint (``checkpoint20.npz`` in the installed package), read with pickles refused."""
    with np.load(_g2p_en_dir() / "checkpoint20.npz", allow_pickle=False) as v:

        def gru(p: str) -> _Gru:
            return _Gru(v[f"{p}_w_ih"], v[f"{p}_w_hh"], v[f"{p}_b_ih"], v[f"{p}_b_hh"])

        model = _Seq2Seq(v["enc_emb"], gru("enc"), v["dec_emb"], gru("dec"), v["fc_w"], v["fc_b"])
    if model.fc_b.shape[0] != len(_PHONEMES) or model.enc_emb.shape[0] != len(_GRAPHEMES):
        raise TextRejected("g2p_en's checkpoint20.npz does not have the 2.1.0 vocabulary; install g2p_en==2.1.0")
    return model


def predict(word: str) -> list[str]:
    """g2p_en's neural pronunciation of one lowercase word (greedy decoding, at most 20 phones)."""
    m = _model()
    ids = [_GRAPHEMES.index(c) if c in _GRAPHEMES[3:] else 1 for c in word] + [2]
    h = np.zeros((1, m.encoder.w_hh.shape[1]), np.float32)
    for i in ids:
        h = m.encoder.step(m.enc_emb[[i]], h)
    x, out = m.dec_emb[[2]], []
    for _ in range(_MAX_PHONES):
        h = m.decoder.step(x, h)
        pred = int((np.matmul(h, m.fc_w.T) + m.fc_b).argmax())
        if pred == 3:
            break
        out.append(_PHONEMES[pred])
        x = m.dec_emb[[pred]]
    return out
