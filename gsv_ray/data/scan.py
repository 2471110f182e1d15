"""Open an experiment folder for one training stage: scan its files as upstream's loaders read them
(:func:`open_experiment`) into the usable :class:`Utterance` list and a :class:`DataReport`.

Upstream's loaders pick the utterances silently (set intersections, filters, a ``print``);
here every utterance that is dropped or altered is counted in a :class:`DataReport` with the first
few names, so a user sees why an experiment trains on fewer utterances than it lists. Missing
required parts of the folder and a phone-table mismatch raise :class:`~gsv_ray.errors.GsvError`.
"""

from __future__ import annotations

import os
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from gsv_ray.audio import wav_info
from gsv_ray.data.layout import (
    BERT_DIR,
    HUBERT_DIR,
    NAME2TEXT,
    SEMANTIC_HEADER,
    SEMANTIC_TSV,
    SEMANTIC_VOCAB,
    STAGES,
    SV_DIR,
    WAV_DIR,
    name2text_fields,
    symbol_set_of,
    without_bom,
)
from gsv_ray.data.report import DataReport
from gsv_ray.errors import GsvError, first_line, missing_error
from gsv_ray.resources import BERT_DIM, PRO_VERSIONS, SSL_DIM, SV_DIM, s2_config, symbols


@dataclass(frozen=True)
class ExperimentOptions:
    """Upstream's filter constants (defaults) and how thoroughly to check the files.

    ``scan_tensors`` loads every feature file once to check shape and NaN/inf (upstream would train
    on NaN silently); turn it off for a quick listing of a very large folder.
    """

    scan_tensors: bool = True
    # SoVITS (module/data_utils.py): keep 0.6 < duration < 54 s, duration from the wav file size
    min_duration: float = 0.6
    max_duration: float = 54.0
    # SoVITS bucket sampler: lengths (frames) outside (first, last] boundary are never sampled
    bucket_min_frames: int = 32
    bucket_max_frames: int = 1900
    # GPT (AR/data/dataset.py): s1 data.max_sec, env hz, phones-per-second bounds
    max_sec: float = 54.0
    hz: int = 25
    min_ps_ratio: float = 3.0
    max_ps_ratio: float = 25.0
    # how many names a problem line shows
    examples: int = 5


# ----------------------------------------------------------------------------- utterances
@dataclass(frozen=True)
class Utterance:
    """One usable utterance with the paths the stage reads and what was already parsed."""

    name: str
    phones: tuple[str, ...]
    phone_ids: tuple[int, ...]
    word2ph: str
    norm_text: str
    wav_path: Path | None = None
    wav_bytes: int = 0  # file size: upstream's duration and bucket length use it
    num_samples: int = 0
    hubert_path: Path | None = None
    sv_path: Path | None = None
    bert_path: Path | None = None  # None: no 3-bert file, BERT features are zeros
    semantic_ids: tuple[int, ...] | None = None

    def bucket_length(self, hop_length: int) -> int:
        """Upstream's SoVITS sampler length: ``file size // (2 * hop)`` (header bytes included)."""
        return self.wav_bytes // (2 * hop_length)

    def duration(self, sampling_rate: int) -> float:
        """Upstream's SoVITS duration: ``file size / sr / 2`` (header bytes included)."""
        return self.wav_bytes / sampling_rate / 2

    def semantic_seconds(self, hz: int = 25) -> float:
        """Upstream's GPT sample length: semantic tokens / hz."""
        return 0.0 if self.semantic_ids is None else len(self.semantic_ids) / hz


@dataclass
class Experiment:
    """An experiment folder opened for one stage: the usable utterances (upstream's selection minus
    anything broken) in a deterministic order, and the report of everything else."""

    root: Path
    stage: str
    version: str
    utterances: list[Utterance]
    report: DataReport
    options: ExperimentOptions
    sampling_rate: int = 32000
    hop_length: int = 640
    #: every name 2-name2text.txt lists (usable or not), e.g. to check a validation names file
    known_names: frozenset[str] = frozenset()

    @property
    def symbol_set(self) -> str:
        return symbol_set_of(self.version)

    @property
    def is_pro(self) -> bool:
        return self.version in PRO_VERSIONS

    @property
    def names(self) -> list[str]:
        return [u.name for u in self.utterances]

    def subset(self, names: Iterable[str]) -> list[Utterance]:
        """The usable utterances whose names are in ``names`` (experiment order kept)."""
        wanted = set(names)
        return [u for u in self.utterances if u.name in wanted]


