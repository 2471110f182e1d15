"""zh v2 with g2pW (``gsv_ray.prepare.text._zh_g2pw`` through ``zh.g2p(..., g2pw_dir=...)``).

No real g2pW model exists here (a 635 MB user download): the folder is ``tests/support/small_g2pw.py``'s, a
small ONNX graph with upstream's inputs whose answer depends on the tokens around the query, so the
tokenisation, ``position_ids``, the context crop and the dedup are checked against answers computed in the
test (``expected_label``), not by gsv-ray. What is upstream's is read from its code (TEXT_FRONTEND.md
"Upstream v2"); there is no golden of the real model.
"""

from __future__ import annotations

import gzip
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pypinyin import Style, pinyin

from gsv_ray.prepare.text import _zh_g2pw as g2pw_mod
from gsv_ray.prepare.text import zh
from gsv_ray.prepare.text._zh_g2pw import (
    G2pwFolderError,
    bopomofo_to_pinyin,
    context_window,
    load_g2pw,
    model_inputs,
    polyphonic_dict,
    read_config,
    to_traditional,
)
from gsv_ray.prepare.text.base import TextRejected, table_path
from gsv_ray.prepare.text.frontend import clean_text, language_module, name2text_line, parse_list, pre_replace
from tests.support.small_g2pw import (
    BOPOMOFO,
    build_g2pw_folder,
    build_tokenizer,
    expected_label,
    pinyin_of,
    vocab_ids,
)
from tests.support.text_replay import load_golden

FILLER = "你我他她"  # not in the folder's lists; s2tw keeps them


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("g2pw")
    return build_g2pw_folder(root / "G2PWModel"), build_tokenizer(root / "tok", "銀行長說話了好" + FILLER)


@pytest.fixture(scope="module")
def g2pw(folders):
    return load_g2pw(str(folders[0]), str(folders[1]))


def test_polyphonic_dict_is_the_merge_of_the_two_rep_files():
    rows = {}
    for name in ("g2pw_polyphonic.rep.tsv", "g2pw_polyphonic-fix.rep.tsv.gz"):
        raw = table_path("zh", name).read_bytes()
        text = (gzip.decompress(raw) if name.endswith(".gz") else raw).decode("utf-8")
        rows[name] = [line.split("\t") for line in text.splitlines()]
    fix = rows["g2pw_polyphonic-fix.rep.tsv.gz"]
    table = polyphonic_dict()
    assert len(rows["g2pw_polyphonic.rep.tsv"]) == 53 and len(fix) == 45027 and len(table) == 45047
    for word in ("朝阳", "那些"):  # twice in the fix file: the later row wins
        values = [v for k, v in fix if k == word]
        assert len(values) == 2 and table[word] == tuple(values[1].split(" "))  # (both rows read the same)
    overridden = {k for k, _ in rows["g2pw_polyphonic.rep.tsv"]} & {k for k, _ in fix}
    assert len(overridden) == 31
    assert table["银行"] == ("yin2", "hang2")
    assert g2pw_mod.correct_pronunciation("银行", ["yin2", "xing2"]) == ["yin2", "hang2"]
    assert g2pw_mod.correct_pronunciation("行长行", ["hang2", "zhang3", "xing2"]) == ["hang2", "zhang3", "xing2"]


def test_config_py_is_read_without_running_it(tmp_path):
    good = tmp_path / "config.py"
    good.write_text('"""doc"""\nuse_mask = False\nwindow_size: int = 8\nparam_focal = {"alpha": 1.0}\n', "utf-8")
    cfg = read_config(good)
    assert cfg["use_mask"] is False and cfg["window_size"] == 8
    assert cfg["param_focal"] == {"alpha": 1.0, "gamma": 0.7}  # a dict gets the defaults' missing keys
    assert cfg["use_char_phoneme"] is False and cfg["model_source"] == "bert-base-chinese"  # defaults
    marker = tmp_path / "ran"
    for body, line in ((f"import os; os.system('touch {marker}')\n", 1), ("use_mask = bool(1)\n", 1)):
        bad = tmp_path / "bad_config.py"
        bad.write_text("use_char_phoneme = False\n" * (line - 1) + body, encoding="utf-8")
        with pytest.raises(G2pwFolderError, match=f"line {line} is not a `name = literal`") as e:
            read_config(bad)
        assert str(bad) in str(e.value) and "\n" not in str(e.value) and e.value.exit_code == 2
    assert not marker.exists()


def test_s2tw_keeps_the_length_or_the_line_is_rejected():
    assert to_traditional("银行行长说话了") == "銀行行長說話了"
    with pytest.raises(TextRejected, match="s2tw .* upstream asserts"):
        # OpenCC's real s2tw keeps the length of every CJK character tried here: a converter that does not
        to_traditional("银行", convert=lambda s: s[:-1])


