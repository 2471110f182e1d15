"""Shared test fixtures.

Reference data (the GPT-SoVITS compatibility contract) lives outside the repo, in
``../shared/reference/gpt_sovits`` next to the checkout; ``GSV_REFERENCE_DIR`` overrides it.
Where it is absent tests skip with a reason, except under ``CI=true``, where its absence fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def find_reference_dir() -> Path | None:
    env = os.environ.get("GSV_REFERENCE_DIR")
    candidates = [Path(env)] if env else [REPO_ROOT.parent / "shared" / "reference" / "gpt_sovits"]
    for c in candidates:
        if (c / "FORMATS.md").is_file():
            return c
    return None


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    ref = find_reference_dir()
    if ref is None:
        msg = (
            "GPT-SoVITS reference data not found (set GSV_REFERENCE_DIR or place it at "
            f"{REPO_ROOT.parent / 'shared' / 'reference' / 'gpt_sovits'})"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " -- required when CI=true")
        pytest.skip(msg)
    return ref


@pytest.fixture(scope="session")
def fixtures_dir(reference_dir: Path) -> Path:
    return reference_dir / "fixtures"


@pytest.fixture(scope="session")
def schemas_dir(reference_dir: Path) -> Path:
    return reference_dir / "schemas"


@pytest.fixture(scope="session")
def goldens_dir(reference_dir: Path) -> Path:
    return reference_dir / "goldens"


@pytest.fixture(scope="session")
def schema_files(schemas_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Full-size files of every kind and version, generated from the schemas on demand."""
    import shutil

    from tests.support.schemafiles import SchemaFiles

    root = tmp_path_factory.mktemp("schema_files")
    yield SchemaFiles(schemas_dir, root)
    shutil.rmtree(root, ignore_errors=True)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """Run the installed ``gsv-ray`` entry point as a user would (a real subprocess)."""
    import subprocess
    import sys

    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gsv_ray", *args], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=timeout,
    )
