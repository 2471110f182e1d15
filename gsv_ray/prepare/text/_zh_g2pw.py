"""Upstream's g2pW reading of Mandarin (``chinese2`` with ``is_g2pw``, every version but v1), from the
user's ``G2PWModel`` folder and the chinese-roberta-wwm-ext-large tokenizer. Nothing here downloads.

The steps, as GPT-SoVITS's ``text/g2pw`` runs them (read from its code; no golden of the real model exists):

* :func:`segment_pinyin` is ``G2PWPinyin.lazy_pinyin(segment, neutral_tone_with_five=True, style=TONE3)``:
  the segment is cut into runs of Han characters and of the rest (no phrase segmentation); each Han run goes
  to :class:`G2pw` whole, a reading it leaves open is pypinyin's single-character one.
* :meth:`G2pw.readings` (``G2PWOnnxConverter``): OpenCC ``s2tw`` (the length must not change); per character:
  a polyphonic one of the model's list (less the ``non_polyphonic`` set) is a query, a monophonic one reads its
  bopomofo (less ``non_monophonic``), any other pypinyin's TONE3 reading of the simplified sentence at its
  index. The model sees the sentence cropped from ``context_chars`` before the first query to as many after
  the last (env ``g2pw_polyphonic_context_chars``, default 16, 0: whole), tokenised per character
  (``[CLS] ... [SEP]``, at most 512 tokens around the query); ``position_ids`` is the query's token + 1.
  With ``sentence_dedup`` (env ``g2pw_sentence_dedup``, default true) queries sharing a text share one
  ``input_ids`` row. The answer is the argmax label, bopomofo + tone -> pinyin + tone.
* :func:`correct_pronunciation`: a jieba word of GPT-SoVITS's polyphonic dictionary (``g2pw/polyphonic.rep``
  then ``polyphonic-fix.rep``, a later key winning: 45,047 words) takes the dictionary's readings.

``config.py`` of the folder is read with :mod:`ast` (literal assignments only), never run. The ONNX session is
built once per process and folder (:func:`load_g2pw`, cached): in a Ray task it lives in the worker process.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from gsv_ray.errors import GsvError
from gsv_ray.models.bert_tokenizer import BertTokenizer
from gsv_ray.prepare.text._zh_tables import traditional_to_simplified, typed_tables
from gsv_ray.prepare.text.base import TextRejected, table_path

__all__ = [
    "G2pwFolderError",
    "G2pwTables",
    "G2pw",
    "FOLDER_FILES",
    "read_config",
    "load_tables",
    "check_folder",
    "bopomofo_to_pinyin",
    "polyphonic_dict",
    "correct_pronunciation",
    "context_window",
    "to_traditional",
    "model_inputs",
    "load_g2pw",
    "g2pw_from_env",
    "segment_pinyin",
]

#: the files upstream reads from ``G2PWModel/`` (the model may also be spelled ``g2pw.onnx``)
FOLDER_FILES = (
    "g2pW.onnx",
    "config.py",
    "POLYPHONIC_CHARS.txt",
    "MONOPHONIC_CHARS.txt",
    "bopomofo_to_pinyin_wo_tune_dict.json",
    "char_bopomofo_dict.json",
)
_TABLES = "tables_g2pw.json"
_FIX = "give GPT-SoVITS's GPT_SoVITS/text/G2PWModel folder (the G2PWModel_1.1 download), unchanged"
_MAX_LEN = 512  # dataset.prepare_onnx_input's max_len: [CLS] + 510 tokens + [SEP]
_ALNUM = re.compile(r"[a-zA-Z0-9]+")


class G2pwFolderError(GsvError):
    """The G2PWModel folder (or a file in it) cannot be used: one line naming the file."""


# --- the folder: config.py, the character lists, the bopomofo table ------------------------------------------


def _literal_targets(node: ast.stmt) -> list[str] | None:
    """The names a ``name = value`` (or ``name: T = value``) statement assigns, else None."""
    if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
        return [t.id for t in node.targets]  # type: ignore[attr-defined]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        return [node.target.id]
    return None


def read_config(path: str | Path) -> dict[str, Any]:
    """``config.py``'s values without running it: every top-level statement must be ``name = <literal>``
    (a docstring may stand alone), read with :func:`ast.literal_eval`; upstream's ``default_config_dict``
    (``tables_g2pw.json``) fills a missing name, and a dict's missing keys, as ``load_config(use_default=True)``."""
    path = Path(path)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as e:
        raise G2pwFolderError(f"cannot read the g2pW config ({type(e).__name__}: {e})", path=path, fix=_FIX) from e
    values: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        names = _literal_targets(node)
        try:
            value = ast.literal_eval(node.value) if names else None  # type: ignore[attr-defined]
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            names = None
        if names is None:
            raise G2pwFolderError(
                f"line {node.lineno} is not a `name = literal` assignment; gsv-ray reads config.py without running "
                "it, so it takes only literal values",
                path=path,
                fix=_FIX,
            )
        values.update(dict.fromkeys(names, value))
    defaults: dict[str, Any] = typed_tables(_TABLES)["default_config_dict"]
    for name, default in defaults.items():
        if name not in values:
            values[name] = default
        elif isinstance(default, dict) and isinstance(values[name], dict):
            values[name] = {**values[name], **{k: v for k, v in default.items() if k not in values[name]}}
    return values


