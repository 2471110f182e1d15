"""Real Ray for the distributed tests: one local instance per module (STACK.md settings)."""

from __future__ import annotations

import os

import pytest

from gsv_ray.data.synthetic import make_synthetic_experiment

RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.01"}


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    import ray

    for k, v in RAY_ENV.items():
        os.environ[k] = v
    os.environ["GSV_RAY_SCRATCH"] = str(tmp_path_factory.mktemp("scratch"))
    ray.init(address="local",  # our own, whatever other Ray the machine runs (or ran: a stale record)
             num_cpus=4, object_store_memory=256 * 2**20, include_dashboard=False,
             runtime_env={"env_vars": {**RAY_ENV, "GSV_RAY_SCRATCH": os.environ["GSV_RAY_SCRATCH"]}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_experiment(tmp_path_factory.mktemp("synth") / "exp", version="v2", num_utterances=16)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GSV_RAY_CACHE", str(tmp_path / "cache"))
