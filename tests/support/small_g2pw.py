"""A small G2PWModel folder in upstream's layout, for the zh v2 g2pW tests (no real g2pW model exists here).

The ONNX graph (built with the ``onnx`` package's helper API, the test extra) has the real model's inputs
(``input_ids``/``token_type_ids``/``attention_mask`` [B, L], ``phoneme_mask`` [N, C], ``char_ids`` and
``position_ids`` [N]; B is N or 1, as upstream's sentence dedup feeds it) and one output, [N, C] scores.
Its answer depends on the tokens around each query, so an off-by-one in the tokenisation, the position or the
context crop changes it: with ``key = next + 2 * cur + 3 * L + 5 * char_id`` (``cur``/``next``: the ids at
``position_ids`` and ``position_ids + 1``, L the row's length) the score of label k is
``((key + k) mod C + 1) * phoneme_mask[k]``. :func:`expected_label` computes the same in plain Python.
"""

from __future__ import annotations

import json
from pathlib import Path

#: POLYPHONIC_CHARS.txt rows (traditional characters, as the real list: the model sees s2tw text)
POLYPHONIC = [
    ("行", "ㄒㄧㄥ2"),
    ("行", "ㄏㄤ2"),
    ("長", "ㄔㄤ2"),
    ("長", "ㄓㄤ3"),
    ("了", "ㄌㄜ5"),
    ("了", "ㄌㄧㄠ3"),
    ("好", "ㄏㄠ3"),
    ("好", "ㄏㄠ4"),
    ("一", "ㄧ1"),  # in upstream's non_polyphonic set: never queried
    ("一", "ㄧ2"),
]
MONOPHONIC = [("銀", "ㄧㄣ2"), ("說", "ㄕㄨㄛ1"), ("話", "ㄏㄨㄚ4"), ("似", "ㄙ1")]  # 似: non_monophonic
BOPOMOFO = {
    "ㄒㄧㄥ": "xing",
    "ㄏㄤ": "hang",
    "ㄔㄤ": "chang",
    "ㄓㄤ": "zhang",
    "ㄌㄜ": "le",
    "ㄌㄧㄠ": "liao",
    "ㄏㄠ": "hao",
    "ㄧ": "yi",
    "ㄧㄣ": "yin",
    "ㄕㄨㄛ": "shuo",
    "ㄏㄨㄚ": "hua",
    "ㄙ": "si",
}
LABELS = sorted({p for _, p in POLYPHONIC})
CHARS = sorted({c for c, _ in POLYPHONIC})
CONFIG = '"""g2pW config (as the G2PWModel_1.1 download has it: literal assignments)."""\n' + "\n".join(
    [
        "manual_seed = 1313",
        "model_source = 'bert-base-chinese'",
        "window_size = 32",
        "use_mask = True",
        "use_char_phoneme = False",
        "param_conditional = {'affect_location': 'softmax', 'bias': True}",
    ]
)


