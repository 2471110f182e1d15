"""The offline ``run-<id>.wandb`` reader on real files, whole and as a killed or crashed writer
leaves them (cut short, zero-filled), and the check for two writers of one run at a time."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gsv_ray.track import Tracker
from gsv_ray.track import wandb_file as wr

BLOCK = wr.BLOCK
ROWS = 400


@pytest.fixture(scope="module")
def run_file(tmp_path_factory) -> Path:
    """A real finished offline run over several 32 KiB blocks (one record spans blocks)."""
    tmp = tmp_path_factory.mktemp("wbfile")
    mp = pytest.MonkeyPatch()
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "RANK"):
        mp.delenv(var, raising=False)
    for var, sub in (("WANDB_DATA_DIR", "d"), ("WANDB_CACHE_DIR", "c"), ("WANDB_CONFIG_DIR", "f"), ("NETRC", "n")):
        mp.setenv(var, str(tmp / "_home" / sub))
    t = Tracker().start({"blob": "x" * 40_000}, project="p", mode="offline", dir=tmp / "run", run_id="crash1")
    for s in range(ROWS):
        t.log(s, {"train/loss": float(s), "train/note": "y" * 100})
    t.finish()
    mp.undo()
    f = wr.find_run_file(tmp / "run" / "wandb")
    assert f.stat().st_size > 4 * BLOCK and wr.last_record_type(f) == "exit"
    return f


def _raw(records) -> list[bytes]:
    return [r.SerializeToString() for r in records]


def _steps(records) -> list[int]:
    return [row["_step"] for row in wr.history_rows(records)]


def _own_wandb_core() -> dict[str, str]:
    """A child's environment without ``WANDB_SERVICE``: with it the child would share this
    process's wandb-core, which refuses a second stream of one run id ("run ID ... is in use")."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {**env, "PYTHONPATH": os.pathsep.join(sys.path)}


def _damaged(src: Path, dest: Path, edit) -> Path:
    data = bytearray(src.read_bytes())
    edit(data)
    dest.write_bytes(bytes(data))
    return dest


def test_cut_short_and_zero_filled_tail_give_the_intact_prefix(run_file, tmp_path):
    """A writer killed mid-chunk leaves the file cut there; a crash can also leave a zero-filled
    tail (the file was extended but never written), from inside a chunk or from a chunk's start.
    Each reads as the records before the damage, nothing invented, no exit record: not complete."""
    whole = wr.read_records(run_file)
    cut = 2 * BLOCK + 5000  # inside block 2, inside some chunk

    def truncate(d: bytearray) -> None:
        del d[cut:]

    def zero_tail(d: bytearray) -> None:
        d[cut:] = bytes(3 * BLOCK - cut)  # zeros to the end of block 2

    def zero_blocks(d: bytearray) -> None:
        d[2 * BLOCK :] = bytes(2 * BLOCK)  # zero chunk headers from block 2's first chunk on

    for edit in (truncate, zero_tail, zero_blocks):
        f = _damaged(run_file, tmp_path / f"{edit.__name__}.wandb", edit)
        got = wr.read_records(f)
        assert 0 < len(got) < len(whole) and _raw(got) == _raw(whole)[: len(got)], edit.__name__
        assert _steps(got) == list(range(len(_steps(got)))) and 0 < len(_steps(got)) < ROWS
        assert wr.last_record_type(f) != "exit" and not wr.wait_until_closed(f, timeout=0.2)
    assert _raw(wr.read_records(tmp_path / "truncate.wandb")) == _raw(wr.read_records(tmp_path / "zero_tail.wandb"))


@pytest.mark.parametrize("start", [2 * BLOCK, 2 * BLOCK + 5000], ids=["from-a-chunk-header", "inside-a-chunk"])
def test_zero_filled_block_inside_the_file_skips_to_the_next_block(run_file, tmp_path, start):
    """Zeros inside the file (a crashed writer's unwritten pages, later pages on disk): like
    LevelDB's reader, the rest of that block is skipped, the record it cut is dropped, and reading
    resumes at the next block, so the end of the file (its exit record) is still found. (The old
    package reader stopped at the first zero chunk header: a complete file read as unfinished.)"""
    whole = wr.read_records(run_file)

    def zero_gap(d: bytearray) -> None:
        d[start : 3 * BLOCK] = bytes(3 * BLOCK - start)

    f = _damaged(run_file, tmp_path / "gap.wandb", zero_gap)
    got = wr.read_records(f)
    assert wr.last_record_type(f) == "exit" and wr.wait_until_closed(f, timeout=1)
    raw, full = _raw(got), _raw(whole)
    assert set(raw) < set(full) and raw == [r for r in full if r in set(raw)]  # a subset, in order
    steps = _steps(got)
    assert steps == sorted(steps) and steps[-1] == ROWS - 1 and 0 < len(steps) < ROWS  # a gap, then the rest


