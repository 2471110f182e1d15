"""The stages of ``gsv-ray prepare``, one utterance per row, and the two ways to run them.

A row is a dict (the same keys in every row, so Ray Data keeps one schema): ``name``, ``wav`` (the
file), ``lineno``, ``language``, ``text``; the stages fill ``line`` (the ``2-name2text.txt`` line),
``problem`` (``"<reason>\\t<one line>"``, empty while the utterance is fine), ``note`` (the same
form: kept, but worth a look), ``wav32k``/``wav16k``
(bytes, between the decode task and the HuBERT actor). A row with a problem passes the later stages
untouched.

* :func:`text_stage` (a task): ``clean_text`` -> ``line``. A zh line is refused without the BERT folder
  (``needs_bert``) and, for a version other than v1, without the g2pW folder or ``no_g2pw`` (``needs_g2pw``:
  upstream reads those with the g2pW model). The g2pW session is built once per worker process (cached).
* :class:`BertStage` (an actor, zh lines only): ``3-bert/<name>.pt`` (:mod:`gsv_ray.prepare.bert`); a line
  the BERT step rejects (an empty text) is dropped, as upstream drops it. It runs before the audio, so a
  dropped line has no audio files; a finished ``3-bert`` file is not redone.
* :func:`decode_stage` (a task): decode, peak filter, loudness mix (:func:`~gsv_ray.prepare.audio.prepare_clip`);
  skipped when the utterance's outputs exist (a rerun).
* :class:`HubertStage` (an actor: the model loaded once): one utterance per forward (HuBERT's first
  GroupNorm is not padding-invariant), writes ``5-wav32k/<name>`` then ``4-cnhubert/<name>.pt``.
* :class:`SvStage` (an actor, v2Pro/v2ProPlus): ``7-sv_cn/<name>.pt`` from the written ``5-wav32k`` file.

:func:`run_in_process` calls the very same functions on batches in this process;
``gsv_ray.preparation.run_on_ray`` builds the Ray Data pipeline from them (the launcher layer). Every file is
written atomically; the ``.pt`` of a stage is its last write, so its presence means the stage is done
for that utterance (:meth:`Layout.done`: the audio ``.pt`` files, and ``3-bert`` for a zh line). Each
model stage sets torch's thread count, so both ways give the same bytes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gsv_ray.atomic import atomic_write
from gsv_ray.data.layout import BERT_DIR, HUBERT_DIR, SV_DIR, WAV_DIR, name2text_fields
from gsv_ray.errors import GsvError, first_line
from gsv_ray.prepare.audio import ClipProblem, cnhubert, prepare_clip, write_cnhubert, write_wav32k
from gsv_ray.prepare.text.base import LanguageModule, TextRejected
from gsv_ray.prepare.text.frontend import (
    LanguageUnavailable,
    clean_text,
    language_module,
    name2text_line,
    pre_replace,
)

__all__ = [
    "Layout",
    "StageConfig",
    "ModelStage",
    "failed_row",
    "new_row",
    "problem_of",
    "text_stage",
    "decode_stage",
    "BertStage",
    "HubertStage",
    "SvStage",
    "bert_wanted",
    "write_sv",
    "run_in_process",
]


@dataclass(frozen=True)
class Layout:
    """Where an experiment folder keeps an utterance's files (upstream's names)."""

    root: Path

    def wav32k(self, name: str) -> Path:
        return self.root / WAV_DIR / name

    def cnhubert(self, name: str) -> Path:
        return self.root / HUBERT_DIR / f"{name}.pt"

    def sv(self, name: str) -> Path:
        return self.root / SV_DIR / f"{name}.pt"

    def bert(self, name: str) -> Path:
        return self.root / BERT_DIR / f"{name}.pt"

    def done(self, name: str, pro: bool, bert: bool = False) -> bool:
        """Whether a previous run finished this utterance's audio outputs (and its ``3-bert`` file if ``bert``)."""
        audio = self.cnhubert(name).is_file() and (not pro or self.sv(name).is_file())
        return audio and (not bert or self.bert(name).is_file())


