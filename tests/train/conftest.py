from __future__ import annotations

import pytest

from gsv_ray.data.synthetic import make_synthetic_experiment


@pytest.fixture(scope="session")
def synth_v2(tmp_path_factory):
    """A small learnable experiment folder in GPT-SoVITS's exact layout (v2 phones)."""
    return make_synthetic_experiment(tmp_path_factory.mktemp("synth") / "exp", version="v2", num_utterances=16)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GSV_RAY_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def gpt_init(fixtures_dir):
    return str(fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt")


@pytest.fixture
def sovits_files(fixtures_dir):
    """A v2 export with its (narrow) base G and D, as GPT-SoVITS wrote them."""
    return {
        "init": str(fixtures_dir / "SoVITS_weights_v2/gsvfix_e1_s2.pth"),
        "base_g": str(fixtures_dir / "logs/gsvfix/logs_s2_v2/G_233333333333.pth"),
        "base_d": str(fixtures_dir / "logs/gsvfix/logs_s2_v2/D_233333333333.pth"),
    }