def test_bad_checksum_skips_its_block_only(run_file, tmp_path):
    whole = wr.read_records(run_file)

    def flip(d: bytearray) -> None:
        d[2 * BLOCK + 100] ^= 0xFF  # a byte inside some chunk of block 2

    got = wr.read_records(_damaged(run_file, tmp_path / "flip.wandb", flip))
    assert 0 < len(got) < len(whole) and got[-1].WhichOneof("record_type") == "exit"
    assert all(r.SerializeToString() in set(_raw(whole)) for r in got)


def test_not_a_run_file(tmp_path):
    (tmp_path / "x.wandb").write_bytes(b"not a log at all")
    with pytest.raises(wr.NotARunFile, match="x.wandb"):
        wr.read_records(tmp_path / "x.wandb")
    assert wr.last_record_type(tmp_path / "x.wandb") is None and wr.last_record_type(tmp_path / "none") is None


KILLED = """
import os, sys, time
from gsv_ray.track import Tracker
t = Tracker().start({}, project="p", mode="offline", dir=sys.argv[1], run_id="killed1")
for s in range(10):
    t.log(s, {"train/loss": float(s)})
print("logged", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_writer_killed_from_outside_leaves_a_readable_incomplete_file(tmp_path, wandb_env):
    """SIGKILL by PID after 10 logged rows: the file reads (records that reached disk, maybe none),
    it is not complete, and a row appears only if it was logged."""
    env = _own_wandb_core()
    p = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(KILLED), str(tmp_path / "run")],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout.readline().strip() == "logged"
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    time.sleep(1)  # what wandb-core (the writer's helper process) still puts on disk
    (f,) = wr.find_run_files(tmp_path / "run" / "wandb")
    got = wr.read_records(f)
    assert wr.last_record_type(f) != "exit"
    assert set(_steps(got)) <= set(range(10))


WRITER = """
import sys, time
from gsv_ray.track import Tracker
t = Tracker().start({}, project="p", mode="offline", dir=sys.argv[1], run_id=sys.argv[2], resume="allow")
print("started", flush=True)
for s in range(12):
    t.log(s, {"train/loss": float(s)})
    time.sleep(0.3)
t.finish()
"""


def _write_run(tmp: Path, run_id: str, steps: range) -> None:
    t = Tracker().start({}, project="p", mode="offline", dir=tmp, run_id=run_id, resume="allow")
    for s in steps:
        t.log(s, {"train/loss": float(s)})
    t.finish()


@pytest.mark.slow
def test_overlapping_writers_of_one_run_are_found(tmp_path, wandb_env):
    """Two writers of one run id at the same time (two processes: wandb-core refuses a second
    stream of one id in a process) are found from their files; the same run written in turn, and
    another run's file beside them, are not."""
    one_after = tmp_path / "sequential"
    _write_run(one_after, "seq1", range(0, 3))
    _write_run(one_after, "seq1", range(3, 6))
    _write_run(one_after, "other", range(0, 2))
    assert len(wr.find_run_files(one_after / "wandb")) == 3 and wr.overlapping_writers(one_after / "wandb") == []

    both = tmp_path / "concurrent"
    env = _own_wandb_core()
    cmd = [sys.executable, "-c", textwrap.dedent(WRITER), str(both / "b"), "twice1"]
    b = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)  # ~3.6 s of rows once started
    try:
        assert b.stdout.readline().strip() == "started"
        _write_run(both / "a", "twice1", range(4))
        assert b.wait(timeout=60) == 0
    finally:
        if b.poll() is None:
            b.kill()
    (pair,) = wr.overlapping_writers(both)
    assert {pair[0].path.parents[2].name, pair[1].path.parents[2].name} == {"a", "b"}
    assert pair[0].run_id == pair[1].run_id == "twice1" and pair[0].closed and pair[1].closed
    shutil.rmtree(both / "b")
    assert wr.overlapping_writers(both) == []
