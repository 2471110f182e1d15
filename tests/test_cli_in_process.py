"""The in-process CLI runner the tests use (``run_cli(..., in_process=True)``) answers as the real
subprocess does, and leaves this process as it found it."""

from __future__ import annotations

import os
import sys

from tests.conftest import run_cli


def test_same_status_and_output_as_the_subprocess(tmp_path):
    missing = str(tmp_path / "nope.pth")
    for args in (("inspect", missing), ("train", "--lr", "1")):  # a GsvError; argparse's SystemExit
        sub, inproc = run_cli(*args), run_cli(*args, in_process=True)
        assert (inproc.returncode, inproc.stdout, inproc.stderr) == (sub.returncode, sub.stdout, sub.stderr), args


def test_environment_directory_and_argv_are_restored(tmp_path, monkeypatch):
    monkeypatch.setenv("GSV_TEST_KEEP", "1")
    env, cwd, argv = dict(os.environ), os.getcwd(), list(sys.argv)
    (tmp_path / "empty.pth").write_bytes(b"")
    r = run_cli("inspect", "empty.pth", cwd=tmp_path, env={"GSV_TEST_ADDED": "x"}, in_process=True)
    assert r.returncode == 2 and "empty" in r.stderr and "No such file" not in r.stderr, r.stderr  # read in cwd
    from tests.support.cli import run_cli_in_process

    r = run_cli_in_process("inspect", "nope.pth", env={"PATH": os.environ["PATH"]}, replace_env=True)
    assert r.returncode == 2
    assert dict(os.environ) == env and os.getcwd() == cwd and sys.argv == argv
