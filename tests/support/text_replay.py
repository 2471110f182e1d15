"""A stand-in for the per-language text front-ends, built from upstream's goldens
(``tests/reference/gpt_sovits/text/text_frontend.json``): :class:`Replay` answers each golden sentence
of one language and version with what upstream's language module produced for it (``norm_text``,
the phones before the cleaner's UNK mapping, ``word2ph``) and rejects the sentences upstream dropped.
The core (``gsv_ray.prepare.text.frontend``) and ``gsv-ray prepare``'s pipeline are tested with it,
independently of the language modules (which are tested against the same goldens)."""

from __future__ import annotations

import json
from pathlib import Path

from gsv_ray.prepare.text.base import TextRejected

GOLDEN = Path(__file__).resolve().parents[1] / "reference" / "gpt_sovits" / "text" / "text_frontend.json"
LANGUAGES = ("en", "ja", "ko", "yue", "zh")


def load_golden(path: Path = GOLDEN) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


class Replay:
    """A language module (``normalize``, ``g2p``) that answers the golden sentences as upstream did."""

    def __init__(self, golden: dict, language: str, version: str) -> None:
        self.norm: dict[str, str] = {}
        self.g2p_out: dict[str, tuple[list[str], list[int] | None]] = {}
        self.rejected: set[str] = set()
        entry = golden["languages"].get(language, {}).get(version, {"sentences": []})
        for s in entry["sentences"]:
            self._add(language, s["get_text_input"], s)
            if "direct_clean_text_on_raw_text" in s:
                self._add(language, s["text"], s["direct_clean_text_on_raw_text"])
        if language == "en":  # upstream's english g2p of " " (what v1 makes of ko/yue): no phones
            self.norm.setdefault(" ", " ")
            self.g2p_out.setdefault(" ", ([], None))

    def _add(self, language: str, text: str, s: dict) -> None:
        if s["status"] != "ok":
            self.rejected.add(text)
            return
        phones = list(s.get("module_g2p_before_unk_mapping") or s["phones"])
        if language == "en" and len(phones) <= 4 and phones[:1] == [","]:
            phones = phones[1:]  # the cleaner put it there
        if language == "zh" and ("￥" in text or "^" in text):
            phones = ["," if p in ("SP2", "SP3") else p for p in phones]  # clean_special's mapping undone
        self.norm[text] = self.norm[text.replace("￥", ",").replace("^", ",")] = s["norm_text"]
        self.g2p_out[s["norm_text"]] = (phones, s["word2ph"])

    def normalize(self, text: str, version: str) -> str:
        if text in self.rejected:
            raise TextRejected(f"upstream raised on {text!r}")
        return self.norm[text]

    def g2p(self, norm_text: str, version: str):
        return self.g2p_out[norm_text]


class ReplayLoader:
    """``load(language)`` for ``clean_text`` / ``prepare_experiment``: the replay modules of one version
    (picklable, so Ray workers get it)."""

    def __init__(self, version: str, golden: dict | None = None) -> None:
        golden = golden or load_golden()
        version = "v1" if version == "v1" else "v2"  # the goldens' two; every later version runs v2's code
        self.modules = {lang: Replay(golden, lang, version) for lang in LANGUAGES}

    def __call__(self, language: str) -> Replay:
        return self.modules[language]