@dataclass(frozen=True)
class StageConfig:
    """What every stage needs: the output folder, the version, the models' places (``bert`` None: not
    given, zh lines are refused), the torch threads per model worker, the device (None: CUDA when the
    worker has it), the language-module loader, ``no_g2pw`` (zh v2+: upstream's reading with g2pW off),
    ``sovits`` (the SoVITS file whose quantizer makes the semantic tokens), ``g2pw`` (zh v2+: the user's
    G2PWModel folder; its tokenizer is the ``bert`` folder's)."""

    out: str
    version: str
    hubert: str
    sv: str | None = None
    threads: int = 1
    device: str | None = None
    load: Callable[[str], LanguageModule] = language_module
    bert: str | None = None
    no_g2pw: bool = False
    sovits: str | None = None
    g2pw: str | None = None

    @property
    def layout(self) -> Layout:
        return Layout(Path(self.out))

    @property
    def pro(self) -> bool:
        return self.sv is not None

    @property
    def zh_ready(self) -> bool:
        """Whether zh lines can be read as upstream reads them for this version (v1; g2pW given; or asked
        to read them without it), BERT folder aside."""
        return self.version == "v1" or self.no_g2pw or self.g2pw is not None


def new_row(lineno: int, name: str, wav: str, language: str, text: str) -> dict[str, Any]:
    """A pipeline row for one ``.list`` line."""
    return {
        "lineno": lineno,
        "name": name,
        "wav": wav,
        "language": language,
        "text": text,
        "line": "",
        "problem": "",
        "note": "",
        "wav32k": b"",
        "wav16k": b"",
        "semantic": "",
    }


def problem_of(row: dict[str, Any]) -> tuple[str, str] | None:
    """``(reason, message)`` of a row's problem, or None."""
    p = row["problem"]
    return tuple(p.split("\t", 1)) if p else None  # type: ignore[return-value]


def failed_row(row: dict[str, Any], reason: str, message: str) -> dict[str, Any]:
    """``row`` with a problem (``reason``, one-line ``message``); its audio bytes dropped."""
    return {**row, "problem": f"{reason}\t{message}", "wav32k": b"", "wav16k": b""}


@dataclass(frozen=True)
class _ZhWith:
    """A zh module's ``normalize``/``g2p`` with the g2pW options (the language-module contract has none)."""

    module: Any
    g2pw_dir: str | None
    bert_dir: str | None
    no_g2pw: bool

    def normalize(self, text: str, version: str) -> str:
        return self.module.normalize(text, version, g2pw_dir=self.g2pw_dir, no_g2pw=self.no_g2pw)

    def g2p(self, norm_text: str, version: str) -> tuple[list[str], list[int] | None]:
        return self.module.g2p(norm_text, version, g2pw_dir=self.g2pw_dir, bert_dir=self.bert_dir, no_g2pw=self.no_g2pw)


@dataclass(frozen=True)
class _LoadZhWith:
    """``load`` whose zh module runs with the stage's g2pW options (picklable, for the Ray tasks)."""

    load: Callable[[str], LanguageModule]
    g2pw_dir: str | None
    bert_dir: str | None
    no_g2pw: bool

    def __call__(self, language: str) -> LanguageModule:
        module = self.load(language)
        return _ZhWith(module, self.g2pw_dir, self.bert_dir, self.no_g2pw) if language == "zh" else module


def _zh_refusal(row: dict[str, Any], cfg: StageConfig, where: str) -> dict[str, Any] | None:
    """The row refused when a zh line cannot be faithful here (no BERT folder; g2pW needed), else None."""
    if row["language"] != "zh":
        return None
    if cfg.bert is None:
        also = "" if cfg.zh_ready else f" (and, for {cfg.version}, --g2pw DIR)"
        return failed_row(
            row,
            "needs_bert",
            f"{where}: zh lines need BERT features (3-bert/) from chinese-roberta-wwm-ext-large, which is not in "
            f"--pretrained: put GPT-SoVITS's pretrained_models/chinese-roberta-wwm-ext-large there{also}, "
            "or leave the zh lines out",
        )
    if not cfg.zh_ready:
        return failed_row(
            row,
            "needs_g2pw",
            f"{where}: zh {cfg.version} reads polyphonic characters with upstream's g2pW model: pass --g2pw DIR "
            "(GPT-SoVITS's GPT_SoVITS/text/G2PWModel; found by itself beside --pretrained in a GPT-SoVITS checkout), "
            "or --zh-without-g2pw (upstream's reading with g2pW switched off; polyphonic characters may read "
            "differently from a webui-made folder), or use --version v1, or leave the zh lines out",
        )
    return None


