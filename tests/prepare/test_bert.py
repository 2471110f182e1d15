"""The Mandarin BERT step of ``gsv-ray prepare`` (``3-bert/<name>.pt``) against Hugging Face transformers,
the library upstream's ``1-get-text.py`` runs (``AutoTokenizer`` + ``AutoModelForMaskedLM``, the third-from-last
hidden state, ``[CLS]``/``[SEP]`` dropped, repeated by ``word2ph``, transposed).

There are no BERT goldens: the reference is transformers itself on a small random BERT saved in the
user's layout (the real chinese-roberta-wwm-ext-large config.json with fewer/smaller layers, float16
``pytorch_model.bin`` of a ``BertForMaskedLM`` as GPT-SoVITS ships it, a vocabulary made of the
characters of the zh goldens' sentences). Measured (transformers 5.25, torch 2.13 CPU, float32, both on
PyTorch's SDPA): token ids equal for every text; features and every hidden state bitwise equal (max |diff|
0, values of order 1). Tolerance 1e-5, for other thread counts and BLAS builds.
No network: local folders only (``local_files_only``), ``HF_HUB_OFFLINE=1`` while this module runs.
"""

from __future__ import annotations

import importlib
import json
import random
import unicodedata
from pathlib import Path

import pytest
import torch

from gsv_ray.models.bert import Bert, BertConfig
from gsv_ray.models.bert_tokenizer import BertTokenizer
from gsv_ray.prepare.bert import BertFolderError, bert_features, load_bert, write_bert
from gsv_ray.prepare.text.base import TextRejected
from tests.support.small_bert import FULL_CONFIG, SMALL, build_small_bert, zh_sentences

transformers = importlib.import_module("transformers")  # the test extra pins it: missing, the tests fail

EXTRA_TEXTS = (  # beyond zh norm_text: what the tokenizer must also get right
    "Hello, WORLD! héllo naïve 123 4.5",
    "abc unaffable [UNK] x[MASK]y tabs\tand\nnewlines",
    "全角，标点！混合 text 与 数字 2024 年",
    "ＡＢＣ ｆｕｌｌ ｗｉｄｔｈ 𠀀 \u00ad soft\u200bhyphen",
)


def _kept_zh(reference_dir: Path) -> list[tuple[str, list[int]]]:
    """Each distinct (norm_text, word2ph) of the zh goldens that reaches the BERT step (v1 and v2 share most)."""
    seen = {(s["norm_text"], tuple(s["word2ph"])) for s in zh_sentences(reference_dir) if s["status"] == "ok"}
    return sorted((t, list(w)) for t, w in seen if t)


@pytest.fixture(scope="module", autouse=True)
def _offline():
    """transformers never reaches the network here: offline mode, and every load names a local folder
    with ``local_files_only`` (the environment is restored after this module)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def small_bert(reference_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random small BERT in GPT-SoVITS's layout (``tests/support/small_bert.py``)."""
    return build_small_bert(tmp_path_factory.mktemp("roberta-small"), reference_dir)


@pytest.fixture(scope="module")
def hf_reference(small_bert: Path):
    """transformers' tokenizer and model from the folder, as upstream loads them (float32 on the CPU)."""
    tok = transformers.AutoTokenizer.from_pretrained(str(small_bert), local_files_only=True)
    model = transformers.AutoModelForMaskedLM.from_pretrained(
        str(small_bert), local_files_only=True, dtype=torch.float32
    )
    return tok, model.eval()


def _upstream_features(tok, model, text: str, word2ph: list[int]) -> torch.Tensor:
    """What 1-get-text's get_bert_feature computes (described in this module's docstring)."""
    with torch.no_grad():
        out = model(**tok(text, return_tensors="pt"), output_hidden_states=True)
    per_char = out["hidden_states"][-3][0][1:-1]
    return torch.cat([per_char[i].repeat(n, 1) for i, n in enumerate(word2ph)], dim=0).T