# ----------------------------------------------------------------------------- parsing helpers
def _require(path: Path, what: str, fix: str, *, is_dir: bool) -> None:
    ok = path.is_dir() if is_dir else path.is_file()
    if not ok:
        raise missing_error(path, f"{what} not found", fix)


def _wav_reason(exc: BaseException) -> str:
    """Why a WAV header could not be read, never empty (``EOFError()`` says nothing)."""
    if isinstance(exc, EOFError):
        return "the file ends inside its header (truncated)"
    return first_line(exc) or type(exc).__name__


def _utf8_lines(path: Path, report: DataReport, what: str) -> list[tuple[int, str]]:
    """``(line number, text)`` of every line that is UTF-8; the others are counted and named (by
    line number) as a data problem. Upstream reads the whole file as UTF-8 and stops at the first
    bad byte; we keep the good lines and say which are not."""
    out = []
    for lineno, raw in enumerate(without_bom(path.read_bytes()).split(b"\n"), start=1):
        try:
            out.append((lineno, raw.decode("utf-8")))
        except UnicodeDecodeError as e:
            report.add(
                f"not_utf8_{what}",
                "warning",
                f"lines of {path.name} that are not UTF-8 text (skipped; re-save the file as UTF-8)",
                f"line {lineno} (byte {e.start})",
                excluded=True,
            )
    return out


def _read_name2text(path: Path, report: DataReport) -> dict[str, tuple[str, str, str]]:
    """``{name: (phones, word2ph, norm_text)}`` as both upstream loaders build it: lines split on
    tabs, lines without exactly 4 fields ignored, a repeated name keeps its last line."""
    out: dict[str, tuple[str, str, str]] = {}
    for lineno, line in _utf8_lines(path, report, "text"):
        if not line:
            continue
        fields = name2text_fields(line)
        if fields is None:
            report.add(
                "bad_text_line",
                "warning",
                f"lines of {NAME2TEXT} without exactly 4 tab-separated fields (ignored, as upstream does)",
                f"line {lineno}",
                excluded=True,
            )
            continue
        name, phones, word2ph, norm_text = fields
        if name in out:
            report.add(
                "duplicate_text",
                "warning",
                f"names repeated in {NAME2TEXT} (the last line is used, as upstream does)",
                name,
                excluded=False,
            )
        out[name] = (phones, word2ph, norm_text)
    return out


def _phone_ids(
    name2text: dict[str, tuple[str, str, str]], version: str, report: DataReport, text_path: Path
) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """Phones -> ids with the version's table. Phones from the *other* table raise (the model
    would read wrong/missing embedding rows); phones in neither table are reported and left out."""
    own = symbol_set_of(version)
    other = "v2" if own == "v1" else "v1"
    table = {s: i for i, s in enumerate(symbols(own))}
    other_table = set(symbols(other))
    mismatched: dict[str, str] = {}
    out: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {}
    for name, (phones_str, _, _) in name2text.items():
        phones = tuple(phones_str.split(" "))
        unknown = [p for p in phones if p not in table]
        if not unknown:
            out[name] = (phones, tuple(table[p] for p in phones))
            if "UNK" in phones:
                report.add(
                    "unk_phone",
                    "warning",
                    "utterances containing the phone 'UNK' (text the preprocessing could not convert)",
                    name,
                    excluded=False,
                )
            continue
        foreign = [p for p in unknown if p in other_table]
        if foreign:
            mismatched.setdefault(name, foreign[0])
        else:
            report.add(
                "unknown_phone",
                "error",
                f"utterances with phones in neither symbol table (first: {unknown[0]!r}; upstream skips them)",
                name,
                excluded=True,
            )
    if mismatched:
        first_name, first_phone = next(iter(mismatched.items()))
        names = list(mismatched)
        examples = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        fix = (
            "train a v2-or-later model with this folder, or re-run GPT-SoVITS preprocessing with version v1"
            if own == "v1"
            else "train a v1 model with this folder, or re-run preprocessing for " + version
        )
        raise GsvError(
            f"phone symbol set mismatch: {len(mismatched)} utterance(s) use phones that exist only in the {other} "
            f"table (e.g. {first_phone!r} in {first_name}; affected: {examples}), but a {version} model uses the {own} "
            "table, so training would read wrong embedding rows",
            path=text_path,
            fix=fix,
        )
    return out


