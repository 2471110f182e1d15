"""The experiment index: one scan per folder state, every later open reads a JSON entry.

All tests use real folders from the synthetic generator (``tests/data/conftest.py``).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys
import wave
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch

import gsv_ray.data.index as index_mod
from gsv_ray.data.experiment import ExperimentOptions, open_experiment
from gsv_ray.data.index import INDEX_FORMAT, experiment_key, index_path, open_experiment_cached
from gsv_ray.errors import GsvError
from tests.data.conftest import N_UTTS

CASES = [("sovits", "v2"), ("sovits", "v2Pro"), ("gpt", "v2"), ("gpt", "v2Pro")]


# ----------------------------------------------------------------------------- helpers
_FORBIDDEN: list[str] = []  # realpaths whose files (recursively) must not be opened right now
_HOOKED = False


def _audit(event: str, args: tuple) -> None:
    if event != "open" or not _FORBIDDEN or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    target = os.path.realpath(os.fsdecode(args[0]))
    for root in _FORBIDDEN:
        if target == root or target.startswith(root + os.sep):
            raise PermissionError(f"test forbids opening {target}")


@contextmanager
def no_file_opened_under(root: Path) -> Iterator[None]:
    """Any ``open`` (builtin, io, os.open: all raise the 'open' audit event) of a file under
    ``root`` raises while inside. Audit hooks cannot be removed, so one hook is installed per
    process and is inert outside this block."""
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)
        _HOOKED = True
    _FORBIDDEN.append(os.path.realpath(root))
    try:
        yield
    finally:
        _FORBIDDEN.pop()


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Counts the folder scans ``open_experiment_cached`` makes (each miss is one)."""
    calls: list[tuple] = []
    real = index_mod.open_experiment

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(index_mod, "open_experiment", counting)
    return calls


def _names(root: Path) -> list[str]:
    return [ln.split("\t")[0] for ln in (root / "2-name2text.txt").read_text(encoding="utf-8").splitlines()]


