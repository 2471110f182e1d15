"""Keep W&B hermetic: no key, no home-dir files, nothing inherited from the shell's WANDB_* vars."""

from __future__ import annotations

import pytest

SOVITS_V2 = "SoVITS_weights_v2/gsvfix_e1_s2.pth"


@pytest.fixture(autouse=True)
def wandb_env(tmp_path, monkeypatch):
    for var in (
        "WANDB_API_KEY",
        "WANDB_IDENTITY_TOKEN_FILE",
        "WANDB_MODE",
        "WANDB_DIR",
        "WANDB_BASE_URL",
        "WANDB_PROJECT",
        "WANDB_ENTITY",
        "WANDB_RUN_ID",
        "WANDB_RESUME",
        "WANDB_RUN_GROUP",
        "WANDB_JOB_TYPE",
        "WANDB_NAME",
        "RANK",
    ):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "_wbhome"
    monkeypatch.setenv("NETRC", str(home / "netrc"))  # absent file: no credentials
    monkeypatch.setenv("WANDB_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("WANDB_ARTIFACT_DIR", str(home / "artifacts"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return home


@pytest.fixture(scope="session")
def sovits_report(fixtures_dir, tmp_path_factory):
    """A real rebuild report: the v2 SoVITS export fixture, rebuilt for training."""
    from gsv_ray.rebuild import rebuild

    return rebuild(fixtures_dir / SOVITS_V2, cache_root=tmp_path_factory.mktemp("rebuild-cache")).report
