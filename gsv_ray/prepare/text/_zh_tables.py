"""Readers of the Mandarin data tables (``tables/zh/``), each loaded once per process."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from gsv_ray.prepare.text.base import table_path


@lru_cache(maxsize=None)
def typed_tables(file: str) -> dict[str, Any]:
    """``name -> value`` of a typed-JSON table file (``tables/zh/<file>``; the layout is in its README).

    A name defined by several upstream files (``rep_map`` in v1's and v2's module) keeps the first."""
    doc = json.loads(table_path("zh", file).read_text(encoding="utf-8"))
    out: dict[str, Any] = {}
    for source in doc["sources"]:
        for table in source["tables"]:
            out.setdefault(table["name"], table["value"])
    return out


@lru_cache(maxsize=None)
def membership(file: str, scope: str) -> tuple[Any, ...]:
    """The membership literals (character classes, POS sets) of one upstream function, in line order."""
    return tuple(m["value"] for m in _first_with_scope(file, "membership_literals", scope))


@lru_cache(maxsize=None)
def replace_pairs(file: str, scope: str) -> tuple[tuple[str, str], ...]:
    """The constant ``str.replace(old, new)`` pairs of one upstream function, in evaluation order."""
    return tuple((p["old"], p["new"]) for p in _first_with_scope(file, "replace_pairs_in_order", scope))


def _first_with_scope(file: str, kind: str, scope: str) -> list[dict[str, Any]]:
    """The ``kind`` entries of ``scope`` in the first upstream file that has any (v1's and v2's modules
    repeat some functions: the first is taken, not both)."""
    doc = json.loads(table_path("zh", file).read_text(encoding="utf-8"))
    for source in doc["sources"]:
        found = [entry for entry in source[kind] if entry["scope"] == scope]
        if found:
            return found
    return []


@lru_cache(maxsize=None)
def traditional_to_simplified() -> dict[str, str]:
    """Traditional -> simplified characters: the aligned rows of ``char_convert_pairs.tsv``, a later row
    overriding an earlier one (10,703 keys)."""
    out: dict[str, str] = {}
    for line in table_path("zh", "char_convert_pairs.tsv").read_text(encoding="utf-8").splitlines():
        simplified, traditional = line.split("\t")
        out[traditional] = simplified
    return out


@lru_cache(maxsize=None)
def pinyin_to_phones() -> dict[str, tuple[str, str]]:
    """Toneless pinyin -> (initial, final) of opencpop-strict (429 syllables)."""
    out: dict[str, tuple[str, str]] = {}
    for line in table_path("zh", "opencpop-strict.tsv").read_text(encoding="utf-8").splitlines():
        pinyin, phones = line.split("\t")
        initial, final = phones.split(" ")
        out[pinyin] = (initial, final)
    return out