def test_bopomofo_to_pinyin():
    assert bopomofo_to_pinyin("ㄏㄤ2", BOPOMOFO) == "hang2" and bopomofo_to_pinyin("ㄌㄜ5", BOPOMOFO) == "le5"
    assert bopomofo_to_pinyin("ㄅㄚ1", BOPOMOFO) is None  # not in the table: pypinyin's reading is kept
    with pytest.raises(TextRejected, match="no tone digit"):
        bopomofo_to_pinyin("ㄏㄤ", BOPOMOFO)


def test_readings_are_the_models_answers(g2pw, folders):
    vocab = vocab_ids(folders[1])
    trad = "銀行行長說話了"
    got = g2pw.readings("银行行长说话了")
    want = ["yin2", *(pinyin_of(expected_label(vocab, trad, q)) for q in (1, 2, 3)), "shuo1", "hua4"]
    assert got == [*want, pinyin_of(expected_label(vocab, trad, 6))]
    assert got[1] == "xing2" and got[3] == "chang2" and got[6] == "liao3"  # the model's picks, not pypinyin's
    # 一 is non_polyphonic, 似 non_monophonic: both read by pypinyin over the (simplified) sentence
    for sentence in ("一行你", "似你"):
        assert g2pw.readings(sentence)[0] == pinyin(sentence, style=Style.TONE3, neutral_tone_with_five=True)[0][0]
    assert g2pw.readings("好你")[0] == pinyin_of(expected_label(vocab, "好你", 0))


def test_context_is_cropped_around_the_polyphonic_characters(g2pw, folders):
    """A 100-character sentence with queries at 20 and 60 (40 apart): the model sees [4, 77)."""
    vocab = vocab_ids(folders[1])
    chars = [FILLER[i % 4] for i in range(100)]
    chars[20], chars[60] = "行", "长"
    sentence = "".join(chars)
    trad = to_traditional(sentence)
    assert context_window(len(trad), [20, 60], 16) == (4, 77) and context_window(100, [20, 60], 0) == (0, 100)
    crop = trad[4:77]
    inputs = model_inputs(g2pw.tokenizer, g2pw.tables, crop, [16, 56])
    ids = [vocab["[CLS]"], *(vocab[c] for c in crop), vocab["[SEP]"]]
    assert inputs["input_ids"].tolist() == [ids, ids] and inputs["position_ids"].tolist() == [17, 57]
    assert inputs["char_ids"].tolist() == [sorted("行長了好一").index(c) for c in "行長"]
    assert inputs["phoneme_mask"].dtype == np.float32 and inputs["attention_mask"].tolist() == [[1] * 75] * 2
    got = g2pw.readings(sentence)
    assert [got[20], got[60]] == [pinyin_of(expected_label(vocab, crop, q)) for q in (16, 56)]
    whole = load_g2pw(str(folders[0]), str(folders[1]), 0, True)  # g2pw_polyphonic_context_chars=0
    assert [whole.readings(sentence)[i] for i in (20, 60)] == [
        pinyin_of(expected_label(vocab, trad, q)) for q in (20, 60)
    ]
    no_dedup = load_g2pw(str(folders[0]), str(folders[1]), 16, False)  # one input_ids row per query: same answers
    assert no_dedup.readings(sentence) == got


def test_over_510_tokens_each_query_gets_its_window_and_dedup_shares_the_first_row(g2pw, folders):
    """A 600-character text seen whole (context 0): each query's 510 tokens are centred on it and shifted
    inside the text ([0, 510) for 10, [90, 600) for 590); with upstream's dedup both queries share the first
    row's tokens (the first query's window), so the second is answered at its position in the other window."""
    vocab = vocab_ids(folders[1])
    chars = [FILLER[i % 4] for i in range(600)]
    chars[10], chars[590] = "行", "長"
    text = "".join(chars)
    inputs = model_inputs(g2pw.tokenizer, g2pw.tables, text, [10, 590])
    window = [[vocab["[CLS]"], *(vocab[c] for c in text[a:b]), vocab["[SEP]"]] for a, b in ((0, 510), (90, 600))]
    assert inputs["input_ids"].tolist() == window and inputs["position_ids"].tolist() == [11, 501]
    whole = load_g2pw(str(folders[0]), str(folders[1]), 0, True)
    got = whole.readings(text)
    assert got[10] == pinyin_of(expected_label(vocab, text[:510], 10))
    assert got[590] == pinyin_of(expected_label(vocab, text[:510], 500, char="長"))  # upstream's dedup quirk
    separate = load_g2pw(str(folders[0]), str(folders[1]), 0, False).readings(text)
    assert separate[590] == pinyin_of(expected_label(vocab, text[90:], 500)) != got[590]


