"""The private temp dir a command runs in (``gsv_ray.owned.private_temp_dir``) leaves nothing behind,
also when Ray writes into it after it was removed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from gsv_ray.owned import GRACE_S, OWNER, PRIVATE_TMP_PREFIX, private_temp_dir


def _aged(d: Path, seconds: float) -> Path:
    past = time.time() - seconds
    for p in [*d.rglob("*"), d]:
        os.utime(p, (past, past))
    return d


def test_leftovers_of_ended_commands_are_removed_by_the_next(tmp_path, monkeypatch):
    """Seen in /tmp after real runs: ``gsvr-*/ray/session_*`` with no lock file, recreated by a Ray
    process that wrote after the command removed its temp dir. A later command removes such a
    folder once it has been still for the grace period; a live command's folder (locked) and a new
    one (maybe between mkdir and lock) stay."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # recomputed from $TMPDIR
    late = tmp_path / f"{PRIVATE_TMP_PREFIX}late"
    (late / "ray" / "session_x").mkdir(parents=True)
    (late / "ray" / "session_x" / "prom_metrics_service_discovery.json").write_text("[]")
    _aged(late, GRACE_S + 5)
    fresh = tmp_path / f"{PRIVATE_TMP_PREFIX}fresh"
    (fresh / "ray").mkdir(parents=True)
    other = tmp_path / "someone-elses"  # not ours: never touched
    other.mkdir()
    _aged(other, GRACE_S + 5)
    live_dir = tmp_path / f"{PRIVATE_TMP_PREFIX}live"
    live_dir.mkdir()
    # a live owner in another process (flock is per open file: our own lock would not block us)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from gsv_ray.owned import Owner; "
            f"o = Owner({str(live_dir)!r}); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        _aged(live_dir, GRACE_S + 5)
        with private_temp_dir() as mine:
            assert mine.parent == tmp_path and (mine / OWNER).is_file()
        assert not late.exists()
        assert fresh.is_dir() and live_dir.is_dir() and other.is_dir()
        assert not mine.exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_rebuild_no_cache_scratch_of_a_killed_command_is_swept(sig, tmp_path, fixtures_dir):
    """Issue 24.12: ``rebuild --no-cache`` killed from outside by PID mid-run left
    ``$TMPDIR/gsv-ray-nocache-*`` (and ``torchinductor_<user>``) forever; its scratch is now in the
    command's private temp dir (owned: flock) and the next command removes it once its owner is dead
    (and it has been still for the grace period)."""
    init = fixtures_dir / "SoVITS_weights_v2" / "gsvfix_e1_s2.pth"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "gsv_ray", "rebuild", "--no-cache", str(init)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (left := [p for p in tmp_path.iterdir() if list(p.glob("*nocache*"))]):  # the scratch, mid-run
            assert proc.poll() is None and time.monotonic() < deadline, "the scratch dir never appeared"
            time.sleep(0.01)
        os.kill(proc.pid, sig)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -sig
    (scratch,) = left
    assert scratch.is_dir()  # killed mid-run: left behind
    _aged(scratch, GRACE_S + 5)  # a later command, after the grace period
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert [p.name for p in tmp_path.iterdir()] == []
