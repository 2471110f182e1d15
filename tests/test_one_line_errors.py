"""Issue #24 item 10: each of these was a traceback or a wrong / empty reason; now one line naming the
place and the fix (exit 2). The real CLI (in-process: its output and exit status are the point), real
files, a real full tmpfs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli

SOVITS = "SoVITS_weights_v2/gsvfix_e1_s2.pth"
GPT = "GPT_weights_v2/gsvfix-e1.ckpt"


def _one_line(r, *needles: str, code: int = 2) -> str:
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gsv-ray: error: "), r.stderr
    assert "Traceback" not in r.stderr and "Fix:" in lines[0], lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- (a) GSV_RAY_CACHE not a usable directory
@pytest.mark.parametrize("where", ["a file", "/proc/nope"])
def test_cache_env_that_is_not_a_directory(where, fixtures_dir, tmp_path):
    cache = tmp_path / "cache-file" if where == "a file" else Path(where)
    if where == "a file":
        cache.write_text("not a folder")
    r = run_cli("rebuild", str(fixtures_dir / SOVITS), env={"GSV_RAY_CACHE": str(cache)}, in_process=True)
    _one_line(r, str(cache), "GSV_RAY_CACHE")
    r = run_cli("rebuild", str(fixtures_dir / SOVITS), "--cache", str(cache), in_process=True)
    _one_line(r, str(cache), "--cache")


# ---------------------------------------------------------------- (b) demo --dir that is a file
def test_demo_dir_that_is_a_file(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    r = run_cli("demo", "--dir", str(f), env={"GSV_RAY_CACHE": str(tmp_path / "cache")}, in_process=True)
    _one_line(r, str(f), "--dir")
    assert f.read_text() == "mine"


# ---------------------------------------------------------------- (c) symlink loops
def test_symlink_loop_is_named_as_such(tmp_path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.symlink_to(b)
    b.symlink_to(a)
    env = {"GSV_RAY_CACHE": str(tmp_path / "cache")}
    for args in (("inspect", str(a)), ("rebuild", str(a))):
        _one_line(run_cli(*args, env=env, in_process=True), str(a), "symbolic link loop")
    loop_dir = tmp_path / "exp"
    loop_dir.symlink_to(loop_dir)
    r = run_cli("semantic", "--data", str(loop_dir), "--model", str(a), env=env, in_process=True)
    _one_line(r, str(loop_dir), "symbolic link loop")


def test_symlink_loop_as_the_data_folder(fixtures_dir, tmp_path):
    loop_dir = tmp_path / "exp"
    loop_dir.symlink_to(loop_dir)
    r = run_cli(
        "verify",
        str(fixtures_dir / SOVITS),
        "--data",
        str(loop_dir),
        env={"GSV_RAY_CACHE": str(tmp_path / "cache")},
        in_process=True,
    )
    _one_line(r, str(loop_dir), "symbolic link loop")


# ---------------------------------------------------------------- (e) a full disk names the path written
@pytest.fixture
def full_tmpfs(tmp_path):
    """A real 2 MiB tmpfs (root can mount one here); skipped where mounting is not permitted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_full_disk_names_the_output_not_a_temp_name(full_tmpfs, fixtures_dir, tmp_path):
    out = full_tmpfs / "out"
    r = run_cli(
        "rebuild",
        str(fixtures_dir / SOVITS),
        "-o",
        str(out),
        env={"GSV_RAY_CACHE": str(tmp_path / "c")},
        in_process=True,
    )
    line = _one_line(r, f"{out}:", "no space left")
    assert f"{full_tmpfs}/." not in line, line  # never the hidden temp folder's name
    assert os.listdir(full_tmpfs) == []  # the temp folder is gone


def test_full_disk_in_the_cache_names_the_cache(full_tmpfs, fixtures_dir):
    r = run_cli(
        "rebuild", str(fixtures_dir / SOVITS), env={"GSV_RAY_CACHE": str(full_tmpfs / "cache")}, in_process=True
    )
    line = _one_line(r, str(full_tmpfs / "cache"), "no space left")
    assert "/." not in line.split(":")[1], line


# ---------------------------------------------------------------- (g) inspect of several files, one bad
def test_inspect_good_and_bad_shows_the_good_table(fixtures_dir, tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    good = fixtures_dir / GPT
    r = run_cli("inspect", str(good), str(empty), in_process=True)
    _one_line(r, str(empty), "empty")
    assert "kind" in r.stdout and "sha256" in r.stdout and "gpt" in r.stdout  # the good file's table is shown
    r = run_cli("inspect", "--json", str(good), str(empty), in_process=True)
    _one_line(r, str(empty), "empty")
    import json

    listed = json.loads(r.stdout)
    assert [d.get("path") for d in listed] == [str(good), str(empty)]
    assert "sha256" in listed[0] and "empty" in listed[1]["error"]


# ---------------------------------------------------------------- the trimming helpers (issue #27 item 7)
def test_line_trimming_helpers_have_one_home():
    """``errors.clip`` fits a line to a width; ``first_line`` is an error's first line, ``folded`` its
    whole message on one line; both fall back to the exception's type name when it says nothing."""
    from gsv_ray.errors import clip, first_line, folded

    assert clip("abcdef", 6) == "abcdef" and clip("abcdefg", 6) == "abcde…" and clip("abcdefg", 6, "...") == "abc..."
    assert first_line(ValueError("\n  first\nsecond")) == "first" and first_line(KeyError()) == "KeyError"
    assert first_line(None) == "" and first_line("x" * 200, 120) == "x" * 117 + "..."
    assert (
        folded(OSError("a\n  b")) == "a b" and folded(OSError()) == "OSError" and len(folded(OSError("y" * 999))) == 240
    )
