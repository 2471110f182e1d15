"""One writer of a W&B run at a time on a node: the writer lock a restarted Ray worker's rank 0
takes before it opens the run is free exactly when the previous writer's process is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from gsv_ray.owned import RunBusy, WriterLock

HOLDER = """
import sys, time
from gsv_ray.owned import WriterLock
lock = WriterLock(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_the_writer_lock_waits_for_the_previous_writer_to_die(tmp_path):
    lock = tmp_path / "scratch" / ".wandb-writer.lock"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(lock)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(RunBusy) as busy:  # the old writer still lives: refused after the wait
            WriterLock(lock, wait_s=0.3)
        assert busy.value.pid == p.pid
        os.kill(p.pid, signal.SIGKILL)  # killed from outside, as Ray kills a failed group's workers
        p.wait(timeout=30)
        mine = WriterLock(lock, wait_s=10)  # free as soon as it is gone; no stale lock to remove
        assert lock.read_text().strip() == str(os.getpid())
        mine.release()
    finally:
        if p.poll() is None:
            p.kill()