def build_model(path: Path) -> Path:
    """The small ONNX graph described in the module docstring."""
    import onnx
    from onnx import TensorProto, helper

    i64 = TensorProto.INT64

    def const(name: str, values: list[int], scalar: bool = False):
        return helper.make_node(
            "Constant", [], [name], value=helper.make_tensor(name, i64, [] if scalar else [len(values)], values)
        )

    nodes = [
        const("one", [1]),
        const("axis1", [1]),
        const("zero_s", [0], scalar=True),
        const("one_s", [1], scalar=True),
        helper.make_node("Shape", ["position_ids"], ["n"]),
        helper.make_node("Concat", ["n", "one"], ["rows"], axis=0),
        helper.make_node("Expand", ["input_ids", "rows"], ["ids"]),  # [N, L] from [1, L] or [N, L]
        helper.make_node("Expand", ["attention_mask", "rows"], ["am"]),
        helper.make_node("ReduceSum", ["am", "axis1"], ["length"], keepdims=1),  # [N, 1]
        helper.make_node("Unsqueeze", ["position_ids", "axis1"], ["pos"]),  # [N, 1]
        helper.make_node("GatherElements", ["ids", "pos"], ["cur"], axis=1),
        helper.make_node("Add", ["pos", "one"], ["pos_next"]),
        helper.make_node("GatherElements", ["ids", "pos_next"], ["next"], axis=1),
        helper.make_node("Unsqueeze", ["char_ids", "axis1"], ["cid"]),
        const("k2", [2]),
        const("k3", [3]),
        const("k5", [5]),
        helper.make_node("Mul", ["cur", "k2"], ["cur2"]),
        helper.make_node("Mul", ["length", "k3"], ["len3"]),
        helper.make_node("Mul", ["cid", "k5"], ["cid5"]),
        helper.make_node("Add", ["next", "cur2"], ["key1"]),
        helper.make_node("Add", ["key1", "len3"], ["key2"]),
        helper.make_node("Add", ["key2", "cid5"], ["key"]),  # [N, 1]
        helper.make_node("Shape", ["phoneme_mask"], ["mshape"]),
        helper.make_node("Gather", ["mshape", "one_s"], ["c"], axis=0),  # C, a scalar
        helper.make_node("Range", ["zero_s", "c", "one_s"], ["k"]),  # [C]
        helper.make_node("Add", ["key", "k"], ["kk"]),  # [N, C]
        helper.make_node("Mod", ["kk", "c"], ["m"], fmod=0),
        helper.make_node("Add", ["m", "one"], ["m1"]),
        helper.make_node("Cast", ["m1"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["mf", "phoneme_mask"], ["probs"]),
    ]
    inputs = [
        helper.make_tensor_value_info(n, i64, ["b", "l"]) for n in ("input_ids", "token_type_ids", "attention_mask")
    ]
    inputs += [
        helper.make_tensor_value_info("phoneme_mask", TensorProto.FLOAT, ["n", "c"]),
        helper.make_tensor_value_info("char_ids", i64, ["n"]),
        helper.make_tensor_value_info("position_ids", i64, ["n"]),
    ]
    output = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", "c"])
    graph = helper.make_graph(nodes, "small_g2pw", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_g2pw_folder(folder: Path) -> Path:
    """``folder`` as a G2PWModel folder: g2pW.onnx, config.py, the character lists and both JSON tables."""
    folder.mkdir(parents=True, exist_ok=True)
    build_model(folder / "g2pW.onnx")
    (folder / "config.py").write_text(CONFIG + "\n", encoding="utf-8")
    (folder / "POLYPHONIC_CHARS.txt").write_text("".join(f"{c}\t{p}\n" for c, p in POLYPHONIC), encoding="utf-8")
    (folder / "MONOPHONIC_CHARS.txt").write_text("".join(f"{c}\t{p}\n" for c, p in MONOPHONIC), encoding="utf-8")
    (folder / "bopomofo_to_pinyin_wo_tune_dict.json").write_text(json.dumps(BOPOMOFO, ensure_ascii=False), "utf-8")
    chars = {c: [p] for c, p in POLYPHONIC + MONOPHONIC}
    (folder / "char_bopomofo_dict.json").write_text(json.dumps(chars, ensure_ascii=False), encoding="utf-8")
    return folder


def build_tokenizer(folder: Path, chars: str) -> Path:
    """A BERT tokenizer folder (vocab.txt) with the specials and ``chars``; any other character is [UNK]."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(chars)]
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    return folder


def vocab_ids(folder: Path) -> dict[str, int]:
    return {t: i for i, t in enumerate((folder / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1])}


def expected_label(vocab: dict[str, int], text: str, query: int, char: str | None = None) -> str:
    """The small model's answer for the query at ``text[query]`` (``text``: the traditional, cropped text the
    model is given; every character one token; ``char``: the queried character when the row's tokens are
    another's): computed here in plain Python, not by gsv-ray."""
    ids = [vocab["[CLS]"], *(vocab.get(c, vocab["[UNK]"]) for c in text), vocab["[SEP]"]]
    pos = query + 1
    char = char or text[query]
    key = ids[pos + 1] + 2 * ids[pos] + 3 * len(ids) + 5 * CHARS.index(char)
    allowed = [LABELS.index(p) for c, p in POLYPHONIC if c == char]
    return LABELS[max(allowed, key=lambda k: (key + k) % len(LABELS))]


def pinyin_of(label: str) -> str:
    """``ㄏㄤ2`` -> ``hang2`` through the folder's table (test side)."""
    return BOPOMOFO[label[:-1]] + label[-1]
