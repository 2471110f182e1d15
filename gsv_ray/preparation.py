"""``gsv-ray prepare``: a ``.list`` and its recordings -> a GPT-SoVITS experiment folder (``logs/<exp>``).

Upstream's webui steps 1A-1C in one command, in upstream's layout and formats: ``2-name2text.txt``
(text front-end), ``3-bert/`` (zh lines: BERT features), ``5-wav32k/`` and ``4-cnhubert/`` (audio,
HuBERT), ``7-sv_cn/`` (v2Pro/v2ProPlus speaker vectors), ``6-name2semantic.tsv`` (semantic tokens: the
last model stage, :class:`gsv_ray.semantic.SemanticStage`). The models are read safely from the user's
GPT-SoVITS ``pretrained_models`` folder.

Bad data is named, never fatal to the rest: every ``.list`` line that is not prepared is one line of
the report (its reason and what to do); an experiment that ends empty is an error. A rerun skips the
utterances whose files exist (resumable after a kill). ``workers > 1`` (or ``address``) runs the
stages on Ray Data (:func:`run_on_ray`), otherwise the same functions run in
this process; with the same ``threads`` both give the same bytes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gsv_ray.atomic import atomic_write, sweep_temp_files
from gsv_ray.data.layout import BERT_DIR, HUBERT_DIR, NAME2TEXT, SEMANTIC_TSV, SV_DIR, WAV_DIR
from gsv_ray.errors import ConfigError, GsvError, missing_error
from gsv_ray.options import check, option
from gsv_ray.prepare.pipeline import (
    BertStage,
    HubertStage,
    StageConfig,
    SvStage,
    bert_wanted,
    decode_stage,
    new_row,
    problem_of,
    run_in_process,
    text_stage,
)
from gsv_ray.prepare.text.frontend import ListProblem, language_module, parse_list, render_name2text
from gsv_ray.prepare.text.zh import G2PW_FOLDER_NAME, check_g2pw_folder
from gsv_ray.resources import PRETRAINED_SOVITS, PRO_VERSIONS, S2_VERSIONS
from gsv_ray.semantic import SemanticStage, render_tsv, semantic_weights

__all__ = [
    "PrepareOptions",
    "PrepareResult",
    "EmptyExperiment",
    "prepare_experiment",
]

HUBERT_FOLDER = "chinese-hubert-base"
BERT_FOLDER = "chinese-roberta-wwm-ext-large"  # upstream's name; without it zh lines are refused (needs_bert)
SV_CHECKPOINT = "sv/pretrained_eres2netv2w24s4ep4.ckpt"
_PRETRAINED_FIX = "pass --pretrained GPT_SoVITS/pretrained_models (the folder GPT-SoVITS downloads its models to)"


@dataclass(frozen=True)
class PrepareOptions:
    """``gsv-ray prepare``'s options (flags and YAML keys): :func:`prepare_experiment`'s arguments."""

    list_file: str = option(flags=("--list",), metavar="FILE", help="the .list: wav|speaker|language|text per line")
    output: str = option(flags=("-o", "--output"), metavar="DIR", help="the experiment folder to fill (logs/<exp>)")
    version: str = option(choices=S2_VERSIONS, help="the GPT-SoVITS version the voice is trained as")
    pretrained: str = option(metavar="DIR", help="GPT-SoVITS's pretrained_models folder (HuBERT, SV, SoVITS bases)")
    wav_dir: str | None = option(
        None,
        metavar="DIR",
        help="the recordings' folder (each line's wav base name in it); default: the path as written",
    )
    sovits: str | None = option(
        None,
        metavar="FILE",
        help="the SoVITS file whose quantizer makes the semantic tokens (default: the version's base)",
    )
    workers: int = option(1, low=1, metavar="N", help="model workers on Ray Data; 1 runs in-process")
    address: str | None = option(
        None, metavar="ADDR", help="Ray cluster to run on (default with --workers > 1: a local one)"
    )
    threads: int = option(1, low=1, metavar="N", help="torch threads (CPUs) per model worker")
    batch_size: int = option(8, low=1, metavar="N", help="utterances per model-stage call (each still one forward)")
    zh_without_g2pw: bool = option(
        False,
        help="zh lines for v2 and later: upstream's reading with g2pW switched off (polyphonic characters may "
        "read differently from a webui-made folder); without it or a g2pW folder those lines are refused "
        "(needs_g2pw)",
    )
    g2pw: str | None = option(
        None,
        metavar="DIR",
        help="zh lines for v2 and later: GPT-SoVITS's G2PWModel folder (upstream's g2pW reading; needs the "
        "chinese-roberta-wwm-ext-large folder of --pretrained); default: <pretrained>/../text/G2PWModel when there",
    )

    def run(self) -> PrepareResult:
        check(self)
        return prepare_experiment(
            self.list_file,
            self.output,
            version=self.version,
            pretrained=self.pretrained,
            wav_dir=self.wav_dir,
            sovits=self.sovits,
            workers=self.workers,
            address=self.address,
            threads=self.threads,
            batch_size=self.batch_size,
            zh_without_g2pw=self.zh_without_g2pw,
            g2pw=self.g2pw,
        )


@dataclass
class PrepareResult:
    """What :func:`prepare_experiment` did: ``kept`` utterances in ``2-name2text.txt`` (``resumed`` of them
    finished by an earlier run), ``problems`` one dict per line not prepared (lineno, name, reason, message)."""

    output: Path
    version: str
    listed: int
    kept: int
    resumed: int
    problems: list[dict[str, Any]]
    mode: str
    seconds: float
    tokens: int = 0
    files: dict[str, str] = field(default_factory=dict)
    notes: list[dict[str, Any]] = field(default_factory=list)  # kept utterances worth a look (same fields)

    def report_lines(self) -> list[str]:
        """The report: one line per problem, then the summary."""
        lines = [f"skipped: {p['reason']}: {p['message']}" for p in self.problems]
        lines += [f"note: {p['reason']}: {p['message']}" for p in self.notes]
        lines.append(
            f"prepared {self.kept} of {self.listed} utterances ({self.resumed} already done, "
            f"{len(self.problems)} skipped; {self.mode}, {self.seconds:.1f} s) in {self.output}"
        )
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "version": self.version,
            "listed": self.listed,
            "kept": self.kept,
            "resumed": self.resumed,
            "skipped": len(self.problems),
            "problems": self.problems,
            "notes": self.notes,
            "mode": self.mode,
            "seconds": round(self.seconds, 3),
            "tokens": self.tokens,
            "files": self.files,
        }


class EmptyExperiment(GsvError):
    """No utterance could be prepared; :attr:`result` holds the report."""

    def __init__(self, result: PrepareResult) -> None:
        super().__init__(
            f"none of the {result.listed} lines could be prepared ({len(result.problems)} skipped, see the report)",
            path=result.output,
            fix="fix the clips and lines the report names, then run prepare again",
        )
        self.result = result


@dataclass(frozen=True)
class _Models:
    hubert: Path
    sv: Path | None
    sovits: Path
    bert: Path | None


def _models(pretrained: str | Path, version: str, sovits: str | Path | None) -> _Models:
    """The model files this version needs, each checked to exist (one line naming it otherwise)."""
    root = Path(pretrained)
    if not root.is_dir():
        raise missing_error(root, "not a folder", _PRETRAINED_FIX)
    hubert = root / HUBERT_FOLDER
    if not (hubert / "config.json").is_file():
        raise GsvError(f"no {HUBERT_FOLDER}/config.json (the HuBERT model)", path=root, fix=_PRETRAINED_FIX)
    sv = root / SV_CHECKPOINT if version in PRO_VERSIONS else None
    if sv is not None and not sv.is_file():
        raise GsvError(
            f"no {SV_CHECKPOINT} (the speaker-verification model {version} needs)", path=root, fix=_PRETRAINED_FIX
        )
    g = Path(sovits) if sovits is not None else root / PRETRAINED_SOVITS[version]
    if not g.is_file():
        raise missing_error(
            g, "not found (the SoVITS model for semantic tokens)", "pass --sovits FILE, or " + _PRETRAINED_FIX
        )
    bert = root / BERT_FOLDER
    if bert.exists() and not (bert / "config.json").is_file():
        raise GsvError(f"no {BERT_FOLDER}/config.json (the BERT model zh lines need)", path=root, fix=_PRETRAINED_FIX)
    return _Models(hubert, sv, g, bert if bert.exists() else None)


def _g2pw_folder(
    g2pw: str | Path | None, pretrained: str | Path, version: str, without: bool, rows: Sequence[dict[str, Any]]
) -> Path | None:
    """The G2PWModel folder zh lines of ``version`` are read with: ``--g2pw``, else ``<pretrained>/../text/
    G2PWModel`` when it exists (a GPT-SoVITS checkout's place); checked (files, config.py, tables) when zh lines
    need it. None for v1, ``--zh-without-g2pw``, no zh line, or no folder found."""
    if g2pw is not None and without:
        raise ConfigError(
            "--g2pw and --zh-without-g2pw exclude each other",
            fix="keep --g2pw for upstream's default reading, or --zh-without-g2pw to read without g2pW",
        )
    if version == "v1" or without or not any(r["language"] == "zh" for r in rows):
        return None
    folder = Path(g2pw) if g2pw is not None else Path(pretrained).resolve().parent / "text" / G2PW_FOLDER_NAME
    if g2pw is None and not folder.is_dir():
        return None
    return check_g2pw_folder(folder)


def _odd_name(name: str) -> str | None:
    """Why ``name`` cannot be an utterance's file name in the experiment folder, or None."""
    if name in ("", ".", ".."):
        return "is empty or not a file name"
    bad = [c for c in name if c in "\t\n\r\x00" or ord(c) < 32 or c == "\x7f"]
    if bad:
        return f"holds a control character ({bad[0]!r}) that would break 2-name2text.txt"
    return None


def _plan(content: str, wav_dir: str | Path | None) -> tuple[list[dict[str, Any]], list[ListProblem], int]:
    """Rows for the usable lines; problems for the rest (bad fields, unknown language, odd or repeated names)."""
    lines, problems = parse_list(content)
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for ln in lines:
        odd = _odd_name(ln.name)
        if odd:
            problems.append(
                ListProblem(ln.lineno, "bad_name", f"line {ln.lineno}: the wav name {ln.name!r} {odd}", ln.name)
            )
        elif ln.name in seen:
            problems.append(
                ListProblem(
                    ln.lineno,
                    "duplicate_name",
                    f"line {ln.lineno}: {ln.name} is also line {seen[ln.name]} (outputs are named by the wav's "
                    "base name; the first is kept): rename one of the recordings",
                    ln.name,
                )
            )
        else:
            seen[ln.name] = ln.lineno
            wav = str(Path(wav_dir) / ln.name) if wav_dir is not None else ln.wav.strip()
            rows.append(new_row(ln.lineno, ln.name, wav, ln.language, ln.text))
    listed = len([x for x in content.strip("\n").split("\n") if x.strip()])
    return rows, sorted(problems, key=lambda p: p.lineno), listed


def _read_list(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise missing_error(path, "not found", "pass --list FILE, the .list of your recordings") from None
    except UnicodeDecodeError as e:
        raise GsvError(f"not UTF-8 text (byte {e.start})", path=path, fix="save the .list as UTF-8") from e


def _run_stages(
    rows: list[dict[str, Any]], cfg: StageConfig, workers: int, address: str | None, use_ray: bool, batch: int
):
    """The stages in-process or on Ray Data; returns (rows, mode, started_ray)."""
    if not use_ray:
        return run_in_process(rows, cfg, batch, after=(SemanticStage,)), "in-process", False
    import ray

    from gsv_ray.distributed.cluster import connect

    # Ray Data runs the model stages' actor pools at the same time: each needs its own CPUs and GPU share.
    pools = 1 + bert_wanted(rows, cfg) + cfg.pro + (cfg.sovits is not None)  # HuBERT, BERT, SV, semantic
    started = connect(address, num_cpus=pools * workers * cfg.threads, logging_level=logging.ERROR, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-dataset INFO lines are not the user's report
    gpus = float(ray.cluster_resources().get("GPU", 0))
    num_gpus = min(1.0, gpus / (workers * pools)) if gpus > 0 else 0.0
    out = run_on_ray(rows, cfg, batch, workers, num_gpus)
    return (
        out,
        f"Ray Data, {workers} worker{'s' * (workers > 1)}{f', {num_gpus:g} GPU each' if num_gpus else ''}",
        started,
    )


def prepare_experiment(
    list_file: str | Path,
    output: str | Path,
    *,
    version: str,
    pretrained: str | Path,
    wav_dir: str | Path | None = None,
    sovits: str | Path | None = None,
    workers: int = 1,
    address: str | None = None,
    threads: int = 1,
    batch_size: int = 8,
    zh_without_g2pw: bool = False,
    g2pw: str | Path | None = None,
    use_ray: bool | None = None,
    load: Any = language_module,
) -> PrepareResult:
    """Fill ``output`` (``logs/<exp>``) from ``list_file``; see the module docstring. ``use_ray`` (default:
    ``workers > 1`` or an ``address``) runs the stages on Ray Data; ``load`` returns a language's front-end
    module (default: ``gsv_ray.prepare.text.<lang>``); zh lines of v2 and later are read with upstream's g2pW
    model from ``g2pw`` (default: ``<pretrained>/../text/G2PWModel`` when it exists), or with
    ``zh_without_g2pw`` upstream's reading without g2pW (else they are refused). Raises
    :class:`EmptyExperiment` when nothing is kept."""
    t0 = time.perf_counter()
    if version not in S2_VERSIONS:
        raise ConfigError(f"unknown version {version!r}", fix=f"use one of {', '.join(S2_VERSIONS)}")
    models = _models(pretrained, version, sovits)
    list_path, out = Path(list_file), Path(output)
    rows, problems, listed = _plan(_read_list(list_path), wav_dir)
    g2pw_folder = _g2pw_folder(g2pw, pretrained, version, zh_without_g2pw, rows)
    for sub in (BERT_DIR, WAV_DIR, HUBERT_DIR, SV_DIR):
        sweep_temp_files(out / sub)  # a killed run's half-written files
    cfg = StageConfig(
        out=str(out),
        version=version,
        hubert=str(models.hubert),
        sv=None if models.sv is None else str(models.sv),
        threads=threads,
        load=load,
        bert=None if models.bert is None else str(models.bert),
        no_g2pw=zh_without_g2pw,
        sovits=str(models.sovits),
        g2pw=None if g2pw_folder is None else str(g2pw_folder),
    )
    semantic_weights(models.sovits, None, None)  # a SoVITS file that cannot make tokens fails here, before the work
    resumed = sum(cfg.layout.done(r["name"], cfg.pro, bert=r["language"] == "zh") for r in rows)
    use_ray = (workers > 1 or address is not None) if use_ray is None else use_ray
    started = False
    try:
        done, mode, started = _run_stages(rows, cfg, workers, address, use_ray, batch_size)
        result = _finish(done, problems, listed, out, version, models, list_path)
    finally:
        if started:
            from gsv_ray.distributed.cluster import shutdown_local_ray

            shutdown_local_ray()
    result.resumed, result.mode, result.seconds = resumed, mode, time.perf_counter() - t0
    return result


def _finish(rows, problems, listed, out, version, models, list_path) -> PrepareResult:
    """Report the rows' problems; write ``2-name2text.txt`` and ``6-name2semantic.tsv`` (list order)."""
    found = [dict(lineno=p.lineno, name=p.name, reason=p.reason, message=p.message) for p in problems]
    kept = []
    for r in rows:
        p = problem_of(r)
        if p:
            found.append(dict(lineno=r["lineno"], name=r["name"], reason=p[0], message=p[1]))
        else:
            kept.append(r)
    found.sort(key=lambda p: p["lineno"])
    result = PrepareResult(out, version, listed, len(kept), 0, found, "", 0.0)
    if not kept:
        raise EmptyExperiment(result)
    result.notes = [
        dict(
            lineno=r["lineno"], name=r["name"], reason=r["note"].split("\t", 1)[0], message=r["note"].split("\t", 1)[1]
        )
        for r in kept
        if r["note"]
    ]
    kept.sort(key=lambda r: r["lineno"])
    data = render_name2text([r["line"] for r in kept])
    atomic_write(out / NAME2TEXT, lambda f: f.write(data), overwrite=True, protect=[list_path])
    tsv = render_tsv([(r["name"], r["semantic"]) for r in kept])
    atomic_write(out / SEMANTIC_TSV, lambda f: f.write(tsv), overwrite=True, protect=[list_path, models.sovits])
    result.tokens = sum(len(r["semantic"].split()) for r in kept)
    result.files = {"name2text": str(out / NAME2TEXT), "semantic": str(out / SEMANTIC_TSV)}
    return result


def result_json(result: PrepareResult) -> str:
    """``--json``'s output."""
    return json.dumps(result.to_json(), ensure_ascii=False, indent=2)


def run_on_ray(
    rows: Sequence[dict[str, Any]], cfg: StageConfig, batch_size: int, workers: int, num_gpus: float
) -> list[dict[str, Any]]:
    """The same stages as a Ray Data pipeline: text and decode as tasks, BERT (zh lines), HuBERT, SV and the
    semantic tokens as pools of ``workers`` actors (``num_gpus`` each, ``cfg.threads`` CPUs), ``batch_size``
    rows per call."""
    import ray.data

    ds = ray.data.from_items(list(rows), override_num_blocks=max(1, min(len(rows), 4 * workers)))
    ds = ds.map(text_stage, fn_kwargs={"cfg": cfg})
    actors = {
        "fn_constructor_kwargs": {"cfg": cfg},
        "batch_size": batch_size,
        "compute": ray.data.ActorPoolStrategy(size=workers),  # a fixed pool (``concurrency`` is deprecated)
        "num_cpus": cfg.threads,
        "num_gpus": num_gpus,
        "batch_format": "numpy",
    }
    if bert_wanted(rows, cfg):
        ds = ds.map_batches(BertStage, **actors)
    ds = ds.map(decode_stage, fn_kwargs={"cfg": cfg})
    ds = ds.map_batches(HubertStage, **actors)
    if cfg.pro:
        ds = ds.map_batches(SvStage, **actors)
    if cfg.sovits is not None:
        ds = ds.map_batches(SemanticStage, **actors)
    return sorted((dict(r) for r in ds.take_all()), key=lambda r: r["lineno"])
