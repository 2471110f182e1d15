"""BERT's WordPiece tokenizer for a Hugging Face folder, without transformers: the ids that
``AutoTokenizer.from_pretrained(folder)`` gives (``BertTokenizerFast``, what GPT-SoVITS's ``1-get-text.py``
runs) for one text with ``[CLS]`` and ``[SEP]`` around it.

1. special tokens (``[CLS]``, ``[UNK]``, ...) written in the text are kept whole;
2. the normaliser: drop NUL, U+FFFD and control characters, every white space becomes a space; spaces
   around each CJK ideograph; accents stripped (NFD, marks removed) when asked, or by default when
   lower-casing; lower case;
3. split on white space and around each punctuation character (ASCII punctuation and Unicode ``P*``);
4. WordPiece: longest-match-first pieces (``##`` after the first), a word with no split or more than
   ``max_input_chars_per_word`` characters becomes ``[UNK]``.

Characters are classified by Python's ``unicodedata``; tokenizers uses older Unicode tables, so a few
hundred rare characters whose category changed since (newer punctuation and combining marks) can
tokenize differently; ``norm_text`` of Mandarin (CJK ideographs and ``, . ! ? - …``) never holds one.

The settings come from ``tokenizer.json`` when the folder has one (GPT-SoVITS's chinese-roberta-wwm-ext-large
ships only that), else from ``vocab.txt`` and ``tokenizer_config.json`` (transformers' defaults where absent).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from gsv_ray.errors import GsvError

__all__ = ["BertTokenizer"]

_FIX = "give GPT-SoVITS's chinese-roberta-wwm-ext-large folder (tokenizer.json or vocab.txt)"
_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: the code-point blocks BERT treats as CJK ideographs (each becomes its own word); the fast tokenizer's
#: (tokenizers' BertNormalizer) sixth block starts at U+2B920, not at U+2B820 as the python one's
_CJK = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK)


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    ascii_punct = 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126
    return ascii_punct or unicodedata.category(ch).startswith("P")


def _clean_char(ch: str) -> str:
    """One character after BERT's clean-text step: ``""`` (dropped), ``" "`` (white space) or itself."""
    if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
        return " "
    if ch in ("\0", "\ufffd") or unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs"):  # unassigned (Cn) kept
        return ""
    return ch