def text_stage(row: dict[str, Any], cfg: StageConfig) -> dict[str, Any]:
    """``clean_text`` of the row's text (after upstream's pre-replacement) -> its ``2-name2text.txt`` line
    (a row that has its line already passes)."""
    if row["problem"] or row["line"]:
        return row
    where = f"line {row['lineno']} ({row['name']})"
    refused = _zh_refusal(row, cfg, where)
    if refused is not None:
        return refused
    load = cfg.load
    if cfg.version != "v1" and (cfg.no_g2pw or cfg.g2pw is not None):
        load = _LoadZhWith(cfg.load, None if cfg.no_g2pw else cfg.g2pw, cfg.bert, cfg.no_g2pw)
    try:
        cleaned = clean_text(pre_replace(row["text"]), row["language"], cfg.version, load=load)
    except TextRejected as e:
        return failed_row(
            row, "text_rejected", f"{where}: the {row['language']} front-end rejects the text: {e.reason}"
        )
    except LanguageUnavailable as e:
        return failed_row(row, "language_unavailable", f"{where}: {e}")
    return {**row, "line": name2text_line(row["name"], cleaned)}


def decode_stage(row: dict[str, Any], cfg: StageConfig) -> dict[str, Any]:
    """Decode and mix the row's clip (not when its outputs exist already); a :class:`ClipProblem` is named."""
    if row["problem"] or cfg.layout.done(row["name"], cfg.pro):
        return row
    try:
        clip = prepare_clip(row["wav"])
    except ClipProblem as e:
        return failed_row(row, e.reason, f"line {row['lineno']} ({row['name']}): {e}")
    note = ""
    if clip.out_of_range:
        note = (
            f"int16_overflow\tline {row['lineno']} ({row['name']}): {clip.out_of_range} samples beyond 16-bit range "
            "after the loudness mix, wrapped as upstream writes them (clicks): re-export it at a peak of 1.0 or below"
        )
    return {**row, "note": note, "wav32k": clip.wav32k.tobytes(), "wav16k": clip.wav16k.tobytes()}


