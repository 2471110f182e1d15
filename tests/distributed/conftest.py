"""Real Ray for the distributed tests: one local instance per module (the settings
docs/design/stack-notes.md describes)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from gsv_ray.data.synthetic import make_synthetic_experiment
from tests.support.faults import ENV, inject

REPO = Path(__file__).resolve().parents[2]

RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.01"}


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    import ray

    from gsv_ray.distributed.cluster import free_port, own_dashboard_port

    for k, v in RAY_ENV.items():
        os.environ[k] = v
    # as the package's own local Ray: its GCS port and dashboard port chosen here and RAY_ADDRESS in its
    # processes, so Ray's helpers (Ray Train's PlacementGroupCleaner, the State API) ask this cluster, never
    # another Ray on the machine (docs/design/stack-notes.md). Not in this process's environment: the CLI
    # subprocesses the tests start must start their own Ray, not join this one.
    gcs_port = free_port()
    address = f"{ray.util.get_node_ip_address()}:{gcs_port}"
    os.environ["GSV_RAY_SCRATCH"] = str(tmp_path_factory.mktemp("scratch"))
    faults = tmp_path_factory.mktemp("faults") / "faults.json"
    # every worker can fail on request (tests/support/faults.py: `inject_fault`), without a switch in the package
    env = {
        **RAY_ENV,
        "GSV_RAY_SCRATCH": os.environ["GSV_RAY_SCRATCH"],
        ENV: str(faults),
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        "RAY_ADDRESS": address,
    }
    os.environ["RAY_GCS_SERVER_PORT"] = str(gcs_port)  # read by the head start only
    try:
        ray.init(
            address="local",  # our own, whatever other Ray the machine runs (or ran: a stale record)
            num_cpus=4,
            object_store_memory=256 * 2**20,
            include_dashboard=False,
            dashboard_port=own_dashboard_port(),
            runtime_env={"env_vars": env, "worker_process_setup_hook": "tests.support.faults.install"},
        )
    finally:
        del os.environ["RAY_GCS_SERVER_PORT"]
    ray.faults_file = faults  # type: ignore[attr-defined]
    yield ray
    ray.shutdown()


@pytest.fixture
def inject_fault(ray_local):
    """``inject_fault(output_dir, kind="raise"|"exit", step=N, rank=R)``: that run's worker fails once."""
    return functools.partial(inject, ray_local.faults_file)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_experiment(tmp_path_factory.mktemp("synth") / "exp", version="v2", num_utterances=16)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GSV_RAY_CACHE", str(tmp_path / "cache"))