def _pairs(path: Path) -> list[tuple[str, str]]:
    """``char<TAB>bopomofo`` lines, as upstream reads them (``read().strip().split("\\n")``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise G2pwFolderError(f"cannot read it ({e})", path=path, fix=_FIX) from e
    out = []
    for n, line in enumerate(text.strip().split("\n"), 1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise G2pwFolderError(f"line {n} is not 'character<TAB>bopomofo'", path=path, fix=_FIX)
        out.append((fields[0], fields[1]))
    return out


def _json_dict(path: Path) -> dict[str, str]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise G2pwFolderError(f"cannot read it ({e})", path=path, fix=_FIX) from e
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise G2pwFolderError("not a JSON object of strings", path=path, fix=_FIX)
    return value


@dataclass(frozen=True)
class G2pwTables:
    """What the converter reads from the folder: the model's ``labels`` (bopomofo + tone, or ``"char
    bopomofo"`` with ``use_char_phoneme``), each polyphonic character's label indices (``char_phonemes``),
    ``chars`` (sorted: a character's ``char_ids``), the ``polyphonic`` characters queried, the ``monophonic``
    ones' bopomofo, the ``bopomofo`` -> pinyin table (without tone), config.py's ``use_mask`` and
    ``use_char_phoneme``."""

    labels: tuple[str, ...]
    char_phonemes: Mapping[str, tuple[int, ...]]
    chars: tuple[str, ...]
    polyphonic: frozenset[str]
    monophonic: Mapping[str, str]
    bopomofo: Mapping[str, str]
    use_mask: bool
    use_char_phoneme: bool


def model_file(folder: str | Path) -> Path:
    """``g2pW.onnx`` (or ``g2pw.onnx``) in the folder; :class:`G2pwFolderError` when neither is there."""
    folder = Path(folder)
    for name in ("g2pW.onnx", "g2pw.onnx"):
        if (folder / name).is_file():
            return folder / name
    raise G2pwFolderError("no g2pW.onnx (the g2pW model)", path=folder, fix=_FIX)


def check_folder(folder: str | Path) -> Path:
    """The folder, once every file upstream reads is there and the tables parse (read afresh, not cached; the
    model is not loaded)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise G2pwFolderError("not a folder", path=folder, fix=_FIX)
    model_file(folder)
    missing = [f for f in FOLDER_FILES[1:] if not (folder / f).is_file()]
    if missing:
        raise G2pwFolderError(f"no {', '.join(missing)}", path=folder, fix=_FIX)
    _read_tables(str(folder))
    return folder


@lru_cache(maxsize=4)
def load_tables(folder: str) -> G2pwTables:
    """The folder's tables, read once per process (:func:`_read_tables`)."""
    return _read_tables(folder)


def _read_tables(folder: str) -> G2pwTables:
    """The folder's tables, built as ``_G2PWBaseOnnxConverter.__init__`` builds them."""
    root = Path(folder)
    config = read_config(root / "config.py")
    use_char_phoneme = bool(config["use_char_phoneme"])
    poly = _pairs(root / "POLYPHONIC_CHARS.txt")
    keys = [f"{c} {p}" if use_char_phoneme else p for c, p in poly]
    labels = tuple(sorted(set(keys)))
    index = {label: i for i, label in enumerate(labels)}
    char_phonemes: dict[str, list[int]] = {}
    for (char, _), key in zip(poly, keys):
        char_phonemes.setdefault(char, []).append(index[key])
    g2pw = typed_tables(_TABLES)
    monophonic = dict(_pairs(root / "MONOPHONIC_CHARS.txt"))
    for char in g2pw["self.non_monophonic"]:
        monophonic.pop(char, None)
    if not (root / "char_bopomofo_dict.json").is_file():  # read upstream, used only as a membership test
        raise G2pwFolderError("no char_bopomofo_dict.json", path=root, fix=_FIX)
    return G2pwTables(
        labels=labels,
        char_phonemes=MappingProxyType({c: tuple(v) for c, v in char_phonemes.items()}),
        chars=tuple(sorted(char_phonemes)),
        polyphonic=frozenset(char_phonemes) - frozenset(g2pw["self.non_polyphonic"]),
        monophonic=MappingProxyType(monophonic),
        bopomofo=MappingProxyType(_json_dict(root / "bopomofo_to_pinyin_wo_tune_dict.json")),
        use_mask=bool(config["use_mask"]),
        use_char_phoneme=use_char_phoneme,
    )


def bopomofo_to_pinyin(bopomofo: str, table: Mapping[str, str]) -> str | None:
    """``ㄏㄤ2`` -> ``hang2`` (the table's pinyin + the tone digit); None when the table has no entry (upstream
    then takes pypinyin's reading). A label without a tone digit 1-5 is :class:`TextRejected` (upstream asserts)."""
    tone = bopomofo[-1:]
    if not tone or tone not in "12345":
        raise TextRejected(f"the g2pW label {bopomofo!r} has no tone digit 1-5 (upstream fails on it)")
    base = table.get(bopomofo[:-1])
    return base + tone if base else None


# --- GPT-SoVITS's polyphonic dictionary ----------------------------------------------------------------------


@lru_cache(maxsize=None)
def polyphonic_dict() -> Mapping[str, tuple[str, ...]]:
    """``word -> readings`` of ``g2pw_polyphonic.rep.tsv`` then ``g2pw_polyphonic-fix.rep.tsv.gz`` (a later
    row replacing an earlier key: 45,047 words)."""
    out: dict[str, tuple[str, ...]] = {}
    for name in ("g2pw_polyphonic.rep.tsv", "g2pw_polyphonic-fix.rep.tsv.gz"):
        path = table_path("zh", name)
        text = gzip.decompress(path.read_bytes()).decode("utf-8") if name.endswith(".gz") else path.read_text("utf-8")
        for line in text.splitlines():
            word, readings = line.split("\t")
            out[word] = tuple(readings.split(" "))
    return MappingProxyType(out)


def correct_pronunciation(word: str, pinyins: Sequence[str]) -> list[str]:
    """``g2pw.correct_pronunciation``: the dictionary's readings of ``word`` when it is a key; else each
    character that is a key takes its first reading (no single character is a key of the shipped tables)."""
    table = polyphonic_dict()
    if word in table:
        return list(table[word])
    out = list(pinyins)
    for i, char in enumerate(word):
        if char in table:
            if i >= len(out):
                raise TextRejected(f"{word!r} has fewer readings than characters (upstream fails on it)")
            out[i] = table[char][0]
    return out


# --- the model's input --------------------------------------------------------------------------------------


def context_window(length: int, queries: Sequence[int], chars: int) -> tuple[int, int]:
    """``[left, right)`` of a sentence of ``length`` given to the model: ``chars`` before the first query to
    ``chars`` after the last (clipped to the sentence); the whole sentence when ``chars`` is 0."""
    if chars <= 0:
        return 0, length
    return max(0, queries[0] - chars), min(length, queries[-1] + chars + 1)


@lru_cache(maxsize=1)
def _s2tw() -> Any:
    from opencc import OpenCC

    return OpenCC("s2tw")


def to_traditional(sentence: str, convert: Callable[[str], str] | None = None) -> str:
    """OpenCC ``s2tw`` of ``sentence`` (``convert``: another converter); :class:`TextRejected` when it changes
    the length (upstream asserts it does not, and drops the line)."""
    out = (convert or _s2tw().convert)(sentence)
    if len(out) != len(sentence):
        raise TextRejected(
            f"OpenCC s2tw turned {sentence!r} ({len(sentence)} characters) into {out!r} ({len(out)}); upstream "
            "asserts the length is kept and drops the line"
        )
    return out


def _tokenize(tokenizer: BertTokenizer, text: str) -> tuple[list[str], list[int | None], list[tuple[int, int]]]:
    """``utils.tokenize_and_map``: the tokens of ``text`` (word by word: a run of ASCII letters/digits, or one
    other character; spaces skipped), each character's token index, each token's character span."""
    words: list[tuple[int, int]] = []
    text2token: list[int | None] = []
    i = 0
    while i < len(text):
        if text[i] == " ":
            text2token.append(None)
            i += 1
            continue
        m = _ALNUM.match(text, i)
        end = m.end() if m else i + 1
        text2token += [len(words)] * (end - i)  # the word's index, overwritten by its tokens' below
        words.append((i, end))
        i = end
    tokens: list[str] = []
    spans: list[tuple[int, int]] = []
    for start, end in words:
        pieces = tokenizer.tokenize(text[start:end])
        if not pieces or pieces == [tokenizer.unk_token]:
            tokens.append(tokenizer.unk_token)
            spans.append((start, end))
            continue
        for piece in pieces:
            n = len(piece[len(tokenizer.prefix) :] if piece.startswith(tokenizer.prefix) else piece)
            spans.append((start, start + n))
            start += n
            tokens.append(piece)
    for t, (start, end) in enumerate(spans):
        for pos in range(start, end):
            text2token[pos] = t  # an IndexError here is upstream's "text is invalid" (no model input)
    return tokens, text2token, spans


def _truncate(
    query: int, tokens: list[str], text2token: list[int | None], spans: list[tuple[int, int]]
) -> tuple[int, list[str], list[int | None]]:
    """``dataset._truncate``: at most 510 tokens, centred on the query's token and shifted inside the text;
    returns (query index, tokens, text2token) of the cut."""
    keep = _MAX_LEN - 2
    if len(tokens) <= keep:
        return query, tokens, text2token
    first = text2token[query] - keep // 2  # type: ignore[operator]
    last = first + keep
    if first < 0:
        first, last = 0, keep
    elif last > len(tokens):
        first, last = len(tokens) - keep, len(tokens)
    start, end = spans[first][0], spans[last - 1][1]
    cut = [t - first if t is not None else None for t in text2token[start:end]]
    return query - start, tokens[first:last], cut


def model_inputs(
    tokenizer: BertTokenizer, tables: G2pwTables, text: str, queries: Sequence[int]
) -> dict[str, np.ndarray] | None:
    """``dataset.prepare_onnx_input`` for the queries of one (lower-cased) text: the six arrays the model
    takes, one row per query; None when the text cannot be tokenised (upstream then keeps pypinyin)."""
    text = text.lower()
    try:
        tokens, text2token, spans = _tokenize(tokenizer, text)
    except IndexError:
        return None
    unk = tokenizer.vocab[tokenizer.unk_token]
    rows: dict[str, list[Any]] = {k: [] for k in ("input_ids", "phoneme_masks", "char_ids", "position_ids")}
    for query in queries:
        q, toks, t2t = _truncate(query, tokens, text2token, spans)
        ids = [tokenizer.vocab.get(t, unk) for t in [tokenizer.cls_token, *toks, tokenizer.sep_token]]
        char = text[query]
        allowed = set(tables.char_phonemes[char])
        rows["input_ids"].append(ids)
        rows["phoneme_masks"].append(
            [1 if i in allowed or not tables.use_mask else 0 for i in range(len(tables.labels))]
        )
        rows["char_ids"].append(tables.chars.index(char))
        rows["position_ids"].append(t2t[q] + 1)  # [CLS] is token 0
    if len({len(r) for r in rows["input_ids"]}) > 1:  # numpy cannot stack them: upstream fails on the line
        raise TextRejected(f"a text of {len(tokens)} tokens cut differently per polyphonic character (upstream fails)")
    ids = np.array(rows["input_ids"], dtype=np.int64)
    return {
        "input_ids": ids,
        "token_type_ids": np.zeros_like(ids),
        "attention_mask": np.ones_like(ids),
        "phoneme_mask": np.array(rows["phoneme_masks"], dtype=np.float32),
        "char_ids": np.array(rows["char_ids"], dtype=np.int64),
        "position_ids": np.array(rows["position_ids"], dtype=np.int64),
    }


# --- the converter ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class G2pw:
    """The converter of one folder: its tables, the roberta tokenizer, the ONNX session, the context width
    and the sentence dedup (upstream's two environment variables)."""

    tables: G2pwTables
    tokenizer: BertTokenizer
    session: Any
    context_chars: int = 16
    sentence_dedup: bool = True

    def _predict(self, inputs: dict[str, np.ndarray]) -> list[str]:
        probs = self.session.run(None, inputs)[0]
        return [self.tables.labels[i] for i in np.argmax(probs, axis=1).tolist()]

    def predict(self, inputs: dict[str, np.ndarray], texts: Sequence[str]) -> list[str]:
        """The argmax label of each row; with ``sentence_dedup`` rows of the same text run as one group whose
        ``input_ids``/``token_type_ids``/``attention_mask`` are its first row's (upstream's dedup)."""
        groups: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            groups.setdefault(text, []).append(i)
        if not self.sentence_dedup or all(len(g) == 1 for g in groups.values()):
            return self._predict(inputs)
        preds = [""] * len(texts)
        for rows in groups.values():
            group = {k: v[rows] for k, v in inputs.items()}
            if len(rows) > 1:
                for k in ("input_ids", "token_type_ids", "attention_mask"):
                    group[k] = group[k][:1]
            for i, label in zip(rows, self._predict(group)):
                preds[i] = label
        return preds

    def readings(self, sentence: str) -> list[str | None]:
        """``G2PWOnnxConverter(style="pinyin")`` on one run of Han characters: each character's TONE3 reading
        (neutral tone 5), None where upstream falls back to pypinyin's single-character reading."""
        from pypinyin import Style, pinyin

        t = self.tables
        sent = to_traditional(sentence)
        t2s = traditional_to_simplified()
        known = pinyin("".join(t2s.get(c, c) for c in sent), neutral_tone_with_five=True, style=Style.TONE3)
        out: list[str | None] = [None] * len(sent)
        queries = []
        for i, char in enumerate(sent):
            if char in t.polyphonic:
                queries.append(i)
            elif char in t.monophonic:
                out[i] = bopomofo_to_pinyin(t.monophonic[char], t.bopomofo)
            elif i < len(known):
                out[i] = known[i][0]
            else:
                raise TextRejected(f"pypinyin gives fewer readings than characters for {sentence!r} (upstream fails)")
        if not queries:
            return out
        left, right = context_window(len(sent), queries, self.context_chars)
        inputs = model_inputs(self.tokenizer, t, sent[left:right], [q - left for q in queries])
        if inputs is None:
            return out
        for q, label in zip(queries, self.predict(inputs, [sent[left:right]] * len(queries))):
            out[q] = bopomofo_to_pinyin(label.split(" ")[1] if t.use_char_phoneme else label, t.bopomofo)
        return out


@lru_cache(maxsize=4)
def load_g2pw(
    folder: str, tokenizer: str, context_chars: int = 16, sentence_dedup: bool = True, cuda: bool = False
) -> G2pw:
    """The converter of ``folder`` with the tokenizer folder ``tokenizer`` (chinese-roberta-wwm-ext-large),
    built once per process and arguments: onnxruntime's CPU provider (CUDA first when ``cuda`` and available),
    upstream's session options (all graph optimisations, sequential, 2 intra-op threads)."""
    try:
        import onnxruntime
        import opencc  # noqa: F401  (s2tw, used per sentence: missing, it is named here once)
    except ModuleNotFoundError as e:
        from gsv_ray.prepare.text.frontend import EXTRA_FIX, LanguageUnavailable

        raise LanguageUnavailable(f"zh with g2pW needs the package {e.name!r}, not installed", fix=EXTRA_FIX) from e
    check_folder(folder)
    tables = load_tables(str(folder))
    tok = BertTokenizer.from_folder(tokenizer)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = 2
    options.log_severity_level = 3  # upstream: set_default_logger_severity(3)
    providers = ["CPUExecutionProvider"]
    if cuda and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    path = model_file(folder)
    try:
        session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for a file that is not a model
        raise G2pwFolderError(
            f"onnxruntime cannot load it ({str(e).splitlines()[0][:200]})", path=path, fix=_FIX
        ) from e
    return G2pw(tables, tok, session, context_chars, sentence_dedup)


def g2pw_from_env(folder: str | Path, tokenizer: str | Path, cuda: bool = False) -> G2pw:
    """:func:`load_g2pw` with upstream's environment variables: ``g2pw_polyphonic_context_chars`` (default 16)
    and ``g2pw_sentence_dedup`` (default true; 1/true/yes/y/on)."""
    try:
        chars = max(0, int(os.getenv("g2pw_polyphonic_context_chars", "16")))
    except ValueError as e:
        raise GsvError(
            f"g2pw_polyphonic_context_chars={os.getenv('g2pw_polyphonic_context_chars')!r} is not a whole number",
            fix="set it to a number of characters (16: upstream's default; 0: the whole sentence), or unset it",
        ) from e
    dedup = os.getenv("g2pw_sentence_dedup", "true").strip().lower() in {"1", "true", "yes", "y", "on"}
    return load_g2pw(str(folder), str(tokenizer), chars, dedup, cuda)


# --- G2PWPinyin.lazy_pinyin ----------------------------------------------------------------------------------


def _converter(g2pw: G2pw) -> Any:
    """A pypinyin converter whose Han runs are read by ``g2pw`` (pypinyin's documented extension point:
    a ``DefaultConverter`` subclass; the rest, styles and neutral tone 5, is pypinyin's own)."""
    from pypinyin import Style
    from pypinyin.constants import RE_HANS
    from pypinyin.contrib.tone_convert import to_tone
    from pypinyin.converter import UltimateConverter

    class _G2pwConverter(UltimateConverter):
        def convert(self, words, style, heteronym, errors, strict, **kwargs):
            if not RE_HANS.match(words):
                return super().convert(words, style, heteronym, errors, strict, **kwargs)
            pys: list[list[str]] = []
            for i, reading in enumerate(g2pw.readings(words)):
                if reading is None:
                    pys.extend(super().convert(words[i], Style.TONE, heteronym, errors, strict, **kwargs))
                else:
                    pys.append([to_tone(reading)])
            post = self.post_pinyin(words, heteronym, pys)
            pys = self.convert_styles(post if post is not None else pys, words, style, heteronym, errors, strict)
            return [list(dict.fromkeys(x for x in item if x)) or [""] for item in pys]

    return _G2pwConverter(neutral_tone_with_five=True)


def segment_pinyin(segment: str, g2pw: G2pw) -> list[str]:
    """``G2PWPinyin.lazy_pinyin(segment, neutral_tone_with_five=True, style=Style.TONE3)``: Han runs read
    whole by g2pW (no phrase segmentation first), other runs kept as they are, one string per item."""
    from pypinyin import Style
    from pypinyin.core import Pinyin
    from pypinyin.seg.simpleseg import simple_seg

    class _G2pwPinyin(Pinyin):
        def get_seg(self, **kwargs):
            return simple_seg

    return list(chain(*_G2pwPinyin(_converter(g2pw)).pinyin(segment, style=Style.TONE3)))