def _bump_mtime(path: Path, seconds: int = 5) -> None:
    """A clearly later mtime (whatever the filesystem's timestamp granularity)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def _entries(cache: Path) -> list[Path]:
    d = cache / "experiments"
    return sorted(d.iterdir()) if d.is_dir() else []


# ----------------------------------------------------------------------------- hit == fresh
@pytest.mark.parametrize("stage,version", CASES)
def test_hit_equals_fresh_scan(stage: str, version: str, synth_root, tmp_path: Path, scans) -> None:
    root = synth_root(version)
    cache = tmp_path / "cache"
    first = open_experiment_cached(root, stage, version, cache_root=cache)
    assert len(scans) == 1 and [p.name for p in _entries(cache)] == [f"{experiment_key(root, stage, version)}.json"]
    second = open_experiment_cached(root, stage, version, cache_root=cache)
    assert len(scans) == 1  # a hit: no second scan
    fresh = open_experiment(root, stage, version)
    assert first == fresh and second == fresh  # every field of every Utterance, report, known_names, ...
    assert second.report.problems == fresh.report.problems == [] and second.report.usable == N_UTTS
    assert second.known_names == fresh.known_names and len(second.known_names) == N_UTTS
    assert str(second.report) == str(fresh.report)
    assert second.utterances is not first.utterances  # a new object each time, safe to mutate


def test_hit_equals_fresh_with_problems_and_options(mutable_exp, tmp_path: Path, scans) -> None:
    """A folder with problems of several kinds, other options: report and known_names survive."""
    root = mutable_exp("v2Pro")
    names = _names(root)
    (root / "4-cnhubert" / f"{names[0]}.pt").unlink()
    (root / "7-sv_cn" / f"{names[1]}.pt").write_bytes(b"not a tensor")
    (root / "3-bert" / f"{names[2]}.pt").unlink()
    (root / "5-wav32k" / "orphan.wav").write_bytes(b"RIFF")
    opts = ExperimentOptions(examples=2, bucket_max_frames=60)
    cache = tmp_path / "cache"
    for stage in ("sovits", "gpt"):
        fresh = open_experiment(root, stage, "v2Pro", opts)
        assert fresh.report.problems
        assert open_experiment_cached(root, stage, "v2Pro", opts, cache_root=cache) == fresh
        assert open_experiment_cached(root, stage, "v2Pro", opts, cache_root=cache) == fresh
        assert str(open_experiment_cached(root, stage, "v2Pro", opts, cache_root=cache).report) == str(fresh.report)
    assert len(scans) == 2
    # other options are another entry
    assert open_experiment_cached(root, "sovits", "v2Pro", cache_root=cache) == open_experiment(root, "sovits", "v2Pro")
    assert len(scans) == 3


def test_hit_opens_no_feature_file(synth_root, tmp_path: Path, scans, monkeypatch: pytest.MonkeyPatch) -> None:
    root = synth_root("v2Pro")
    cache = tmp_path / "cache"
    fresh = {stage: open_experiment_cached(root, stage, "v2Pro", cache_root=cache) for stage in ("sovits", "gpt")}
    assert len(scans) == 2

    # the guard is real: inside it, a scan or a torch.load of a feature file fails
    some_feature = fresh["sovits"].utterances[0].hubert_path
    with no_file_opened_under(root):
        with pytest.raises(PermissionError):
            torch.load(some_feature, weights_only=True)
        with pytest.raises(PermissionError):
            open_experiment(root, "gpt", "v2Pro")

    def boom(*args, **kwargs):
        raise AssertionError("a cache hit must not read feature or audio files")

    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(wave, "open", boom)
    with no_file_opened_under(root):
        for stage in ("sovits", "gpt"):
            assert open_experiment_cached(root, stage, "v2Pro", cache_root=cache) == fresh[stage]
    assert len(scans) == 2


def test_entry_is_json_with_relative_paths(synth_root, tmp_path: Path) -> None:
    root = synth_root("v2Pro")
    cache = tmp_path / "cache"
    exp = open_experiment_cached(root, "sovits", "v2Pro", cache_root=cache)
    (entry,) = _entries(cache)
    data = json.loads(entry.read_text(encoding="utf-8"))
    assert data["format"] == INDEX_FORMAT and data["key"] == entry.stem
    u = data["utterances"][0]
    assert u["wav_path"] == f"5-wav32k/{exp.utterances[0].name}"
    assert u["hubert_path"] == f"4-cnhubert/{exp.utterances[0].name}.pt"
    assert u["sv_path"] == f"7-sv_cn/{exp.utterances[0].name}.pt" and u["bert_path"] is None
    assert str(root) not in json.dumps(data["utterances"])


def test_relative_root_spelling(synth_root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scans) -> None:
    root = synth_root("v2")
    monkeypatch.chdir(root.parent)
    cache = tmp_path / "cache"
    for spelling in ("v2", f"./{'v2'}/", str(root)):
        for stage in ("sovits", "gpt"):
            open_experiment_cached(spelling, stage, "v2", cache_root=cache)
            hit = open_experiment_cached(spelling, stage, "v2", cache_root=cache)
            assert hit == open_experiment(spelling, stage, "v2")
    assert len(scans) == 4  # "v2" and "./v2/" are one Path; the absolute spelling is its own entry
    monkeypatch.chdir(root)
    hit = open_experiment_cached(".", "sovits", "v2", cache_root=cache)
    assert hit == open_experiment(".", "sovits", "v2") and hit.utterances[0].wav_path.parts[0] == "5-wav32k"


# ----------------------------------------------------------------------------- the key
def test_key_is_stable_and_covers_its_inputs(mutable_exp, tmp_path: Path) -> None:
    root = mutable_exp("v2Pro")
    base = experiment_key(root, "sovits", "v2Pro")
    assert (
        base
        == experiment_key(root, "sovits", "v2Pro", ExperimentOptions())
        == experiment_key(str(root), "sovits", "v2Pro")
    )
    assert len(base) == 64 and int(base, 16) >= 0
    others = {
        experiment_key(root, "gpt", "v2Pro"),
        experiment_key(root, "sovits", "v2"),
        experiment_key(root, "sovits", "v2Pro", ExperimentOptions(scan_tensors=False)),
        experiment_key(root, "sovits", "v2Pro", ExperimentOptions(min_duration=0.5)),
    }
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)  # same names, sizes and mtimes: only the root differs
    others.add(experiment_key(copy, "sovits", "v2Pro"))
    assert base not in others and len(others) == 5

    # a stage's key lists only what that stage reads
    gpt = experiment_key(root, "gpt", "v2Pro")
    _bump_mtime(root / "5-wav32k" / _names(root)[0])
    (root / "7-sv_cn" / "extra.pt").write_bytes(b"x")
    assert experiment_key(root, "gpt", "v2Pro") == gpt
    sovits_v2 = experiment_key(root, "sovits", "v2")
    (root / "7-sv_cn" / "extra2.pt").write_bytes(b"x")
    assert experiment_key(root, "sovits", "v2") == sovits_v2  # v2 does not read 7-sv_cn
    sovits = experiment_key(root, "sovits", "v2Pro")
    (root / "3-bert" / "extra.pt").write_bytes(b"x")
    (root / "6-name2semantic.tsv").write_text("item_name\tsemantic_audio\n", encoding="utf-8")
    assert experiment_key(root, "sovits", "v2Pro") == sovits
    assert experiment_key(root, "gpt", "v2Pro") != gpt
    # nor what training writes beside the features (upstream's logs_s2_<version>/, logs_s1/)
    gpt = experiment_key(root, "gpt", "v2Pro")
    (root / "logs_s2_v2Pro").mkdir()
    (root / "logs_s2_v2Pro" / "events.out").write_bytes(b"x")
    assert experiment_key(root, "sovits", "v2Pro") == sovits and experiment_key(root, "gpt", "v2Pro") == gpt


def test_key_trusts_size_and_mtime_not_contents(mutable_exp) -> None:
    """The documented trade-off: an in-place rewrite with the same size and mtime is not noticed."""
    root = mutable_exp("v2")
    wav = root / "5-wav32k" / _names(root)[0]
    key = experiment_key(root, "sovits", "v2")
    st = wav.stat()
    data = bytearray(wav.read_bytes())
    data[100] ^= 0xFF
    wav.write_bytes(bytes(data))
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert experiment_key(root, "sovits", "v2") == key


# ----------------------------------------------------------------------------- changes re-scan
def _check_rescan(root: Path, stage: str, version: str, cache: Path, old_key: str, scans: list) -> object:
    new_key = experiment_key(root, stage, version)
    assert new_key != old_key
    before = len(scans)
    exp = open_experiment_cached(root, stage, version, cache_root=cache)
    assert len(scans) == before + 1
    assert exp == open_experiment(root, stage, version)
    assert open_experiment_cached(root, stage, version, cache_root=cache) == exp and len(scans) == before + 1
    return exp


def test_touching_a_wav_rescans(mutable_exp, tmp_path: Path, scans) -> None:
    root, cache = mutable_exp("v2"), tmp_path / "cache"
    open_experiment_cached(root, "sovits", "v2", cache_root=cache)
    key = experiment_key(root, "sovits", "v2")
    _bump_mtime(root / "5-wav32k" / _names(root)[4])
    exp = _check_rescan(root, "sovits", "v2", cache, key, scans)
    assert exp.report.problems == [] and exp.report.usable == N_UTTS


def test_appending_to_a_wav_rescans(mutable_exp, tmp_path: Path, scans) -> None:
    root, cache = mutable_exp("v2"), tmp_path / "cache"
    old = open_experiment_cached(root, "sovits", "v2", cache_root=cache)
    key = experiment_key(root, "sovits", "v2")
    victim = _names(root)[4]
    wav = root / "5-wav32k" / victim
    with wav.open("ab") as f:
        f.write(b"\0" * 32000 * 2 * 60)  # a minute of trailing bytes: upstream's file-size duration > 54 s
    exp = _check_rescan(root, "sovits", "v2", cache, key, scans)
    assert exp.report.get("duration").names == [victim] and victim not in exp.names
    assert exp.report.usable == N_UTTS - 1 and old.report.usable == N_UTTS


def test_rewriting_a_wav_with_the_same_size_rescans(mutable_exp, tmp_path: Path, scans) -> None:
    root, cache = mutable_exp("v2"), tmp_path / "cache"
    open_experiment_cached(root, "sovits", "v2", cache_root=cache)
    key = experiment_key(root, "sovits", "v2")
    victim = _names(root)[2]
    wav = root / "5-wav32k" / victim
    size = wav.stat().st_size
    wav.write_bytes(b"JUNK" * (size // 4) + b"J" * (size % 4))
    _bump_mtime(wav)
    exp = _check_rescan(root, "sovits", "v2", cache, key, scans)
    assert exp.report.get("bad_wav").names == [victim]


def test_deleting_a_hubert_file_rescans(mutable_exp, tmp_path: Path, scans) -> None:
    root, cache = mutable_exp("v2Pro"), tmp_path / "cache"
    open_experiment_cached(root, "sovits", "v2Pro", cache_root=cache)
    key = experiment_key(root, "sovits", "v2Pro")
    victim = _names(root)[3]
    (root / "4-cnhubert" / f"{victim}.pt").unlink()
    exp = _check_rescan(root, "sovits", "v2Pro", cache, key, scans)
    assert exp.report.get("missing_hubert").names == [victim] and exp.report.usable == N_UTTS - 1


def test_editing_name2text_rescans(mutable_exp, tmp_path: Path, scans) -> None:
    root, cache = mutable_exp("v2"), tmp_path / "cache"
    keys = {stage: experiment_key(root, stage, "v2") for stage in ("sovits", "gpt")}
    for stage in keys:
        open_experiment_cached(root, stage, "v2", cache_root=cache)
    path = root / "2-name2text.txt"
    lines = path.read_text(encoding="utf-8").split("\n")
    fields = lines[5].split("\t")
    fields[1] = fields[1] + " QQ"  # a phone in neither table
    lines[5] = "\t".join(fields)
    path.write_text("\n".join(lines), encoding="utf-8")
    _bump_mtime(path)
    for stage in keys:
        exp = _check_rescan(root, stage, "v2", cache, keys[stage], scans)
        assert exp.report.get("unknown_phone").names == [fields[0]] and fields[0] not in exp.names


def test_folder_changing_during_the_scan_is_not_stored(mutable_exp, tmp_path: Path, monkeypatch) -> None:
    root, cache = mutable_exp("v2"), tmp_path / "cache"
    real = index_mod.open_experiment

    def scan_then_change(*args, **kwargs):
        exp = real(*args, **kwargs)
        (root / "4-cnhubert" / f"{_names(root)[0]}.pt").unlink()
        return exp

    monkeypatch.setattr(index_mod, "open_experiment", scan_then_change)
    exp = open_experiment_cached(root, "sovits", "v2", cache_root=cache)
    assert exp.report.usable == N_UTTS and _entries(cache) == []
    monkeypatch.setattr(index_mod, "open_experiment", real)
    assert open_experiment_cached(root, "sovits", "v2", cache_root=cache).report.usable == N_UTTS - 1


# ----------------------------------------------------------------------------- corrupt entries
def _valid_entry(synth_root, cache: Path, stage: str = "sovits", version: str = "v2Pro") -> tuple[Path, Path, dict]:
    root = synth_root(version)
    open_experiment_cached(root, stage, version, cache_root=cache)
    path = index_path(cache, experiment_key(root, stage, version))
    return root, path, json.loads(path.read_text(encoding="utf-8"))


def _set(data: dict, dotted: str, value) -> dict:
    obj = data
    *parts, last = dotted.split(".")
    for p in parts:
        obj = obj[int(p)] if isinstance(obj, list) else obj[p]
    if isinstance(obj, list):
        obj[int(last)] = value
    else:
        obj[last] = value
    return data


BYTE_DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda b: b[: len(b) // 2],
    "one_byte_short": lambda b: b[:-1],
    "empty": lambda b: b"",
    "garbage": lambda b: b"\x00\xff\xfe garbage \x80" * 10,
    "not_utf8_json": lambda b: b.replace(b'"utterances"', b'"utter\xffances"'),
    "nan_literal": lambda b: b.replace(b'"listed":', b'"listed":NaN,"x":', 1),
}

SHAPE_DAMAGE: dict[str, Callable[[dict], object]] = {
    "list": lambda d: [],
    "null": lambda d: None,
    "only_format": lambda d: {"format": INDEX_FORMAT},
    "wrong_format": lambda d: _set(d, "format", INDEX_FORMAT + 1),
    "format_as_string": lambda d: _set(d, "format", str(INDEX_FORMAT)),
    "other_key": lambda d: _set(d, "key", "0" * 64),
    "other_stage": lambda d: _set(d, "stage", "gpt"),
    "other_options": lambda d: _set(d, "options.scan_tensors", False),
    "extra_field": lambda d: _set(d, "surprise", 1),
    "missing_field": lambda d: {k: v for k, v in d.items() if k != "known_names"},
    "utterances_not_list": lambda d: _set(d, "utterances", {"a": 1}),
    "phones_as_string": lambda d: _set(d, "utterances.0.phones", "n i3"),
    "phone_id_negative": lambda d: _set(d, "utterances.0.phone_ids.0", -1),
    "phone_id_float": lambda d: _set(d, "utterances.0.phone_ids.0", 1.5),
    "wav_bytes_bool": lambda d: _set(d, "utterances.0.wav_bytes", True),
    "wav_bytes_string": lambda d: _set(d, "utterances.0.wav_bytes", "123"),
    "absolute_path": lambda d: _set(d, "utterances.0.hubert_path", "/etc/passwd"),
    "parent_path": lambda d: _set(d, "utterances.0.hubert_path", "../elsewhere/x.pt"),
    "utterance_missing_key": lambda d: _set(d, "utterances.0", {"name": "x"}),
    "bad_severity": lambda d: _set(
        d, "report.problems", [{"code": "c", "severity": "fatal", "message": "m", "excluded": True, "names": []}]
    ),
    "usable_mismatch": lambda d: _set(d, "report.usable", 3),
    "known_names_ints": lambda d: _set(d, "known_names", [1, 2]),
    "deeply_nested": lambda d: _set(d, "known_names", json.loads("[" * 50000 + "]" * 50000)),
}


@pytest.mark.parametrize("damage", sorted(BYTE_DAMAGE))
def test_corrupt_bytes_are_recomputed(damage: str, synth_root, tmp_path: Path, scans) -> None:
    cache = tmp_path / "cache"
    root, path, _ = _valid_entry(synth_root, cache)
    path.write_bytes(BYTE_DAMAGE[damage](path.read_bytes()))
    exp = open_experiment_cached(root, "sovits", "v2Pro", cache_root=cache)
    assert len(scans) == 2 and exp == open_experiment(root, "sovits", "v2Pro")
    json.loads(path.read_text(encoding="utf-8"))  # rewritten whole
    assert open_experiment_cached(root, "sovits", "v2Pro", cache_root=cache) == exp and len(scans) == 2


@pytest.mark.parametrize("damage", sorted(SHAPE_DAMAGE))
def test_wrong_shape_is_recomputed(damage: str, synth_root, tmp_path: Path, scans) -> None:
    cache = tmp_path / "cache"
    root, path, data = _valid_entry(synth_root, cache)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    try:
        text = json.dumps(SHAPE_DAMAGE[damage](data))
    except RecursionError:  # json.dumps cannot write what json.loads cannot read; build it by hand
        text = json.dumps(data).replace('"known_names":', '"known_names":' + "[" * 50000 + "]" * 50000 + ',"x":', 1)
    path.write_text(text, encoding="utf-8")
    exp = open_experiment_cached(root, "sovits", "v2Pro", cache_root=cache)
    assert len(scans) == 2 and exp == open_experiment(root, "sovits", "v2Pro")
    assert open_experiment_cached(root, "sovits", "v2Pro", cache_root=cache) == exp and len(scans) == 2


def test_entry_that_is_a_directory_is_a_miss(synth_root, tmp_path: Path) -> None:
    root = synth_root("v2")
    cache = tmp_path / "cache"
    index_path(cache, experiment_key(root, "gpt", "v2")).mkdir(parents=True)
    assert open_experiment_cached(root, "gpt", "v2", cache_root=cache) == open_experiment(root, "gpt", "v2")


# ----------------------------------------------------------------------------- errors, writing
def test_gsv_error_propagates_and_nothing_is_cached(mutable_exp, tmp_path: Path) -> None:
    root, cache = mutable_exp("v2Pro"), tmp_path / "cache"
    shutil.rmtree(root / "7-sv_cn")
    with pytest.raises(GsvError) as fresh:
        open_experiment(root, "sovits", "v2Pro")
    with pytest.raises(GsvError) as cached:
        open_experiment_cached(root, "sovits", "v2Pro", cache_root=cache)
    assert str(cached.value) == str(fresh.value) and type(cached.value) is type(fresh.value)
    with pytest.raises(GsvError):
        open_experiment_cached(tmp_path / "nowhere", "gpt", "v2", cache_root=cache)
    with pytest.raises(GsvError):
        open_experiment_cached(root, "vocoder", "v2", cache_root=cache)
    with pytest.raises(GsvError):
        open_experiment_cached(root, "gpt", "v9", cache_root=cache)
    assert _entries(cache) == []


def test_entry_mode_honours_umask(synth_root, tmp_path: Path) -> None:
    root = synth_root("v2")
    for umask, mode in ((0o022, 0o644), (0o077, 0o600)):
        cache = tmp_path / f"cache{umask:o}"
        old = os.umask(umask)
        try:
            open_experiment_cached(root, "gpt", "v2", cache_root=cache)
        finally:
            os.umask(old)
        (entry,) = _entries(cache)
        assert entry.stat().st_mode & 0o777 == mode


def test_unwritable_cache_still_returns_the_scan(synth_root, tmp_path: Path) -> None:
    root = synth_root("v2")
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    assert open_experiment_cached(root, "gpt", "v2", cache_root=blocker) == open_experiment(root, "gpt", "v2")


def test_losing_the_rename_race_is_fine(synth_root, tmp_path: Path, monkeypatch) -> None:
    """Another writer stores the same key while this one scans: both succeed, one whole entry."""
    root, cache = synth_root("v2"), tmp_path / "cache"
    real = index_mod.open_experiment
    other: list = []

    def scan_while_another_writes(*args, **kwargs):
        monkeypatch.setattr(index_mod, "open_experiment", real)
        other.append(open_experiment_cached(root, "sovits", "v2", cache_root=cache))  # completes first
        return real(*args, **kwargs)

    monkeypatch.setattr(index_mod, "open_experiment", scan_while_another_writes)
    mine = open_experiment_cached(root, "sovits", "v2", cache_root=cache)
    assert mine == other[0] == open_experiment(root, "sovits", "v2")
    assert [p.name for p in _entries(cache)] == [f"{experiment_key(root, 'sovits', 'v2')}.json"]


def _child(root: str, cache: str, barrier, queue) -> None:
    import gsv_ray.data.index as idx

    real = idx.open_experiment
    scanned = []

    def counting(*a, **k):
        scanned.append(1)
        return real(*a, **k)

    idx.open_experiment = counting
    barrier.wait(timeout=120)
    try:
        exps = [idx.open_experiment_cached(root, stage, "v2Pro", cache_root=cache) for stage in ("sovits", "gpt")]
        queue.put(("ok", exps, len(scanned)))
    except BaseException as exc:  # noqa: BLE001 -- reported to the test
        queue.put(("error", repr(exc), len(scanned)))


@pytest.mark.slow
def test_two_processes_on_an_empty_cache(synth_root, tmp_path: Path) -> None:
    root, cache = synth_root("v2Pro"), tmp_path / "cache"
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_child, args=(str(root), str(cache), barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [r[0] for r in results] == ["ok", "ok"], results
    fresh = [open_experiment(str(root), stage, "v2Pro") for stage in ("sovits", "gpt")]
    assert results[0][1] == results[1][1] == fresh
    assert all(r[2] <= 2 for r in results)
    keys = sorted(f"{experiment_key(str(root), stage, 'v2Pro')}.json" for stage in ("sovits", "gpt"))
    assert [p.name for p in _entries(cache)] == keys  # no temp files left behind
    assert [open_experiment_cached(str(root), s, "v2Pro", cache_root=cache) for s in ("sovits", "gpt")] == fresh
