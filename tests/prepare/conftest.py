"""Fixtures of the ``gsv-ray prepare`` tests: a cache of their own and a Ray without auth (as the Ray tests)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def gsv_cache(tmp_path_factory) -> Path:
    """The module's gsv-ray cache (the jieba dictionary, the rebuild cache)."""
    return tmp_path_factory.mktemp("gsv_cache")


@pytest.fixture(autouse=True)
def _cache_env(gsv_cache, monkeypatch):
    """Every test here uses its module's cache (nothing in the user's) and a local Ray without auth."""
    monkeypatch.setenv("GSV_RAY_CACHE", str(gsv_cache))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
