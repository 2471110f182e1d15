"""Our local Ray is ours: with another Ray started by `ray start --head` on the machine (the newest
cluster Ray's auto-detection finds; its dashboard on Ray's default port), `train --workers 2` without
--address neither joins it nor fails because of it. Before: `ray.init(num_cpus=...)` attached to the
other cluster and failed ("When connecting to an existing cluster, num_cpus and num_gpus must not be provided"), and Ray
Train's helper actors queried the other cluster ("Found multiple active Ray instances")."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.distributed.conftest import RAY_ENV

pytestmark = pytest.mark.slow  # a real Ray cluster


@pytest.fixture
def other_ray(tmp_path):
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    env = {**os.environ, **RAY_ENV}
    env.pop("RAY_ADDRESS", None)
    record = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"  # Ray's "newest cluster" note
    before = record.read_bytes() if record.is_file() else None
    log = open(tmp_path / "other-ray.log", "w")
    # a user's own cluster, started the usual way (default temp dir: it becomes Ray's "newest cluster")
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            "--port",
            str(port),
            "--num-cpus",
            "1",
            "--dashboard-port",  # its dashboard (on by default) where a dashboard-less Ray's State API looks
            "8265",
            "--block",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    time.sleep(3)  # the raylet registers after the GCS answers
    try:
        yield port
    finally:  # stop that cluster only (never `ray stop`: it stops every Ray on the machine)
        os.killpg(p.pid, signal.SIGKILL)  # its own session: that cluster's processes only
        p.wait(timeout=60)
        # `ray stop` would remove its note (and every Ray on the machine); we put back what was there,
        # else a plain `ray.init()` elsewhere tries to join the cluster we stopped
        if before is None:
            record.unlink(missing_ok=True)
        else:
            record.write_bytes(before)


def test_train_workers_starts_its_own_ray_beside_another(other_ray, fixtures_dir, synth, tmp_path):
    env = {**os.environ, **RAY_ENV, "GSV_RAY_SCRATCH": str(tmp_path / "scratch"), "GSV_RAY_CACHE": str(tmp_path / "c")}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gsv_ray",
            "train",
            "--init",
            str(fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt"),
            "--data",
            str(synth),
            "-o",
            str(tmp_path / "run"),
            "--max-steps",
            "4",
            "--batch-size",
            "2",
            "--workers",
            "2",
            "--wandb-mode",
            "disabled",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "Connecting to existing Ray cluster" not in out and "multiple active Ray instances" not in out, out[-3000:]
    assert str(other_ray) not in out
    # Ray Train's PlacementGroupCleaner asked the other cluster's dashboard about our controller, did not
    # find it and judged it dead (it then exits, or removes our workers' placement group mid-run)
    log = (tmp_path / "run" / "logs" / "gsv-ray.log").read_text()
    assert "Failed to register placement group with cleaner" not in log, log[-3000:]
    assert "Detected that the Ray Train controller actor" not in log, log[-3000:]
    assert list((tmp_path / "run" / "GPT_weights_v2").glob("*.ckpt"))