def _rows(batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The rows of a column batch (Ray Data's ``numpy`` format or ours)."""
    keys = list(batch)
    for i in range(len(batch[keys[0]])):
        yield {k: (v.item() if isinstance(v, np.generic) else v) for k, v in ((k, batch[k][i]) for k in keys)}


def _batch(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    keys = list(rows[0]) if rows else []
    return {k: [r[k] for r in rows] for k in keys}


class ModelStage:
    """A stage holding one model (built once per worker); ``threads`` torch threads while it computes.
    Subclasses define ``one(row) -> row``."""

    def __init__(self, cfg: StageConfig) -> None:
        self.cfg = cfg
        self.device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        before = torch.get_num_threads()
        torch.set_num_threads(self.cfg.threads)
        try:
            return _batch([self.one(row) for row in _rows(batch)])
        finally:
            torch.set_num_threads(before)

    def one(self, row: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError


class BertStage(ModelStage):
    """``3-bert/<name>.pt`` of each zh row from its ``2-name2text.txt`` line (``norm_text``, ``word2ph``);
    float16 on CUDA as upstream's ``is_half``, float32 on the CPU. A finished file is not redone."""

    def __init__(self, cfg: StageConfig) -> None:
        from gsv_ray.prepare.bert import load_bert

        super().__init__(cfg)
        half = torch.device(self.device).type == "cuda"
        self.model, self.tokenizer = load_bert(cfg.bert, device=self.device, half=half)  # type: ignore[arg-type]

    def one(self, row: dict[str, Any]) -> dict[str, Any]:
        path = self.cfg.layout.bert(row["name"])
        if row["problem"] or row["language"] != "zh" or path.is_file():
            return row
        from gsv_ray.prepare.bert import bert_features, write_bert

        _, _, word2ph, norm_text = name2text_fields(row["line"])  # type: ignore[misc]
        try:
            feats = bert_features(norm_text, json.loads(word2ph), self.model, self.tokenizer)
        except TextRejected as e:
            return failed_row(
                row, "text_rejected", f"line {row['lineno']} ({row['name']}): the BERT step rejects it: {e.reason}"
            )
        write_bert(path, feats, overwrite=True)
        return row


def bert_wanted(rows: Sequence[dict[str, Any]], cfg: StageConfig) -> bool:
    """Whether the BERT stage has work: a BERT folder, zh lines the text stage does not refuse (v1, the g2pW
    folder, or ``no_g2pw``), and one of them without a problem or its ``3-bert`` file."""
    return (
        cfg.bert is not None
        and cfg.zh_ready
        and any(r["language"] == "zh" and not r["problem"] and not cfg.layout.bert(r["name"]).is_file() for r in rows)
    )


class HubertStage(ModelStage):
    """``5-wav32k/<name>`` and ``4-cnhubert/<name>.pt`` (written in that order, as upstream)."""

    def __init__(self, cfg: StageConfig) -> None:
        from gsv_ray.models.hubert import Hubert

        super().__init__(cfg)
        self.model = Hubert.from_folder(cfg.hubert).to(self.device).eval()

    def one(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["problem"] or not row["wav16k"]:
            return row
        layout, name = self.cfg.layout, row["name"]
        wav16k = np.frombuffer(row["wav16k"], dtype=np.float32).copy()
        try:
            feats = cnhubert(self.model, wav16k, path=row["wav"])
        except ClipProblem as e:
            return failed_row(row, e.reason, f"line {row['lineno']} ({name}): {e}")
        write_wav32k(layout.wav32k(name), np.frombuffer(row["wav32k"], dtype=np.int16), overwrite=True)
        write_cnhubert(layout.cnhubert(name), feats, overwrite=True)
        return {**row, "wav32k": b"", "wav16k": b""}


def write_sv(path: str | Path, vec: torch.Tensor, *, overwrite: bool = False) -> Path:
    """``7-sv_cn/<name>.pt``: ``torch.save`` of a contiguous float32 ``[1, 20480]``, atomically."""
    buf = io.BytesIO()
    torch.save(vec.detach().reshape(1, -1).float().cpu().contiguous().clone(), buf)
    return atomic_write(path, lambda f: f.write(buf.getvalue()), overwrite=overwrite)


class SvStage(ModelStage):
    """``7-sv_cn/<name>.pt`` (v2Pro/v2ProPlus) from the written ``5-wav32k/<name>`` (int16 / 32768)."""

    def __init__(self, cfg: StageConfig) -> None:
        from gsv_ray.models.sv import SpeakerEncoder

        super().__init__(cfg)
        self.encoder = SpeakerEncoder.load(cfg.sv).to(self.device)

    def one(self, row: dict[str, Any]) -> dict[str, Any]:
        layout, name = self.cfg.layout, row["name"]
        if row["problem"] or layout.sv(name).is_file():
            return row
        from gsv_ray.audio import read_wav_pcm16

        try:
            wav = read_wav_pcm16(layout.wav32k(name))[0]  # int16 / 32768, as upstream's torchaudio.load
        except (OSError, GsvError, EOFError) as e:
            return failed_row(
                row, "unreadable", f"line {row['lineno']} ({name}): cannot read its 5-wav32k file ({first_line(e)})"
            )
        try:
            vec = self.encoder.sv_vector(wav, 32000)
        except ValueError as e:  # under 8 fbank frames
            return failed_row(row, "too_short", f"line {row['lineno']} ({name}): {first_line(e)}")
        write_sv(layout.sv(name), vec, overwrite=True)
        return row


def run_in_process(
    rows: Sequence[dict[str, Any]],
    cfg: StageConfig,
    batch_size: int,
    after: Sequence[Callable[[StageConfig], ModelStage]] = (),
) -> list[dict[str, Any]]:
    """All stages over ``rows`` in this process (the functions the Ray pipeline runs, in its order), in row
    order; ``after``: model stages (built from ``cfg``) run last, when a row is still without a problem."""
    rows = [text_stage(r, cfg) for r in rows]
    if bert_wanted(rows, cfg):
        rows = _in_batches(BertStage(cfg), rows, batch_size)
    rows = [decode_stage(r, cfg) for r in rows]
    stages: list[ModelStage] = []
    if any(r["wav16k"] for r in rows):
        stages.append(HubertStage(cfg))
    if cfg.pro:
        stages.append(SvStage(cfg))
    for stage in stages:
        rows = _in_batches(stage, rows, batch_size)
    for make in after:
        if any(not r["problem"] for r in rows):
            rows = _in_batches(make(cfg), rows, batch_size)
    return rows


def _in_batches(stage: ModelStage, rows: list[dict[str, Any]], batch_size: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(0, len(rows), batch_size):
        out.extend(_rows(stage(_batch(rows[i : i + batch_size]))))
    return out
