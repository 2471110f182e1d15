"""Scan an experiment folder once; every later open (Ray workers, Tune trials) reads a JSON index.

:func:`open_experiment` reads every WAV header and, by default, ``torch.load``\\ s every feature
file. :func:`open_experiment_cached` does that once per distinct folder state and stores the result
under ``<cache_root>/experiments/<key>.json``, where the key (:func:`experiment_key`) is a sha256 of
the stage, version, options, the folder's absolute path and a *listing* (name, size, mtime_ns and
file type of ``2-name2text.txt``, ``6-name2semantic.tsv`` and every entry of the feature/audio
folders the stage reads). The key trusts sizes and mtimes, not contents -- as ``make`` and the
rebuild store's input-hash index do: rewriting a file in place with the same size *and* the same
mtime (e.g. ``touch -r``) is not noticed.

The index is plain JSON (never pickle: reading it runs no code), checked field by field on load; a
truncated, malformed or old-format entry is ignored and rebuilt. Utterance paths are stored relative
to the folder. Entries are written atomically (temp file in the same directory, then
``os.replace``), so concurrent writers of one key both succeed and a reader never sees half a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import stat as stat_mod
from pathlib import Path
from typing import Any

from gsv_ray import __version__
from gsv_ray.atomic import atomic_write
from gsv_ray.data.experiment import (
    BERT_DIR,
    HUBERT_DIR,
    NAME2TEXT,
    SEMANTIC_TSV,
    SEVERITIES,
    STAGES,
    SV_DIR,
    WAV_DIR,
    DataReport,
    Experiment,
    ExperimentOptions,
    Problem,
    Utterance,
    open_experiment,
)
from gsv_ray.resources import PRO_VERSIONS

__all__ = ["INDEX_FORMAT", "INDEX_DIR", "experiment_key", "index_path", "open_experiment_cached"]

#: Bump when the stored layout or what :func:`open_experiment` computes changes: old entries then miss.
INDEX_FORMAT = 1
#: Sub-folder of the cache root that holds the entries.
INDEX_DIR = "experiments"

_log = logging.getLogger(__name__)


class _Corrupt(ValueError):
    """A stored entry that is not exactly what :func:`_encode` writes."""


# ----------------------------------------------------------------------------- key
def _parts(stage: str, version: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(files, folders) of the experiment that ``open_experiment`` reads for this stage."""
    if stage == "sovits":
        return (NAME2TEXT,), (HUBERT_DIR, WAV_DIR) + ((SV_DIR,) if version in PRO_VERSIONS else ())
    if stage == "gpt":
        return (NAME2TEXT, SEMANTIC_TSV), (BERT_DIR,)
    # unknown stage: open_experiment raises (nothing is ever stored); list everything anyway
    return (NAME2TEXT, SEMANTIC_TSV), (BERT_DIR, HUBERT_DIR, WAV_DIR, SV_DIR)


def _stat_row(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, stat_mod.S_IFMT(st.st_mode)]


def _stat_or_none(path: str) -> list[int] | None:
    try:
        return _stat_row(os.stat(path))
    except OSError:
        return None


def _dir_listing(path: str) -> Any:
    """``None`` (absent), ``{"file": row}`` (not a folder), or ``{"dir": [[name, *row], ...]}``
    sorted by name. Entries are stat'ed through symlinks (the scan reads through them too); an entry
    that cannot be stat'ed (broken link, vanished) is listed with ``None``."""
    try:
        it = os.scandir(path)
    except NotADirectoryError:
        return {"file": _stat_or_none(path)}
    except OSError:
        return None
    rows = []
    with it:
        for entry in it:
            try:
                row: list[int] | None = _stat_row(entry.stat())
            except OSError:
                row = None
            rows.append([entry.name, row])
    rows.sort(key=lambda r: r[0])
    return {"dir": rows}


def _options_json(options: ExperimentOptions | None) -> dict[str, Any]:
    return dataclasses.asdict(options or ExperimentOptions())


