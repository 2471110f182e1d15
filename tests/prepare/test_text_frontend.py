"""The text front-end's core (``gsv_ray.prepare.text.frontend``) against upstream's goldens
(``tests/reference/gpt_sovits/text``: ``text_frontend.json``, ``get_text_script/``).

What the core decides is tested here without any language front-end: a *replay* module answers each
golden sentence with what upstream's language module produced for it (``norm_text``, the phones
before the cleaner's UNK mapping, ``word2ph``), so the cleaner's own rules (the version's module set
and symbol table, unknown languages -> en with " ", the ``￥``/``^`` markers, the en "<4 phones" rule,
zh/yue checks, UNK), the ``.list`` parsing (4 fields, language codes, names, pre-replacement) and the
``2-name2text.txt`` format must reproduce upstream's files exactly. The per-language modules are
checked against the same goldens in their own tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gsv_ray.prepare.text.base import TextRejected
from gsv_ray.prepare.text.frontend import (
    LANGUAGE_CODES,
    CleanedText,
    LanguageUnavailable,
    clean_text,
    language_module,
    name2text_line,
    parse_list,
    pre_replace,
    render_name2text,
    utterance_name,
)
from gsv_ray.resources import symbols
from tests.support.text_replay import ReplayLoader


@pytest.fixture(scope="session")
def text_dir(reference_dir) -> Path:
    return reference_dir / "text"


@pytest.fixture(scope="session")
def golden(text_dir) -> dict:
    return json.loads((text_dir / "text_frontend.json").read_text(encoding="utf-8"))


def _loader(golden: dict, version: str):
    return ReplayLoader(version, golden)


def _sentences(golden: dict):
    for lang, versions in golden["languages"].items():
        for version, entry in versions.items():
            for s in entry["sentences"]:
                yield pytest.param(lang, version, s, id=f"{version}-{s['id']}")


def test_symbol_tables_are_the_goldens(golden):
    assert symbols("v1") == golden["symbols"]["v1"] and symbols("v2") == golden["symbols"]["v2"]


@pytest.mark.parametrize(
    "lang,version,s",
    list(
        _sentences(
            json.loads(
                (Path(__file__).parents[1] / "reference/gpt_sovits/text/text_frontend.json").read_text(encoding="utf-8")
            )
        )
    ),
)
def test_clean_text_per_sentence_equals_upstream(lang, version, s, golden):
    """Every golden sentence of every language and version: the pre-replacement, the cleaner's rules,
    the UNK mapping and the 2-name2text.txt line (dropped lines raise TextRejected)."""
    load = _loader(golden, version)
    assert pre_replace(s["text"]) == s["get_text_input"]
    if s["status"] != "ok":
        with pytest.raises(TextRejected):
            clean_text(s["get_text_input"], lang, version, load=load)
        return
    got = clean_text(s["get_text_input"], lang, version, load=load)
    assert list(got.phones) == s["phones"] and got.norm_text == s["norm_text"]
    assert (None if got.word2ph is None else list(got.word2ph)) == s["word2ph"]
    table = symbols("v1" if version == "v1" else "v2")
    assert [table.index(p) for p in got.phones] == s["phone_ids"]
    assert name2text_line(s["name"], got) == s["name2text_line"]
    direct = s.get("direct_clean_text_on_raw_text")
    if direct and direct["status"] == "ok":  # e.g. zh_004: ￥ reaches clean_text -> SP2 for every ","
        raw = clean_text(s["text"], lang, version, load=load)
        assert list(raw.phones) == direct["phones"] and raw.norm_text == direct["norm_text"]


@pytest.mark.parametrize("lang", ["ko", "yue"])
def test_v1_has_no_ko_or_yue_they_become_en_space(lang, golden):
    want = golden["v1_unsupported_languages"][lang]["distinct_outputs"]
    got = clean_text("안녕하세요" if lang == "ko" else "你好", lang, "v1", load=_loader(golden, "v1"))
    assert [(list(got.phones), got.word2ph, got.norm_text)] == [
        (w["phones"], w["word2ph"], w["norm_text"]) for w in want
    ]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_get_text_script_file_equals_upstream(version, golden, text_dir):
    """1-get-text.py's own run on a .list (en/ja/ko/yue lines, an upper-case code, an unknown code, a
    3-field line): parsing + clean_text + the file format give its 2-name2text file byte for byte."""
    run = next(r for r in golden["get_text_script_runs"] if r["version"] == version)
    content = (text_dir / run["list_file"]).read_text(encoding="utf-8")
    _, problems = parse_list(content)
    assert _written(content, version, _loader(golden, version)) == (text_dir / run["written_file"]).read_bytes()
    skipped = [o["list_line"] for o in run["line_outcomes"] if o["outcome"].startswith("skipped")]
    assert [content.split("\n")[p.lineno - 1] for p in problems] == skipped
    if version == "v2":
        assert [(p.reason, p.name) for p in problems] == [("unknown_language", "fr_001.wav"), ("bad_fields", None)]
        assert "'fr'" in problems[0].message and "4" in problems[1].message


def test_language_codes_and_names():
    assert {k: LANGUAGE_CODES[k] for k in ("ZH", "JP", "jp", "JA", "En", "Ko", "YUE", "Yue")} == {
        "ZH": "zh",
        "JP": "ja",
        "jp": "ja",
        "JA": "ja",
        "En": "en",
        "Ko": "ko",
        "YUE": "yue",
        "Yue": "yue",
    }
    assert "fr" not in LANGUAGE_CODES and "Zh" not in LANGUAGE_CODES and "JA " not in LANGUAGE_CODES
    assert utterance_name("wavs/sub/a.flac") == "a.flac"
    assert utterance_name("C:\\data\\wavs\\b.wav") == "b.wav"
    assert utterance_name('"D:/x/c.wav"') == "c.wav"
    assert utterance_name(' "D:/x/c.wav" \u202a') == 'c.wav" '  # upstream's strip order: the quote before U+202A stays
    assert utterance_name("wavs/d.wav/") == "d.wav" and utterance_name(" e.wav\n") == "e.wav"
    (line,), problems = parse_list("\n\nwavs/x.wav|spk|JA|ab%c￥d|e\nwavs/y.wav|spk|JA|t\n\n")
    assert problems[0].reason == "bad_fields" and (line.name, line.language, line.text, line.lineno) == (
        "y.wav",
        "ja",
        "t",
        2,
    )


def test_unknown_phones_become_unk_and_en_short_rule():
    class Fake:
        @staticmethod
        def normalize(text, version):
            return text

        @staticmethod
        def g2p(norm, version):
            return norm.split(), None

    got = clean_text("HH xx !", "en", "v2", load=lambda lang: Fake)
    assert got == CleanedText((",", "HH", "UNK", "!"), None, "HH xx !")
    assert clean_text("HH AY1 HH AY1", "en", "v2", load=lambda lang: Fake).phones == ("HH", "AY1", "HH", "AY1")
    assert clean_text("a b c", "ja", "v2", load=lambda lang: Fake).phones == ("a", "b", "c")  # en only


def test_a_missing_front_end_is_one_line_naming_the_extra(monkeypatch):
    with pytest.raises(LanguageUnavailable, match="no text front-end for 'xx'"):
        language_module("xx")
    import sys

    monkeypatch.setitem(sys.modules, "gsv_ray.prepare.text.fake_needs_pkg", None)
    with pytest.raises(LanguageUnavailable) as e:
        language_module("fake_needs_pkg")
    assert "\n" not in str(e.value) and e.value.exit_code == 2


def _real_loader(version: str):
    """The real language modules; zh for v2+ in its g2pW-less mode (the zh v2 goldens were made so)."""
    from functools import partial
    from types import SimpleNamespace

    def load(language: str):
        module = language_module(language)
        if language != "zh" or version == "v1":
            return module
        return SimpleNamespace(normalize=partial(module.normalize, no_g2pw=True), g2p=partial(module.g2p, no_g2pw=True))

    return load


def _written(content: str, version: str, load) -> bytes:
    lines, _ = parse_list(content)
    out = []
    for line in lines:
        try:
            out.append(name2text_line(line.name, clean_text(pre_replace(line.text), line.language, version, load=load)))
        except TextRejected:
            pass
    return render_name2text(out)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_real_front_ends_write_the_get_text_script_file(version, golden, text_dir):
    """The real modules (en, ja, ko, yue) + the core on 1-get-text.py's own .list: its file byte for byte."""
    run = next(r for r in golden["get_text_script_runs"] if r["version"] == version)
    content = (text_dir / run["list_file"]).read_text(encoding="utf-8")
    assert _written(content, version, _real_loader(version)) == (text_dir / run["written_file"]).read_bytes()


@pytest.mark.parametrize(
    ("lang", "version"),
    [("en", "v1"), ("en", "v2"), ("ja", "v1"), ("ja", "v2"), ("ko", "v2"), ("yue", "v2"), ("zh", "v1"), ("zh", "v2")],
)
def test_real_front_ends_write_each_languages_file(lang, version, golden, text_dir):
    """Each language's whole .list through the real module and the core: upstream's ``2-name2text.txt``
    content for it (en: the POS stand-in the goldens were made with, see test_text_en; zh v2: g2pW off,
    as its goldens; zh: the text step alone, the goldens assume the BERT step succeeds)."""
    content = (text_dir / "inputs" / f"{lang}.list").read_text(encoding="utf-8")
    want = golden["languages"][lang][version]["name2text_file"]
    assert _written(content, version, _real_loader(version)).decode("utf-8") == want