def _listing(directory: Path, suffix: str = "") -> set[str]:
    """File names in ``directory``, with ``suffix`` stripped from those ending in it."""
    if not directory.is_dir():
        return set()
    names = set()
    for entry in os.listdir(directory):
        if suffix:
            if entry.endswith(suffix):
                names.add(entry[: -len(suffix)])
        else:
            names.add(entry)
    return names


def _load_tensor(path: Path) -> torch.Tensor:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, torch.Tensor):
        raise TypeError(f"holds a {type(obj).__name__}, not a tensor")
    return obj


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t.float()).all())


# ----------------------------------------------------------------------------- stage scans
# long: the SoVITS folder's checks in upstream's preprocessing order, each a report line; read top to bottom
def _scan_sovits(
    root: Path, version: str, opts: ExperimentOptions, report: DataReport, sr: int, hop: int
) -> tuple[list[Utterance], set[str]]:
    is_pro = version in PRO_VERSIONS
    text_path = root / NAME2TEXT
    _require(
        root / HUBERT_DIR,
        f"{HUBERT_DIR}/ (HuBERT features) folder",
        "run GPT-SoVITS preprocessing step 1Ab (SSL feature extraction, 2-get-hubert-wav32k.py) for this experiment",
        is_dir=True,
    )
    _require(
        root / WAV_DIR,
        f"{WAV_DIR}/ (32 kHz audio) folder",
        "run GPT-SoVITS preprocessing step 1Ab (2-get-hubert-wav32k.py) for this experiment",
        is_dir=True,
    )
    if is_pro:
        _require(
            root / SV_DIR,
            f"{SV_DIR}/ (speaker-verification embeddings, needed by {version}) folder",
            "run GPT-SoVITS preprocessing with a v2Pro/v2ProPlus version selected (2-get-sv.py)",
            is_dir=True,
        )

    name2text = _read_name2text(text_path, report)
    report.listed = len(name2text)
    ids = _phone_ids(name2text, version, report, text_path)
    names4 = _listing(root / HUBERT_DIR, ".pt")
    names5 = _listing(root / WAV_DIR)
    names7 = _listing(root / SV_DIR, ".pt") if is_pro else set()

    for orphan in sorted((names4 | names5) - set(name2text)):
        report.add(
            "no_text", "info", f"feature/audio files without a line in {NAME2TEXT} (unused)", orphan, excluded=True
        )

    out: list[Utterance] = []
    for name in sorted(name2text):  # upstream's order is set order (hash-seeded); sorted is reproducible
        missing = False
        if name not in names4:
            report.add("missing_hubert", "warning", f"utterances without {HUBERT_DIR}/<name>.pt", name, excluded=True)
            missing = True
        if name not in names5:
            report.add("missing_wav", "warning", f"utterances without {WAV_DIR}/<name>", name, excluded=True)
            missing = True
        if is_pro and name not in names7:
            report.add(
                "missing_sv",
                "warning",
                f"utterances without {SV_DIR}/<name>.pt (needed by {version})",
                name,
                excluded=True,
            )
            missing = True
        if missing or name not in ids:
            continue
        phones, phone_ids = ids[name]
        wav_path = root / WAV_DIR / name
        size = wav_path.stat().st_size
        if size == 0:
            report.add("empty_wav", "error", "empty WAV files (0 bytes)", name, excluded=True)
            continue
        try:
            channels, width, rate, frames = wav_info(wav_path)
        except (wave.Error, EOFError, OSError) as exc:
            report.add("bad_wav", "error", f"unreadable WAV files ({_wav_reason(exc)})", name, excluded=True)
            continue
        if (channels, width, rate) != (1, 2, sr):
            report.add("wav_format", "error", f"WAV files that are not mono 16-bit {sr} Hz PCM", name, excluded=True)
            continue
        duration = size / sr / 2
        if not (opts.min_duration < duration < opts.max_duration):
            report.add(
                "duration",
                "warning",
                f"utterances outside {opts.min_duration} < duration < "
                f"{opts.max_duration} s (by file size, as upstream)",
                name,
                excluded=True,
            )
            continue
        bucket_len = size // (2 * hop)
        if not (opts.bucket_min_frames < bucket_len <= opts.bucket_max_frames):
            report.add(
                "outside_buckets",
                "warning",
                f"utterances whose length (file size // {2 * hop}) is outside "
                f"({opts.bucket_min_frames}, {opts.bucket_max_frames}] frames: the bucket sampler never "
                "draws them",
                name,
                excluded=False,
            )
        hubert_path = root / HUBERT_DIR / f"{name}.pt"
        sv_path = root / SV_DIR / f"{name}.pt" if is_pro else None
        if opts.scan_tensors and not _check_sovits_tensors(
            name, hubert_path, sv_path, spec_frames(frames, hop), report
        ):
            continue
        out.append(
            Utterance(
                name=name,
                phones=phones,
                phone_ids=phone_ids,
                word2ph=name2text[name][1],
                norm_text=name2text[name][2],
                wav_path=wav_path,
                wav_bytes=size,
                num_samples=frames,
                hubert_path=hubert_path,
                sv_path=sv_path,
            )
        )
    return out, set(name2text)