def test_g2p_reads_with_the_model_and_the_session_is_built_once(folders, monkeypatch, tmp_path):
    model, tok = folders
    load_g2pw.cache_clear()
    vocab = vocab_ids(tok)
    phones, word2ph = zh.g2p("银行说话了.", "v2", g2pw_dir=model, bert_dir=tok, cache_root=tmp_path)
    assert expected_label(vocab, "銀行說話了", 1) == "ㄒㄧㄥ2"  # the model reads 行 xing2, but 银行 is a word of
    assert phones[:4] == ["y", "in2", "h", "ang2"] and word2ph == [2, 2, 2, 2, 2, 1]  # the polyphonic dictionary
    phones, _ = zh.g2p("她好长.", "v2", g2pw_dir=model, bert_dir=tok, cache_root=tmp_path)
    labels = [expected_label(vocab, "她好長", q) for q in (1, 2)]
    assert labels == ["ㄏㄠ4", "ㄔㄤ2"] and phones == ["t", "a1", "h", "ao4", "ch", "ang2", "."]
    assert zh.g2p("她好长.", "v2", no_g2pw=True, cache_root=tmp_path)[0][2:6] == ["h", "ao2", "zh", "ang3"]
    for text in ("行长.", "你好.", "长了."):
        zh.g2p(text, "v2Pro", g2pw_dir=model, bert_dir=tok, cache_root=tmp_path)
    assert load_g2pw.cache_info().misses == 1  # one ONNX session for every line of the process
    monkeypatch.setenv("g2pw_polyphonic_context_chars", "x")
    with pytest.raises(g2pw_mod.GsvError, match="g2pw_polyphonic_context_chars"):
        zh.g2p("行.", "v2", g2pw_dir=model, bert_dir=tok, cache_root=tmp_path)


def test_default_tokenizer_is_beside_the_g2pw_folder_as_upstream(folders, tmp_path):
    checkout = tmp_path / "GPT_SoVITS"
    build_g2pw_folder(checkout / "text" / "G2PWModel")
    build_tokenizer(checkout / "pretrained_models" / "chinese-roberta-wwm-ext-large", "銀行長說話了好" + FILLER)
    got = zh.g2p("行长.", "v2", g2pw_dir=checkout / "text" / "G2PWModel", cache_root=tmp_path)
    assert got == zh.g2p("行长.", "v2", g2pw_dir=folders[0], bert_dir=folders[1], cache_root=tmp_path)
    with pytest.raises(g2pw_mod.GsvError, match="no BERT tokenizer"):
        zh.g2p("行长.", "v2", g2pw_dir=folders[0], cache_root=tmp_path)  # no pretrained_models beside it


def test_with_no_polyphonic_character_asked_the_v2_goldens_come_out_but_for_yao(tmp_path, reference_dir):
    """By upstream's logic, with no character of a sentence queried (a folder whose polyphonic list has none
    of the goldens' characters), g2pW's path is pypinyin over the whole sentence + GPT-SoVITS's polyphonic
    dictionary: it gives the g2pW-less v2 goldens for every zh sentence but the two with 幺 (phone digits
    "one"): OpenCC s2tw turns 幺 into 麼, whose simplified form 么 pypinyin reads me5."""
    folder = tmp_path / "G2PWModel"
    build_g2pw_folder(folder)
    (folder / "POLYPHONIC_CHARS.txt").write_text("乾\tㄍㄢ1\n乾\tㄑㄧㄢ2\n", encoding="utf-8")
    (folder / "MONOPHONIC_CHARS.txt").write_text("乾\tㄍㄢ1\n", encoding="utf-8")
    tok = build_tokenizer(tmp_path / "tok", "乾")

    def load(language: str):
        module = language_module(language)
        return SimpleNamespace(
            normalize=partial(module.normalize, g2pw_dir=folder),
            g2p=partial(module.g2p, g2pw_dir=folder, bert_dir=tok, cache_root=tmp_path),
        )

    golden = load_golden()["languages"]["zh"]["v2"]["name2text_file"]
    lines, _ = parse_list((reference_dir / "text" / "inputs" / "zh.list").read_text(encoding="utf-8"))
    want = dict(line.split("\t", 1) for line in golden.splitlines())
    differ = []
    for line in lines:
        try:
            got = name2text_line(line.name, clean_text(pre_replace(line.text), "zh", "v2", load=load))
        except TextRejected:
            assert line.name not in want
            continue
        if got != f"{line.name}\t{want[line.name]}":
            differ.append((line.name, got.split("\t")[1]))
    assert [name for name, _ in differ] == ["zh_004.wav", "zh_006.wav"]
    assert all("m e5" in phones for _, phones in differ)
