"""Synthetic experiment folders shared by the data-layer tests (generated once per session)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest

from gsv_ray.data.synthetic import make_synthetic_experiment
from tests.support.threads import torch_threads

N_UTTS = 12


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``synth_root(version)`` -> a read-only-by-convention synthetic folder for that version."""
    base = tmp_path_factory.mktemp("synth")
    made: dict[str, Path] = {}

    def get(version: str) -> Path:
        if version not in made:
            made[version] = make_synthetic_experiment(base / version, version=version, num_utterances=N_UTTS, seed=0)
        return made[version]

    return get


@pytest.fixture
def mutable_exp(synth_root: Callable[[str], Path], tmp_path: Path) -> Callable[[str], Path]:
    """``mutable_exp(version)`` -> a private copy a test may damage."""

    def get(version: str = "v2") -> Path:
        dst = tmp_path / f"exp_{version}"
        shutil.copytree(synth_root(version), dst)
        return dst

    return get


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These models are tiny: one intra-op thread is faster, and steady when the CPU is shared."""
    with torch_threads(1):
        yield