#: What each kind of HuBERT-feature problem says for a group of files (the data report's line).
_SSL_PROBLEM_GROUPS = {
    "hubert_type": "files holding no tensor",
    "hubert_shape": f"tensors not shaped [1, {SSL_DIM}, T]",
    "hubert_dtype": "tensors not float",
    "nan_hubert": "tensors containing NaN/inf",
}


def ssl_features_problem(t: Any) -> tuple[str, str] | None:
    """What is wrong with a loaded ``4-cnhubert/<name>.pt`` (``(kind, what)``; None: usable): the one
    check of HuBERT features, for the scan, the dataset and ``semantic``. Usable is a floating
    ``[1, SSL_DIM, T]`` tensor of finite values."""
    if not isinstance(t, torch.Tensor):
        return "hubert_type", f"holds a {type(t).__name__}, not a feature tensor"
    if t.dim() != 3 or t.shape[0] != 1 or t.shape[1] != SSL_DIM:
        return "hubert_shape", f"shaped {list(t.shape)}, not [1, {SSL_DIM}, T]"
    if not t.is_floating_point():
        return "hubert_dtype", f"{str(t.dtype).replace('torch.', '')}, not float16/32"
    if not _finite(t):
        return "nan_hubert", "contains NaN/inf"
    return None


def _check_sovits_tensors(
    name: str, hubert_path: Path, sv_path: Path | None, spec_frames: int, report: DataReport
) -> bool:
    try:
        ssl = _load_tensor(hubert_path)
    except Exception as exc:  # noqa: BLE001 -- any unreadable file is reported, not raised
        report.add("bad_hubert", "error", f"unreadable {HUBERT_DIR} files ({type(exc).__name__})", name, excluded=True)
        return False
    problem = ssl_features_problem(ssl)
    if problem is not None:
        report.add(problem[0], "error", f"{HUBERT_DIR} {_SSL_PROBLEM_GROUPS[problem[0]]}", name, excluded=True)
        return False
    frames = ssl.shape[-1] + (1 if ssl.shape[-1] != spec_frames else 0)  # upstream's one-frame fix-up
    if frames != spec_frames:
        report.add(
            "hubert_length",
            "warning",
            f"{HUBERT_DIR} frame counts more than one frame off the "
            "spectrogram's (kept, as upstream; features and audio are misaligned)",
            name,
            excluded=False,
        )
    if sv_path is not None:
        try:
            sv = _load_tensor(sv_path)
        except Exception as exc:  # noqa: BLE001
            report.add("bad_sv", "error", f"unreadable {SV_DIR} files ({type(exc).__name__})", name, excluded=True)
            return False
        if sv.numel() != SV_DIM or sv.shape[-1] != SV_DIM:
            report.add("sv_shape", "error", f"{SV_DIR} tensors not shaped [1, {SV_DIM}]", name, excluded=True)
            return False
        if not _finite(sv):
            report.add("nan_sv", "error", f"{SV_DIR} tensors containing NaN/inf", name, excluded=True)
            return False
    return True


