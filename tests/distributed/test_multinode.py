"""Multi-node, on one machine: a real Ray cluster of two nodes (``ray.cluster_utils.Cluster``: two
raylets, each with its own resources, cache and scratch), a 2-worker job with one worker per node
(``--placement-strategy SPREAD``), data fetched from a real S3 server on loopback, checkpoints in a
shared ``file://`` storage. The second node is killed mid-run; the job finishes from the newest
checkpoint (every rank's RNG state is in it, whichever node wrote it) with the same weights as an
uninterrupted run on the same cluster, and each node fetched the data once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.distributed.conftest import RAY_ENV
from tests.distributed.test_ray_train import assert_same_gpt_exports
from tests.support.s3server import loopback_s3

pytestmark = pytest.mark.slow  # real Ray clusters


@pytest.fixture(scope="module")
def s3():
    yield from loopback_s3()


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    from ray.cluster_utils import Cluster

    for k, v in RAY_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")  # Ray's default 2 s poll: the kill lands mid-run
    nodes = {}

    # Ray's own helpers (Ray Train's PlacementGroupCleaner asks the State API whether the controller
    # lives) find their cluster through RAY_ADDRESS, else the machine's newest Ray: with another Ray
    # running beside this test they asked that one, took our controller for dead and removed our
    # placement group. So the GCS port is chosen here and every node is told its own address.
    import ray

    from gsv_ray.distributed.cluster import free_port, own_dashboard_port

    port = free_port()
    address = f"{ray.util.get_node_ip_address()}:{port}"

    def node_env(name: str) -> dict[str, str]:
        return {
            "GSV_RAY_CACHE": str(tmp_path / name / "cache"),
            "GSV_RAY_SCRATCH": str(tmp_path / name / "scratch"),
            "RAY_ADDRESS": address,
        }

    c = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "num_cpus": 2,
            "gcs_server_port": port,
            "env_vars": node_env("head"),
            "include_dashboard": False,
            "dashboard_port": own_dashboard_port(),  # its State API never asks another Ray's dashboard
        },
    )
    assert c.address == address, (c.address, address)
    nodes["second"] = c.add_node(num_cpus=1, env_vars=node_env("second"))
    c.wait_for_nodes()
    try:
        yield c, nodes
    finally:
        c.shutdown()


def _workers_of(node_pid_root: int) -> list[int]:
    """Ray Train worker processes started by one node's raylet (its descendants in /proc)."""
    children: dict[int, list[int]] = {}
    titles: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                titles[int(d.name)] = (d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    found, todo = [], [node_pid_root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            todo.append(child)
            if titles.get(child, "").startswith("ray::RayTrainWorker"):
                found.append(child)
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds each node's workers through /proc (Linux)")
def test_two_nodes_survive_losing_one(cluster, s3, fixtures_dir, synth, tmp_path):
    c, nodes = cluster
    fs = s3["fs"]
    for p in Path(synth).rglob("*"):
        if p.is_file():
            with fs.open_output_stream(f"voices/nodes/exp/{p.relative_to(synth).as_posix()}") as f:
                f.write(p.read_bytes())
    storage = (tmp_path / "shared-storage").as_uri()

    def args(out: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gsv_ray",
            "train",
            "--init",
            str(fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt"),
            "--data",
            "s3://voices/nodes/exp",
            "-o",
            str(out),
            "--storage",
            storage,
            "--address",
            c.address,
            "--workers",
            "2",
            "--placement-strategy",
            "SPREAD",
            "--max-failures",
            "2",
            "--max-steps",
            "40",
            "--batch-size",
            "2",
            "--save-every",
            "10",
            "--keep-last",
            "5",
            "--val-every",
            "1000",
            "--wandb-mode",
            "disabled",
            "--seed",
            "3",
        ]

    env = {**os.environ, "GSV_RAY_CACHE": str(tmp_path / "driver-cache")}
    killed = tmp_path / "killed"
    log = open(tmp_path / "killed.log", "w")
    p = subprocess.Popen(args(killed), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    second = nodes["second"]
    try:
        store = Path(storage[len("file://") :])
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None and not list(store.glob("*/step_00000010")):
            time.sleep(0.05)
        text = open(tmp_path / "killed.log").read()
        assert list(store.glob("*/step_00000010")), text[-3000:]
        assert len(_workers_of(second.all_processes["raylet"][0].process.pid)) == 1  # one worker per node
        c.remove_node(second, allow_graceful=False)  # the machine goes away: raylet and its workers die
        assert p.wait(timeout=400) == 0, open(tmp_path / "killed.log").read()[-3000:]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    text = open(tmp_path / "killed.log").read()
    assert "restart: continuing from step_" in text, text[-3000:]
    assert "no RNG state" not in text  # every rank's RNG came back from the checkpoint, not from its node
    from gsv_ray.train import state as state_io

    ckpts = sorted(store.glob("*/step_*"))  # written on two nodes (step 10), then on one
    assert [d.name[5:] for d in ckpts] == ["00000010", "00000020", "00000030", "00000040"]
    for d in ckpts:  # every rank's RNG state is in every checkpoint, listed in its manifest
        assert {f.name for f in d.glob("rng_*.json")} == {"rng_0.json", "rng_1.json"}, d
        assert state_io.problem(d) is None, d
    # each node fetched the data once (into its own cache); the restarted workers reused the head's copy
    for node in ("head", "second"):
        assert len(list((tmp_path / node / "cache" / "fetch").iterdir())) == 1, node
    assert s3["log"].gets("voices/nodes/exp/2-name2text.txt") == 2
    # no node scratch outlived the run
    assert not any((tmp_path / "head" / "scratch").glob("gsv-*"))

    # the uninterrupted run: no kill to time, so Ray Train's controller may poll its workers often (its
    # driver passes the setting to it) and the run ends at once, not a few 2 s polls after its last step
    fast = {**env, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": RAY_ENV["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]}
    r = subprocess.run(args(tmp_path / "clean"), env=fast, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert_same_gpt_exports(tmp_path / "clean", killed)
