"""The Japanese front-end (``gsv_ray.prepare.text.ja``) against upstream's goldens, v1 and v2.

Every sentence: ``normalize`` gives upstream's ``norm_text`` and ``g2p`` the tokens upstream's
``japanese.g2p`` produced (``module_g2p_before_unk_mapping`` where the cleaner mapped some to UNK), and
the cleaner's UNK mapping of them gives the golden ``phones``.

Stand-in: the goldens were made WITHOUT upstream's user dictionary (``ja_userdic/userdict.csv``, a
download we do not have: ``meta.ja_user_dictionary_loaded`` is false), and so is our front-end. With
it, Latin words would probably be read as katakana words instead of spelled: ja_010, ja_011 and ja_012
depend on its absence (any other entry it holds could change readings too).
"""

from __future__ import annotations

import re

import pytest

from gsv_ray.prepare.text import ja
from tests.support.text_goldens import goldens, module_output, run_offline, sentences, unk_mapped

USERDICT_DEPENDENT = ("ja_010", "ja_011", "ja_012")  # Latin words: spelled without the user dictionary


def test_goldens_made_without_the_user_dictionary():
    """The stand-in, stated: no user dictionary; the sentences with Latin words are the ones it affects."""
    assert goldens()["meta"]["ja_user_dictionary_loaded"] is False
    latin = {s["id"] for s in sentences("ja", "v2") if re.search("[A-Za-zＡ-Ｚａ-ｚ]", s["text"])}
    assert latin == set(USERDICT_DEPENDENT)


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("sentence", sentences("ja", "v2"), ids=lambda s: s["id"])
def test_sentence_matches_golden(sentence, version):
    golden = next(s for s in sentences("ja", version) if s["id"] == sentence["id"])
    assert golden["status"] == "ok"  # upstream drops no ja line
    norm = ja.normalize(golden["get_text_input"], version)
    assert norm == golden["norm_text"]
    phones, word2ph = ja.g2p(norm, version)
    assert phones == module_output(golden)
    assert word2ph is None
    assert unk_mapped(phones, version) == golden["phones"]


def test_runs_offline_without_downloads(tmp_path):
    out = run_offline(
        "from gsv_ray.prepare.text import ja\n"
        "result['phones'] = ja.g2p(ja.normalize('今日は2024年3月15日です。', 'v2'), 'v2')[0]\n",
        tmp_path,
    )
    assert out["attempts"] == []
    assert out["printed"] == []
    assert out["result"]["phones"] == module_output(next(s for s in sentences("ja", "v2") if s["id"] == "ja_003"))