def _read_semantic_tsv(path: Path, report: DataReport) -> list[tuple[str, str]]:
    """Rows ``(name, tokens)`` as upstream's ``pandas.read_csv(sep='\\t')``: the first line is the
    header whatever it says, blank lines are skipped, every other row is kept (duplicates too)."""
    numbered = _utf8_lines(path, report, "semantic")
    lines = [line for _, line in numbered]
    if numbered and numbered[0][0] != 1:  # the header line itself is not UTF-8: it is skipped all the same
        lines.insert(0, "")
    if lines and lines[0].rstrip("\r") != SEMANTIC_HEADER:
        report.add(
            "semantic_header",
            "warning",
            f"{SEMANTIC_TSV} whose first line is not the header "
            f"{SEMANTIC_HEADER!r} (upstream reads the first line as the header, so it is skipped)",
            lines[0].split("\t")[0] or "(empty line)",
            excluded=True,
        )
    rows = []
    for line in lines[1:]:
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        rows.append((fields[0], fields[1] if len(fields) == 2 else None))
    return rows


# long: the GPT folder's checks in upstream's preprocessing order, each a report line; read top to bottom
def _scan_gpt(
    root: Path, version: str, opts: ExperimentOptions, report: DataReport
) -> tuple[list[Utterance], set[str]]:
    text_path = root / NAME2TEXT
    tsv_path = root / SEMANTIC_TSV
    _require(
        tsv_path,
        f"{SEMANTIC_TSV} (semantic tokens, needed to train the GPT)",
        "run GPT-SoVITS preprocessing step 1Ac (semantic token extraction, 3-get-semantic.py) for this experiment",
        is_dir=False,
    )
    name2text = _read_name2text(text_path, report)
    ids = _phone_ids(name2text, version, report, text_path)
    rows = _read_semantic_tsv(tsv_path, report)
    report.listed = len(rows)
    bert_dir = root / BERT_DIR
    bert_names = _listing(bert_dir, ".pt")
    if not bert_dir.is_dir():
        report.add(
            "no_bert_dir",
            "info",
            f"experiment without a {BERT_DIR}/ folder: every utterance gets zero BERT "
            "features (upstream does the same)",
            str(bert_dir),
            excluded=False,
        )

    seen: set[str] = set()
    out: list[Utterance] = []
    max_sem = opts.max_sec * opts.hz
    max_phones = opts.max_sec * opts.hz / 2.5
    for name, tokens in rows:
        if name in seen:
            report.add(
                "duplicate_semantic",
                "warning",
                f"names repeated in {SEMANTIC_TSV} (every row is used, as upstream does)",
                name,
                excluded=False,
            )
        seen.add(name)
        if name not in name2text:
            report.add(
                "missing_text", "warning", f"{SEMANTIC_TSV} rows without a line in {NAME2TEXT}", name, excluded=True
            )
            continue
        semantic = _parse_tokens(tokens)
        if semantic is None:
            report.add(
                "bad_semantic_row",
                "error",
                f"{SEMANTIC_TSV} rows without a space-separated list of ids "
                f"0..{SEMANTIC_VOCAB - 1} in the second field",
                name,
                excluded=True,
            )
            continue
        if name not in ids:
            continue  # unknown phones: already reported
        phones, phone_ids = ids[name]
        if len(semantic) > max_sem:
            report.add(
                "too_long",
                "warning",
                f"utterances with more than {max_sem:g} semantic tokens (max_sec {opts.max_sec:g})",
                name,
                excluded=True,
            )
            continue
        if len(phone_ids) > max_phones:
            report.add(
                "too_many_phones", "warning", f"utterances with more than {max_phones:g} phones", name, excluded=True
            )
            continue
        ratio = len(phone_ids) / (len(semantic) / opts.hz)
        if not (opts.min_ps_ratio <= ratio <= opts.max_ps_ratio):
            report.add(
                "phones_per_second",
                "warning",
                f"utterances with phones per second outside [{opts.min_ps_ratio:g}, {opts.max_ps_ratio:g}]",
                name,
                excluded=True,
            )
            continue
        bert_path: Path | None = bert_dir / f"{name}.pt"
        if name not in bert_names:
            bert_path = None
            if bert_dir.is_dir():
                report.add(
                    "no_bert",
                    "info",
                    f"utterances without {BERT_DIR}/<name>.pt: zero BERT features, as "
                    "upstream (normal for non-Chinese lines)",
                    name,
                    excluded=False,
                )
        elif opts.scan_tensors and not _check_bert(name, bert_path, len(phone_ids), report):
            continue
        out.append(
            Utterance(
                name=name,
                phones=phones,
                phone_ids=phone_ids,
                word2ph=name2text[name][1],
                norm_text=name2text[name][2],
                bert_path=bert_path,
                semantic_ids=semantic,
            )
        )
    listed = set(name2text)
    for name in sorted(listed - seen):
        report.add(
            "missing_semantic",
            "warning",
            f"utterances of {NAME2TEXT} without a row in {SEMANTIC_TSV}",
            name,
            excluded=True,
        )
    return out, listed