def experiment_key(
    root: str | os.PathLike[str], stage: str, version: str, options: ExperimentOptions | None = None
) -> str:
    """sha256 (hex) of everything :func:`open_experiment` depends on, from ``stat`` calls only.

    Covers the index format, the gsv-ray version, the absolute root (and the root as spelled, which
    the returned paths and report carry), stage, version, the options, and name / size / mtime_ns /
    file type of ``2-name2text.txt`` and of what the stage reads: SoVITS ``4-cnhubert/``,
    ``5-wav32k/`` (and ``7-sv_cn/`` for v2Pro/v2ProPlus); GPT ``6-name2semantic.tsv`` and
    ``3-bert/``. An added, removed, resized or re-timed file changes the key; contents are not read.
    """
    given = os.fspath(Path(root))
    absolute = os.path.abspath(given)
    files, folders = _parts(stage, version)
    blob = {
        "format": INDEX_FORMAT,
        "gsv_ray": __version__,
        "root": absolute,
        "root_as_given": given,
        "stage": stage,
        "version": version,
        "options": _options_json(options),
        # only the root's file type: its own mtime changes with anything written beside the
        # features (upstream's logs_s1/, logs_s2_*/), which the scan never reads
        "root_type": (_stat_or_none(absolute) or [None] * 3)[2],
        "files": {name: _stat_or_none(os.path.join(absolute, name)) for name in files},
        "folders": {name: _dir_listing(os.path.join(absolute, name)) for name in folders},
    }
    text = json.dumps(blob, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def index_path(cache_root: str | os.PathLike[str], key: str) -> Path:
    """Where the entry for ``key`` lives."""
    return Path(cache_root) / INDEX_DIR / f"{key}.json"


# ----------------------------------------------------------------------------- encode
def _rel(path: Path | None, root: Path) -> str | None:
    if path is None:
        return None
    return path.relative_to(root).as_posix()  # ValueError (not under root): the caller skips storing


def _encode(exp: Experiment, key: str) -> dict[str, Any]:
    root = exp.root
    rep = exp.report
    return {
        "format": INDEX_FORMAT,
        "key": key,
        "stage": exp.stage,
        "version": exp.version,
        "root": os.fspath(root),  # informational; paths below are relative to the caller's root
        "options": dataclasses.asdict(exp.options),
        "sampling_rate": exp.sampling_rate,
        "hop_length": exp.hop_length,
        "known_names": sorted(exp.known_names),
        "report": {
            "listed": rep.listed,
            "usable": rep.usable,
            "examples": rep.examples,
            "problems": [
                {
                    "code": p.code,
                    "severity": p.severity,
                    "message": p.message,
                    "excluded": p.excluded,
                    "names": list(p.names),
                }
                for p in rep.problems
            ],
        },
        "utterances": [
            {
                "name": u.name,
                "phones": list(u.phones),
                "phone_ids": list(u.phone_ids),
                "word2ph": u.word2ph,
                "norm_text": u.norm_text,
                "wav_path": _rel(u.wav_path, root),
                "wav_bytes": u.wav_bytes,
                "num_samples": u.num_samples,
                "hubert_path": _rel(u.hubert_path, root),
                "sv_path": _rel(u.sv_path, root),
                "bert_path": _rel(u.bert_path, root),
                "semantic_ids": None if u.semantic_ids is None else list(u.semantic_ids),
            }
            for u in exp.utterances
        ],
    }


# ----------------------------------------------------------------------------- decode (strict)
def _need(cond: bool, what: str) -> None:
    if not cond:
        raise _Corrupt(what)


def _obj(value: Any, keys: set[str], what: str) -> dict[str, Any]:
    _need(isinstance(value, dict) and set(value) == keys, f"{what}: not an object with keys {sorted(keys)}")
    return value


def _int(value: Any, what: str) -> int:
    _need(type(value) is int and value >= 0, f"{what}: not a non-negative int")  # bool is not an int here
    return value


def _str(value: Any, what: str) -> str:
    _need(type(value) is str, f"{what}: not a string")
    return value


def _strs(value: Any, what: str) -> list[str]:
    _need(type(value) is list and set(map(type, value)) <= {str}, f"{what}: not a list of strings")
    return value


def _ints(value: Any, what: str) -> tuple[int, ...]:
    _need(
        type(value) is list and set(map(type, value)) <= {int} and (not value or min(value) >= 0),
        f"{what}: not a list of non-negative ints",
    )  # type() is exact: no bools, no floats
    return tuple(value)


class _Paths:
    """Relative POSIX paths from an entry -> ``root / rel``, each parent folder joined once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.parents: dict[str, Path] = {}

    def __call__(self, value: Any, what: str) -> Path | None:
        if value is None:
            return None
        rel = _str(value, what)
        parent, _, name = rel.rpartition("/")
        base = self.parents.get(parent)
        if base is None:
            _need(not os.path.isabs(rel) and ".." not in parent.split("/"), f"{what}: not a relative path")
            base = self.parents[parent] = self.root / parent if parent else self.root
        _need(name not in ("", ".", ".."), f"{what}: not a relative path")
        return base / name


_UTT_KEYS = {
    "name",
    "phones",
    "phone_ids",
    "word2ph",
    "norm_text",
    "wav_path",
    "wav_bytes",
    "num_samples",
    "hubert_path",
    "sv_path",
    "bert_path",
    "semantic_ids",
}
_TOP_KEYS = {
    "format",
    "key",
    "stage",
    "version",
    "root",
    "options",
    "sampling_rate",
    "hop_length",
    "known_names",
    "report",
    "utterances",
}


def _decode(data: Any, key: str, root: Path, stage: str, version: str, options: ExperimentOptions) -> Experiment:
    """The Experiment an entry describes, for a folder at ``root`` -- or :class:`_Corrupt`."""
    _need(isinstance(data, dict) and data.get("format") == INDEX_FORMAT, "wrong or missing format version")
    top = _obj(data, _TOP_KEYS, "entry")
    _need(top["key"] == key and top["stage"] == stage and top["version"] == version, "entry of another key")
    _need(top["options"] == dataclasses.asdict(options), "entry of other options")
    _str(top["root"], "root")

    report = _decode_report(top["report"], root, stage, version)
    utts = _decode_utterances(top["utterances"], root)
    _need(report.usable == len(utts), "report.usable != number of utterances")
    known = frozenset(_strs(top["known_names"], "known_names"))
    return Experiment(
        root,
        stage,
        version,
        utts,
        report,
        options,
        _int(top["sampling_rate"], "sampling_rate"),
        _int(top["hop_length"], "hop_length"),
        known,
    )


def _decode_report(data: Any, root: Path, stage: str, version: str) -> DataReport:
    """An entry's data report -- or :class:`_Corrupt`."""
    rep = _obj(data, {"listed", "usable", "examples", "problems"}, "report")
    _need(type(rep["problems"]) is list, "report.problems: not a list")
    problems = []
    for i, p in enumerate(rep["problems"]):
        p = _obj(p, {"code", "severity", "message", "excluded", "names"}, f"problem {i}")
        _need(p["severity"] in SEVERITIES and type(p["excluded"]) is bool, f"problem {i}: bad severity/excluded")
        problems.append(
            Problem(
                _str(p["code"], "code"),
                p["severity"],
                _str(p["message"], "message"),
                p["excluded"],
                list(_strs(p["names"], "names")),
            )
        )
    return DataReport(
        root=root,
        stage=stage,
        version=version,
        listed=_int(rep["listed"], "listed"),
        usable=_int(rep["usable"], "usable"),
        problems=problems,
        examples=_int(rep["examples"], "examples"),
    )


def _decode_utterances(data: Any, root: Path) -> list[Utterance]:
    """An entry's utterances, their files under ``root`` -- or :class:`_Corrupt`."""
    _need(type(data) is list, "utterances: not a list")
    path = _Paths(root)
    utts = []
    for i, u in enumerate(data):
        u = _obj(u, _UTT_KEYS, f"utterance {i}")
        sem = u["semantic_ids"]
        utts.append(
            Utterance(
                name=_str(u["name"], "name"),
                phones=tuple(_strs(u["phones"], "phones")),
                phone_ids=_ints(u["phone_ids"], "phone_ids"),
                word2ph=_str(u["word2ph"], "word2ph"),
                norm_text=_str(u["norm_text"], "norm_text"),
                wav_path=path(u["wav_path"], "wav_path"),
                wav_bytes=_int(u["wav_bytes"], "wav_bytes"),
                num_samples=_int(u["num_samples"], "num_samples"),
                hubert_path=path(u["hubert_path"], "hubert_path"),
                sv_path=path(u["sv_path"], "sv_path"),
                bert_path=path(u["bert_path"], "bert_path"),
                semantic_ids=None if sem is None else _ints(sem, "semantic_ids"),
            )
        )
    return utts


def _read_entry(
    path: Path, key: str, root: Path, stage: str, version: str, options: ExperimentOptions
) -> Experiment | None:
    """The stored Experiment, or ``None`` when there is no usable entry (absent, unreadable, corrupt)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    try:
        return _decode(json.loads(raw), key, root, stage, version, options)
    except (_Corrupt, ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        _log.warning("ignoring corrupt experiment index %s (%s); scanning the folder again", path, exc)
        return None


# ----------------------------------------------------------------------------- write
def _write_atomic(path: Path, data: bytes) -> None:
    """``data`` into ``path`` atomically (temp file, fsync, rename; mode from the umask). Several
    processes writing the same key each replace the file with identical bytes; readers see old or
    new, whole."""
    atomic_write(path, lambda f: f.write(data), overwrite=True)


# ----------------------------------------------------------------------------- entry point
def open_experiment_cached(
    root: str | os.PathLike[str],
    stage: str,
    version: str,
    options: ExperimentOptions | None = None,
    *,
    cache_root: str | os.PathLike[str],
) -> Experiment:
    """:func:`open_experiment`, scanned once per folder state and then read from the cache.

    Hit: the stored JSON index is returned as an :class:`Experiment` equal to a fresh scan, without
    opening any wav or feature file. Miss (or a corrupt entry): the folder is scanned and the result
    stored under ``<cache_root>/experiments/<key>.json`` -- unless the folder changed while it was
    being scanned (the key is taken again afterwards), or the cache cannot be written (a warning).
    :class:`~gsv_ray.errors.GsvError` from the scan propagates and nothing is stored.
    """
    opts = options or ExperimentOptions()
    key = experiment_key(root, stage, version, opts)
    path = index_path(cache_root, key)
    if stage in STAGES:
        hit = _read_entry(path, key, Path(root), stage, version, opts)
        if hit is not None:
            return hit
    exp = open_experiment(root, stage, version, opts)
    if experiment_key(root, stage, version, opts) != key:
        _log.warning("experiment folder %s changed while it was scanned; not caching this scan", root)
        return exp
    try:
        data = json.dumps(_encode(exp, key), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except (ValueError, UnicodeEncodeError) as exc:  # a path outside the root, an unencodable name
        _log.warning("experiment %s not cached: %s", root, exc)
        return exp
    try:
        _write_atomic(path, data)
    except OSError as exc:
        _log.warning("could not write experiment index %s (%s); continuing without it", path, exc)
    return exp