@dataclass(frozen=True)
class BertTokenizer:
    """WordPiece over ``vocab`` (token -> id) with BERT's normaliser settings; :meth:`encode` gives the ids."""

    vocab: Mapping[str, int] = field(repr=False)
    lowercase: bool = True
    strip_accents: bool | None = None  # None: as ``lowercase`` (transformers' rule)
    clean_text: bool = True
    chinese_chars: bool = True
    unk_token: str = "[UNK]"
    cls_token: str = "[CLS]"
    sep_token: str = "[SEP]"
    prefix: str = "##"
    max_input_chars_per_word: int = 100
    specials: tuple[str, ...] = _SPECIALS

    def normalize(self, text: str) -> str:
        """The normaliser's output for ``text`` (no special tokens in it)."""
        if self.clean_text:
            text = "".join(_clean_char(c) for c in text)
        if self.chinese_chars:
            text = "".join(f" {c} " if _is_cjk(c) else c for c in text)
        if self.strip_accents or (self.strip_accents is None and self.lowercase):
            text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
        return text.lower() if self.lowercase else text

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of ``text``, without ``[CLS]``/``[SEP]``."""
        specials = [s for s in self.specials if s in self.vocab]
        parts = re.split(f"({'|'.join(map(re.escape, specials))})", text) if specials else [text]
        tokens: list[str] = []
        for i, part in enumerate(parts):
            if i % 2:  # a special token written in the text
                tokens.append(part)
                continue
            for word in self.normalize(part).split():
                for piece in _split_punct(word):
                    tokens.extend(self._wordpiece(piece))
        return tokens

    def encode(self, text: str) -> list[int]:
        """``[CLS] tokens [SEP]`` as ids: what ``tokenizer(text)["input_ids"]`` gives."""
        toks = [self.cls_token, *self.tokenize(text), self.sep_token]
        return [self.vocab[t] for t in toks]

    def _wordpiece(self, word: str) -> list[str]:
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_token]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = (self.prefix if start else "") + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            if end == start:
                return [self.unk_token]
            pieces.append(piece)
            start = end
        return pieces

    @classmethod
    def from_folder(cls, folder: str | Path) -> "BertTokenizer":
        """Read ``tokenizer.json`` (preferred, as transformers' fast tokenizer does) or ``vocab.txt`` +
        ``tokenizer_config.json``; raises a one-line :class:`GsvError` naming a missing or foreign file."""
        folder = Path(folder)
        if (folder / "tokenizer.json").is_file():
            try:
                tok = _from_tokenizer_json(folder / "tokenizer.json")
            except (KeyError, TypeError, IndexError, ValueError, AttributeError) as e:  # a field of another shape
                raise GsvError(
                    f"unexpected tokenizer.json layout ({e!r})", path=folder / "tokenizer.json", fix=_FIX
                ) from e
        elif (folder / "vocab.txt").is_file():
            tok = _from_vocab_txt(folder)
        else:
            raise GsvError("no BERT tokenizer (tokenizer.json or vocab.txt)", path=folder, fix=_FIX)
        missing = [t for t in (tok.unk_token, tok.cls_token, tok.sep_token) if t not in tok.vocab]
        if missing:
            raise GsvError(f"the vocabulary lacks {', '.join(missing)}", path=folder, fix=_FIX)
        return tok


def _split_punct(word: str) -> list[str]:
    """``word`` cut before and after each punctuation character (each one its own piece)."""
    out, cur = [], ""
    for ch in word:
        if _is_punct(ch):
            out.extend([cur, ch] if cur else [ch])
            cur = ""
        else:
            cur += ch
    return out + [cur] if cur else out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GsvError(f"cannot read the BERT tokenizer ({e})", path=path, fix=_FIX) from e
    if not isinstance(raw, dict):
        raise GsvError("not a JSON object", path=path, fix=_FIX)
    return raw


def _token(v: Any, default: str) -> str:
    """A special token as ``tokenizer_config.json`` writes it: a string, or ``{"content": ...}``."""
    return v.get("content", default) if isinstance(v, dict) else v if isinstance(v, str) else default


def _from_vocab_txt(folder: Path) -> BertTokenizer:
    try:
        lines = (folder / "vocab.txt").read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise GsvError(f"cannot read the BERT vocabulary ({e})", path=folder / "vocab.txt", fix=_FIX) from e
    lines = lines[:-1] if lines and lines[-1] == "" else lines  # the newline that ends the last token
    vocab = {tok: i for i, tok in enumerate(lines)}
    cfg = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    return BertTokenizer(
        vocab=vocab,
        lowercase=bool(cfg.get("do_lower_case", True)),
        strip_accents=cfg.get("strip_accents"),
        chinese_chars=bool(cfg.get("tokenize_chinese_chars", True)),
        unk_token=_token(cfg.get("unk_token"), "[UNK]"),
        cls_token=_token(cfg.get("cls_token"), "[CLS]"),
        sep_token=_token(cfg.get("sep_token"), "[SEP]"),
    )


def _from_tokenizer_json(path: Path) -> BertTokenizer:
    raw = _read_json(path)
    model, norm = raw.get("model") or {}, raw.get("normalizer") or {}
    post = raw.get("post_processor") or {}
    if (
        model.get("type") != "WordPiece"
        or norm.get("type") != "BertNormalizer"
        or not isinstance(model.get("vocab"), dict)
    ):
        raise GsvError(
            f"not a BERT WordPiece tokenizer (model {model.get('type')!r}, normalizer {norm.get('type')!r})",
            path=path,
            fix=_FIX,
        )
    cls_tok, sep_tok = "[CLS]", "[SEP]"
    if post.get("type") == "BertProcessing":
        cls_tok, sep_tok = post["cls"][0], post["sep"][0]
    elif post.get("type") == "TemplateProcessing":
        single = [s["SpecialToken"]["id"] for s in post.get("single", []) if "SpecialToken" in s]
        if len(single) == 2:  # [CLS] $A [SEP]
            cls_tok, sep_tok = single
    added = tuple(t["content"] for t in raw.get("added_tokens") or [] if t.get("special"))
    return BertTokenizer(
        vocab=model["vocab"],
        lowercase=bool(norm.get("lowercase", True)),
        strip_accents=norm.get("strip_accents"),
        clean_text=bool(norm.get("clean_text", True)),
        chinese_chars=bool(norm.get("handle_chinese_chars", True)),
        unk_token=model.get("unk_token", "[UNK]"),
        cls_token=cls_tok,
        sep_token=sep_tok,
        prefix=model.get("continuing_subword_prefix", "##"),
        max_input_chars_per_word=int(model.get("max_input_chars_per_word", 100)),
        specials=added or _SPECIALS,
    )