def _parse_tokens(tokens: str | None) -> tuple[int, ...] | None:
    if tokens is None or not tokens.strip():
        return None
    try:
        ids = tuple(int(t) for t in tokens.strip().split(" "))
    except ValueError:
        return None
    if not ids or min(ids) < 0 or max(ids) >= SEMANTIC_VOCAB:
        return None
    return ids


def _check_bert(name: str, path: Path, n_phones: int, report: DataReport) -> bool:
    try:
        bert = _load_tensor(path)
    except Exception as exc:  # noqa: BLE001
        report.add("bad_bert", "error", f"unreadable {BERT_DIR} files ({type(exc).__name__})", name, excluded=True)
        return False
    if bert.dim() != 2 or bert.shape[0] != BERT_DIM or bert.shape[1] != n_phones:
        report.add(
            "bert_shape",
            "error",
            f"{BERT_DIR} tensors not shaped [{BERT_DIM}, number of phones] (upstream stops training on these)",
            name,
            excluded=True,
        )
        return False
    if not _finite(bert):
        report.add("nan_bert", "error", f"{BERT_DIR} tensors containing NaN/inf", name, excluded=True)
        return False
    return True


# ----------------------------------------------------------------------------- entry point
def open_experiment(root: str | Path, stage: str, version: str, options: ExperimentOptions | None = None) -> Experiment:
    """Scan ``root`` (a ``logs/<exp>`` folder) for ``stage`` ("sovits" or "gpt") and ``version``.

    Raises :class:`GsvError` for a missing folder part the stage needs (``2-name2text.txt``;
    SoVITS: ``4-cnhubert/``, ``5-wav32k/``, Pro ``7-sv_cn/``; GPT: ``6-name2semantic.tsv``) and
    for phones of the other version's symbol table. Everything else lands in ``.report``.
    """
    if stage not in STAGES:
        raise GsvError(f"unknown training stage {stage!r}", fix="use 'sovits' or 'gpt'")
    symbol_set_of(version)
    opts = options or ExperimentOptions()
    root = Path(root)
    _require(root, "experiment folder", "pass the logs/<experiment> folder GPT-SoVITS preprocessing wrote", is_dir=True)
    _require(
        root / NAME2TEXT,
        f"{NAME2TEXT} (phonemes per utterance)",
        "run GPT-SoVITS preprocessing step 1Aa (text, 1-get-text.py) for this experiment",
        is_dir=False,
    )
    data = s2_config(version)["data"]
    sr, hop = int(data["sampling_rate"]), int(data["hop_length"])
    report = DataReport(root=root, stage=stage, version=version, examples=opts.examples)
    if stage == "sovits":
        utts, known = _scan_sovits(root, version, opts, report, sr, hop)
    else:
        utts, known = _scan_gpt(root, version, opts, report)
    report.usable = len(utts)
    return Experiment(root, stage, version, utts, report, opts, sr, hop, frozenset(known))


def spec_frames(num_samples: int, hop_length: int = 640) -> int:
    """Frames of upstream's linear spectrogram of ``num_samples`` samples (reflect pad, no centre)."""
    return num_samples // hop_length