def test_token_ids_equal_transformers_for_zh_goldens_and_ascii(reference_dir, small_bert, hf_reference, tmp_path):
    """Both folder layouts (vocab.txt; tokenizer.json as GPT-SoVITS ships) give transformers' fast and
    python (legacy) tokenizers' ids for every zh golden text, its norm_text, and mixed ASCII text."""
    hf_tok, _ = hf_reference
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    slow = BertTokenizerLegacy(str(small_bert / "vocab.txt"))
    json_folder = tmp_path / "json-only"
    hf_tok.save_pretrained(str(json_folder))
    (json_folder / "vocab.txt").unlink(missing_ok=True)  # only tokenizer.json (+ its config) is left
    ours, ours_json = BertTokenizer.from_folder(small_bert), BertTokenizer.from_folder(json_folder)
    texts = [t for s in zh_sentences(reference_dir) for t in (s["text"], s["norm_text"]) if t is not None]
    for text in [*texts, *EXTRA_TEXTS]:
        want = hf_tok(text)["input_ids"]
        assert ours.encode(text) == want, text
        assert ours_json.encode(text) == want, text
        assert slow(text)["input_ids"] == want, text  # the two transformers tokenizers agree on these
    assert ours.tokenize("unaffable HELLO") == ["un", "##aff", "##able", "hello"]


def test_token_ids_equal_transformers_for_random_mixed_text(tmp_path):
    """2000 seeded random texts (Latin with accents, general punctuation, CJK, full-width forms, white
    space and control characters, unassigned code points) give the fast tokenizer's ids, over a vocabulary
    of those characters (lower-cased, accents stripped) and a few WordPiece pieces."""
    rng = random.Random(0)
    blocks = [(0x20, 0x250), (0x2000, 0x2070), (0x3000, 0x3040), (0x4E00, 0x4E80), (0xFF00, 0xFF60)]
    pool = [chr(c) for lo, hi in blocks for c in range(lo, hi)]
    pool += ["\t", "\n", "\r", "\x0b", "\x85", "\u2028", "\u200b", "\ufeff", "\ufffd", "\x00", "\u0301", "𠀀", "😀"]
    chars = {unicodedata.normalize("NFD", c.lower())[0] for c in pool if c.strip()}
    pieces = ["##" + c for c in "abcdefghij"] + ["ab", "abc", "##bc"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(chars - set("[]")), *pieces]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    hf, ours = transformers.BertTokenizer(str(tmp_path / "vocab.txt")), BertTokenizer.from_folder(tmp_path)
    for _ in range(2000):
        text = "".join(rng.choice(pool + list("abc  ")) for _ in range(rng.randint(0, 12)))
        assert ours.encode(text) == hf(text)["input_ids"], repr(text)


def test_features_equal_transformers_for_zh_goldens(reference_dir, small_bert, hf_reference):
    """[hidden, sum(word2ph)] float32 features within 1e-5 of transformers for every kept zh sentence."""
    hf_tok, hf_model = hf_reference
    model, tok = load_bert(small_bert)
    worst, kept = 0.0, _kept_zh(reference_dir)
    assert len(kept) >= 18
    for text, word2ph in kept:
        got = bert_features(text, word2ph, model, tok)
        want = _upstream_features(hf_tok, hf_model, text, word2ph)
        assert got.shape == (SMALL["hidden_size"], sum(word2ph)) == want.shape
        assert got.dtype == torch.float32
        worst = max(worst, float((got - want).abs().max()))
    assert worst < 1e-5, worst


def test_all_hidden_states_padding_and_half_precision(small_bert, hf_reference, tmp_path):
    """Every hidden state equals transformers'; a padded batch with its attention mask gives each text's
    own states; ``half=True`` (upstream's is_half) gives float16 features close to float32's; a safetensors
    BertModel folder (no ``bert.`` prefix, a pooler) loads the same."""
    hf_tok, hf_model = hf_reference
    model, tok = load_bert(small_bert)
    ids, short = tok.encode("今天是二零二四年三月十五日,星期五."), tok.encode("你好.")
    with torch.no_grad():
        want = hf_model(torch.tensor([ids]), output_hidden_states=True)["hidden_states"]
        got = model(torch.tensor([ids]))
        alone = model(torch.tensor([short]))[-1][0]
        padded = torch.tensor([ids, short + [0] * (len(ids) - len(short))])
        mask = (torch.arange(len(ids)) < torch.tensor([[len(ids)], [len(short)]])).long()
        batch = model(padded, attention_mask=mask)[-1]
    assert len(got) == len(want) == SMALL["num_hidden_layers"] + 1
    assert max(float((g - w).abs().max()) for g, w in zip(got, want)) < 1e-5
    assert torch.allclose(batch[0], got[-1][0], atol=1e-5) and torch.allclose(batch[1, : len(short)], alone, atol=1e-5)
    half, _ = load_bert(small_bert, half=True)
    f16 = bert_features("你好.", [2, 2, 1], half, tok)
    assert f16.dtype == torch.float16 and torch.allclose(
        f16.float(), bert_features("你好.", [2, 2, 1], model, tok), atol=2e-2
    )
    st = tmp_path / "st"
    hf_model.bert.save_pretrained(str(st))  # model.safetensors of a BertModel (with its pooler)
    for name in ("vocab.txt",):
        (st / name).write_bytes((small_bert / name).read_bytes())
    other, _ = load_bert(st)
    assert torch.equal(bert_features("你好.", [2, 2, 1], other, tok), bert_features("你好.", [2, 2, 1], model, tok))


