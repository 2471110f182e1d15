"""The Korean front-end (``gsv_ray.prepare.text.ko``, v2 only) against upstream's goldens.

Every sentence: ``normalize`` gives upstream's ``norm_text`` (the input) and ``g2p`` upstream's phones.
g2pk2 runs with an EMPTY English dictionary instead of NLTK's cmudict: korean.py turns every Latin letter
into Hangul first, and the goldens' rerun with an empty dictionary gave the same 21 lines
(``meta.ko_cmudict_empty_variant``), so no sentence depends on it.
"""

from __future__ import annotations

import pytest

from gsv_ray.prepare.text import ko
from gsv_ray.resources import symbol_lookup
from tests.support.text_goldens import goldens, module_output, run_offline, sentences, unk_mapped


def test_empty_english_dictionary_is_faithful():
    variant = goldens()["meta"]["ko_cmudict_empty_variant"]
    assert variant == {"sentences": len(sentences("ko", "v2")), "identical": True}


def test_v2_symbol_table_matches_upstream():
    assert symbol_lookup("v2") == set(goldens()["symbols"]["v2"])  # the table ko maps unknown phones against


@pytest.mark.parametrize("golden", sentences("ko", "v2"), ids=lambda s: s["id"])
def test_sentence_matches_golden(golden):
    assert golden["status"] == "ok"  # upstream drops no ko line
    norm = ko.normalize(golden["get_text_input"], "v2")
    assert norm == golden["norm_text"]
    phones, word2ph = ko.g2p(norm, "v2")
    assert phones == module_output(golden)
    assert word2ph is None
    assert unk_mapped(phones, "v2") == golden["phones"]


def test_runs_offline_without_nltk_data_or_downloads(tmp_path):
    """g2pk2 calls ``nltk.download('cmudict')`` at import when NLTK has no cmudict, and prints from its
    constructor: neither may happen (no NLTK data here, proxies at a closed port, connections recorded)."""
    out = run_offline(
        "from gsv_ray.prepare.text import ko\n"
        "result['phones'] = ko.g2p(ko.normalize('AI와 GPU를 사용합니다.', 'v2'), 'v2')[0]\n"
        "import nltk\n"
        "result['nltk_path'] = list(nltk.data.path)\n",
        tmp_path,
    )
    assert out["attempts"] == []
    assert out["printed"] == []
    assert out["result"]["nltk_path"] == []  # our throw-away corpus is off the path again
    assert out["result"]["phones"] == module_output(next(s for s in sentences("ko", "v2") if s["id"] == "ko_008"))
