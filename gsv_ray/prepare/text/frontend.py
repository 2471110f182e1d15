"""The language-independent core of upstream's text step (``1-get-text.py`` + ``text/cleaner.py``).

* :func:`parse_list`: a ``.list`` file's lines ``wav|speaker|language|text`` -> :class:`ListLine`
  (exactly 4 ``|`` fields; the language code mapped as upstream maps it; the utterance name is the
  wav path's base name after upstream's ``clean_path``), with one :class:`ListProblem` per line
  upstream skips.
* :func:`clean_text`: ``(phones, word2ph, norm_text)`` of one text as upstream's ``clean_text``
  computes it: the version's language modules and symbol table, unknown languages as en with
  ``" "``, zh's ``￥``/``^`` markers (``SP2``/``SP3``), the en "fewer than 4 phones -> ``,`` in front"
  rule, zh/yue's ``word2ph`` checks, unknown phones -> ``UNK``. Raises :class:`TextRejected` where
  upstream raises (the line is dropped).
* :func:`name2text_line` / :func:`render_name2text`: the exact ``2-name2text.txt`` format.

Language modules (``gsv_ray.prepare.text.<lang>``) are imported only when a line of that language
is cleaned, so a missing optional package is one error naming the ``prepare`` extra.
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from gsv_ray.errors import ConfigError
from gsv_ray.prepare.text.base import LanguageModule, TextRejected, table_path
from gsv_ray.resources import symbol_lookup

__all__ = [
    "LANGUAGE_CODES",
    "EXTRA_FIX",
    "ListLine",
    "ListProblem",
    "CleanedText",
    "LanguageUnavailable",
    "utterance_name",
    "pre_replace",
    "parse_list",
    "language_module",
    "languages_of",
    "symbol_set",
    "clean_text",
    "name2text_line",
    "render_name2text",
]

#: 1-get-text.py's ``language_v1_to_language_v2``: the codes a .list may use; any other is skipped.
LANGUAGE_CODES: Mapping[str, str] = MappingProxyType(
    {
        **dict.fromkeys(("ZH", "zh"), "zh"),
        **dict.fromkeys(("JP", "jp", "JA", "ja"), "ja"),
        **dict.fromkeys(("EN", "En", "en"), "en"),
        **dict.fromkeys(("KO", "Ko", "ko"), "ko"),
        **dict.fromkeys(("yue", "YUE", "Yue"), "yue"),
    }
)
EXTRA_FIX = "install the text front-end's packages: pip install 'gsv-ray[prepare]'"


class LanguageUnavailable(ConfigError):
    """A language's front-end cannot be imported here (a package of the ``prepare`` extra is missing,
    or this gsv-ray has no front-end for it)."""


@dataclass(frozen=True)
class ListLine:
    """One usable ``.list`` line: ``lineno`` (1-based), the ``wav`` field as written, ``name`` (the
    utterance name: the wav's base name), ``speaker``, ``language`` (mapped: en/ja/ko/yue/zh), ``text``."""

    lineno: int
    wav: str
    name: str
    speaker: str
    language: str
    text: str


@dataclass(frozen=True)
class ListProblem:
    """A ``.list`` line upstream skips: ``reason`` is a short tag (``bad_fields``, ``unknown_language``),
    ``message`` one line a user can act on."""

    lineno: int
    reason: str
    message: str
    name: str | None = None


@dataclass(frozen=True)
class CleanedText:
    """``clean_text``'s result: the phones (after the UNK mapping), ``word2ph`` (zh/yue) and ``norm_text``."""

    phones: tuple[str, ...]
    word2ph: tuple[int, ...] | None
    norm_text: str


def _clean_path(path: str) -> str:
    """Upstream's ``tools.my_utils.clean_path`` on a POSIX system (where the goldens were made)."""
    while path.endswith(("\\", "/")):
        path = path[:-1]
    path = path.replace("\\", "/")
    return path.strip(" ").strip("'").strip("\n").strip('"').strip(" ").strip("\u202a")


def utterance_name(wav: str) -> str:
    """The utterance name upstream derives from a ``.list`` wav path: the base name of ``clean_path(wav)``
    (extension kept: ``wavs/a.flac`` -> ``a.flac``)."""
    return _clean_path(wav).rsplit("/", 1)[-1]


def pre_replace(text: str) -> str:
    """1-get-text.py's replacement before ``clean_text``: ``%`` -> ``-``, ``￥`` -> ``,``."""
    return text.replace("%", "-").replace("￥", ",")


def parse_list(content: str) -> tuple[list[ListLine], list[ListProblem]]:
    """A ``.list`` file's text (as read, UTF-8) -> its usable lines and the lines upstream skips, in order.

    As 1-get-text.py: the content is stripped of newlines at both ends and split on ``\\n``; a line must
    split into exactly 4 fields on ``|``; the language code must be one of :data:`LANGUAGE_CODES`."""
    lines: list[ListLine] = []
    problems: list[ListProblem] = []
    for lineno, line in enumerate(content.strip("\n").split("\n"), 1):
        fields = line.split("|")
        if len(fields) != 4:
            if line.strip():
                problems.append(
                    ListProblem(
                        lineno,
                        "bad_fields",
                        f"line {lineno} has {len(fields)} '|'-separated fields, not 4 (wav|speaker|language|text)",
                    )
                )
            continue
        wav, speaker, code, text = fields
        name = utterance_name(wav)
        if code not in LANGUAGE_CODES:
            known = "/".join(sorted(set(LANGUAGE_CODES.values())))
            message = f"line {lineno} ({name}): language {code!r} is not one GPT-SoVITS trains ({known})"
            problems.append(ListProblem(lineno, "unknown_language", message, name))
            continue
        lines.append(ListLine(lineno, wav, name, speaker, LANGUAGE_CODES[code], text))
    return lines, problems


@functools.cache
def _cleaner_maps() -> tuple[Mapping[str, str], Mapping[str, str], tuple[tuple[str, str, str], ...]]:
    """From the packaged ``cleaner.py`` tables: (v1's language->module map, the other versions' map, the
    special markers ``(char, language, symbol)``)."""
    tables = json.loads(table_path("common", "tables_cleaner.json").read_text(encoding="utf-8"))["sources"][0]
    maps = [t["value"] for t in tables["tables"] if t["name"] == "language_module_map" and t["scope"] == "clean_text"]
    special = next(t["value"] for t in tables["tables"] if t["name"] == "special")
    return MappingProxyType(maps[0]), MappingProxyType(maps[1]), tuple(tuple(s) for s in special)


def symbol_set(version: str) -> str:
    """The phone table a version uses: ``v1`` for v1, ``v2`` for every other version string."""
    return "v1" if version == "v1" else "v2"


def languages_of(version: str) -> tuple[str, ...]:
    """The languages ``clean_text`` has a module for under ``version`` (v1: zh, ja, en)."""
    v1, other, _ = _cleaner_maps()
    return tuple(v1 if version == "v1" else other)


def language_module(language: str) -> LanguageModule:
    """``gsv_ray.prepare.text.<language>``, imported now; :class:`LanguageUnavailable` (one line naming
    the ``prepare`` extra) when it or a package it needs is missing."""
    module = f"{__package__}.{language}"
    try:
        return importlib.import_module(module)  # type: ignore[return-value]
    except ModuleNotFoundError as e:
        if e.name == module:
            raise LanguageUnavailable(
                f"this gsv-ray has no text front-end for {language!r}", fix="update gsv-ray, or leave those lines out"
            ) from e
        raise LanguageUnavailable(
            f"the {language} text front-end needs the package {e.name!r}, which is not installed", fix=EXTRA_FIX
        ) from e


def _checked_word2ph(language: str, phones: Sequence[str], word2ph: Sequence[int] | None, norm: str) -> None:
    """cleaner.py's asserts for zh and yue, as :class:`TextRejected`."""
    if word2ph is None or sum(word2ph) != len(phones):
        got = "none" if word2ph is None else f"sum {sum(word2ph)}"
        raise TextRejected(f"{language}: word2ph ({got}) does not cover the {len(phones)} phones of {norm!r}")
    if len(norm) != len(word2ph):
        raise TextRejected(f"{language}: {len(word2ph)} word2ph entries for the {len(norm)} characters of {norm!r}")


def _clean_special(text: str, marker: str, target: str, module: LanguageModule, version: str) -> CleanedText:
    """cleaner.py's ``clean_special``: the marker read as ``,``, every ``,`` phone -> ``target``; no UNK
    mapping (upstream asserts every phone is in the table)."""
    norm = module.normalize(text.replace(marker, ","), version)
    phones, word2ph = module.g2p(norm, version)
    table = symbol_lookup(symbol_set(version))
    unknown = [p for p in phones if p not in table]
    if unknown:
        raise TextRejected(f"phone {unknown[0]!r} is not in the {symbol_set(version)} table (text with {marker!r})")
    out = tuple(target if p == "," else p for p in phones)
    return CleanedText(out, None if word2ph is None else tuple(word2ph), norm)


def clean_text(
    text: str,
    language: str,
    version: str,
    *,
    load: Callable[[str], LanguageModule] = language_module,
) -> CleanedText:
    """Upstream's ``clean_text(text, language, version)`` (``text`` after :func:`pre_replace`).

    ``load`` returns a language's module (default: :func:`language_module`). Raises :class:`TextRejected`
    where upstream raises, :class:`LanguageUnavailable` when the module cannot be imported."""
    v1_map, other_map, special = _cleaner_maps()
    if language not in (v1_map if version == "v1" else other_map):
        language, text = "en", " "
    module = load(language)
    for marker, marker_language, target in special:
        if marker in text and language == marker_language:
            return _clean_special(text, marker, target, module, version)
    norm = module.normalize(text, version)
    phones, word2ph = module.g2p(norm, version)
    phones = list(phones)
    if language in ("zh", "yue"):
        _checked_word2ph(language, phones, word2ph, norm)
    else:
        if language == "en" and len(phones) < 4:
            phones = [","] + phones
        word2ph = None
    table = symbol_lookup(symbol_set(version))
    return CleanedText(
        tuple(p if p in table else "UNK" for p in phones), None if word2ph is None else tuple(word2ph), norm
    )


def name2text_line(name: str, cleaned: CleanedText) -> str:
    """One ``2-name2text.txt`` line: ``name \\t phones \\t repr(word2ph) \\t norm_text`` (word2ph as a Python
    list, or ``None``)."""
    word2ph = "None" if cleaned.word2ph is None else repr(list(cleaned.word2ph))
    return f"{name}\t{' '.join(cleaned.phones)}\t{word2ph}\t{cleaned.norm_text}"


def render_name2text(lines: Sequence[str]) -> bytes:
    """The file: lines joined by ``\\n``, ending in ``\\n``, UTF-8 (what 1-get-text.py writes)."""
    return ("\n".join(lines) + "\n").encode("utf-8")
