"""The Cantonese front-end (``gsv_ray.prepare.text.yue``, v2 only) against upstream's goldens.

``g2p`` from each golden ``norm_text`` gives upstream's phones (``module_g2p_before_unk_mapping`` for
yue_019, whose 卅 reads two syllables and becomes UNK) and ``word2ph``; yue_020 (讠, no reading) is
rejected as upstream drops it (TypeError there). ``normalize`` runs the Mandarin normaliser of the zh
front-end (``_zh_normalize``, branch textzh) and then yue's own mark mapping: those tests need that
module and are skipped until it is in the tree. No stand-in is involved: every yue golden is faithful.
"""

from __future__ import annotations

import pytest

from gsv_ray.prepare.text import yue
from gsv_ray.prepare.text.base import TextRejected
from tests.support.text_goldens import module_output, run_offline, sentences, unk_mapped

KEPT = [s for s in sentences("yue", "v2") if s["status"] == "ok"]
DROPPED = [s for s in sentences("yue", "v2") if s["status"] != "ok"]


def test_upstream_drops_only_yue_020():
    assert [(s["id"], s["exception"]["type"]) for s in DROPPED] == [("yue_020", "TypeError")]


@pytest.mark.parametrize("golden", KEPT, ids=lambda s: s["id"])
def test_g2p_matches_golden(golden):
    norm = golden["norm_text"]
    phones, word2ph = yue.g2p(norm, "v2")
    assert phones == module_output(golden)
    assert word2ph == golden["word2ph"]
    assert unk_mapped(phones, "v2") == golden["phones"]
    # the cleaner's checks upstream makes on yue (they hold for every kept line)
    assert sum(word2ph) == len(phones) and len(word2ph) == len(norm)


def test_character_without_reading_is_rejected():
    """yue_020's text as the normaliser leaves it (呢個字係讠。 -> 呢个字系讠.): 讠 has no Jyutping."""
    with pytest.raises(TextRejected, match="讠"):
        yue.g2p("呢个字系讠.", "v2")


@pytest.fixture(scope="module")
def _mandarin_normaliser():
    pytest.importorskip("gsv_ray.prepare.text._zh_normalize", reason="the zh front-end's normaliser (textzh)")


@pytest.mark.usefixtures("_mandarin_normaliser")
@pytest.mark.parametrize("golden", KEPT, ids=lambda s: s["id"])
def test_normalize_matches_golden(golden):
    assert yue.normalize(golden["get_text_input"], "v2") == golden["norm_text"]


@pytest.mark.usefixtures("_mandarin_normaliser")
@pytest.mark.parametrize("golden", DROPPED, ids=lambda s: s["id"])
def test_dropped_line_is_rejected(golden):
    with pytest.raises(TextRejected):
        yue.g2p(yue.normalize(golden["get_text_input"], "v2"), "v2")


def test_runs_offline_without_downloads(tmp_path):
    golden = next(s for s in KEPT if s["id"] == "yue_014")
    out = run_offline(
        f"from gsv_ray.prepare.text import yue\nresult['phones'] = yue.g2p({golden['norm_text']!r}, 'v2')[0]\n",
        tmp_path,
    )
    assert out["attempts"] == []
    assert out["printed"] == []
    assert out["result"]["phones"] == module_output(golden)