def test_upstream_line_failures_are_text_rejected(small_bert):
    """Where upstream's get_bert_feature raises (the line is dropped), TextRejected says why."""
    model, tok = load_bert(small_bert)
    with pytest.raises(TextRejected, match="word2ph has 2 entries for 3 characters"):
        bert_features("你好.", [2, 2], model, tok)
    with pytest.raises(TextRejected, match="no characters"):
        bert_features("", [], model, tok)  # zh_021: upstream's torch.cat of nothing
    with pytest.raises(TextRejected, match="1 BERT tokens for 2 characters"):
        bert_features("ab", [1, 1], model, tok)  # letters merge into one token: upstream's IndexError
    with pytest.raises(TextRejected, match="more than the model's 512 positions"):
        bert_features("你" * 511, [2] * 511, model, tok)


def test_write_bert_is_what_torch_load_reads(small_bert, tmp_path):
    model, tok = load_bert(small_bert)
    feats = bert_features("你好.", [2, 2, 1], model, tok)
    path = write_bert(tmp_path / "3-bert" / "a.wav.pt", feats)
    back = torch.load(path, weights_only=True)
    assert torch.equal(back, feats) and back.shape == (SMALL["hidden_size"], 5)
    assert torch.equal(back[:, 0], back[:, 1]) and not torch.equal(back[:, 1], back[:, 2])
    with pytest.raises(Exception, match="already exists"):
        write_bert(path, feats)


def test_bad_folders_are_one_line_errors(small_bert, tmp_path):
    with pytest.raises(BertFolderError, match="BERT folder not found") as e:
        load_bert(tmp_path / "nope")
    assert "\n" not in str(e.value) and "Fix:" in str(e.value)
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(BertFolderError, match="no config.json"):
        load_bert(bad)
    (bad / "config.json").write_text((small_bert / "config.json").read_text())
    with pytest.raises(BertFolderError, match=r"no BERT weights \(model.safetensors or pytorch_model.bin\)"):
        load_bert(bad)
    (bad / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(BertFolderError, match="cannot read BERT weights"):
        load_bert(bad)
    (bad / "pytorch_model.bin").write_bytes((small_bert / "pytorch_model.bin").read_bytes())
    with pytest.raises(BertFolderError, match="no BERT tokenizer"):
        load_bert(bad)
    (bad / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE"}, "normalizer": None}))
    with pytest.raises(BertFolderError, match="not a BERT WordPiece tokenizer"):
        load_bert(bad)
    bert_json = {"model": {"type": "WordPiece", "vocab": {}}, "normalizer": {"type": "BertNormalizer"}}
    (bad / "tokenizer.json").write_text(json.dumps({**bert_json, "post_processor": {"type": "BertProcessing"}}))
    with pytest.raises(BertFolderError, match="unexpected tokenizer.json layout"):
        load_bert(bad)
    (bad / "tokenizer.json").unlink()
    cfg = json.loads((small_bert / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 5}))
    (bad / "vocab.txt").write_bytes((small_bert / "vocab.txt").read_bytes())
    with pytest.raises(BertFolderError, match="weights do not fit the BERT config"):
        load_bert(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "roberta"}))
    with pytest.raises(BertFolderError, match="unsupported BERT variant"):
        load_bert(bad)


def test_full_size_config_matches_transformers_shapes():
    """The real chinese-roberta-wwm-ext-large config: our parameters' names and shapes equal transformers'
    BertForMaskedLM encoder's (built on the meta device: no memory, no time), and a forward has its shapes."""
    with torch.device("meta"):
        hf = transformers.BertForMaskedLM(transformers.BertConfig(**FULL_CONFIG))
        ours = Bert(BertConfig(**{k: v for k, v in FULL_CONFIG.items() if k in BertConfig.__dataclass_fields__}))
        states = ours(torch.zeros(1, 7, dtype=torch.long), upto=22)
    want = {k.removeprefix("bert."): tuple(v.shape) for k, v in hf.state_dict().items() if k.startswith("bert.")}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == want
    assert len(states) == 23 and states[-1].shape == (1, 7, 1024)
