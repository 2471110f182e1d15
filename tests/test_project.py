"""Project wiring: the console script, and CI running exactly README's test command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from gsv_ray import __version__
from tests.conftest import REPO_ROOT, run_cli


def test_ci_runs_the_readme_test_command():
    script = (REPO_ROOT / ".ci" / "run").read_text()
    awk = script.split("TEST_CMD=$(", 1)[1].split(" README.md)", 1)[0]
    out = subprocess.run(["bash", "-c", f"{awk} README.md"], cwd=REPO_ROOT, capture_output=True, text=True)
    cmd = out.stdout.strip()
    assert cmd.startswith("python -m pytest"), cmd
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"```bash\n{cmd}\n```" in readme
    assert 'eval "$TEST_CMD"' in script and "torch==2.13.0" in script


def test_ray_tests_list_names_tests_that_exist():
    """Every entry of RAY_TESTS (the tests xdist runs as one unit) names a test file, and a test in it
    where it names one: a renamed test would otherwise leave the list and run beside the Ray tests."""
    import re

    from tests.conftest import RAY_TESTS

    for entry in RAY_TESTS:
        path, _, name = entry.partition("::")
        target = REPO_ROOT / path
        assert target.exists(), entry
        if name:
            assert re.search(rf"^def {re.escape(name)}", target.read_text(), re.MULTILINE), entry


def _ci_lint_step() -> str:
    """The part of .ci/run that checks format and lint (between its ``# lint`` markers)."""
    script = (REPO_ROOT / ".ci" / "run").read_text()
    assert "# lint-start\n" in script and "# lint-end\n" in script, ".ci/run runs no format/lint step"
    before, rest = script.split("# lint-start\n", 1)
    step, after = rest.split("# lint-end\n", 1)
    assert "pip install" in before and 'eval "$TEST_CMD"' in after, "after installing, before the tests"
    return step


def test_ci_fails_before_the_tests_on_unformatted_or_unclean_code(tmp_path):
    """.ci/run's format/lint step, run with this environment's Python on a folder with the project's
    settings: a clean file passes; an unformatted one, then an unused import, fail it with one line
    that says what to run."""
    step = _ci_lint_step()
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path)
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"}

    def run(source: str) -> subprocess.CompletedProcess:
        (tmp_path / "m.py").write_text(source)
        script = f"set -euo pipefail\n{step}"
        return subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )

    ok = run("import os\n\nprint(os.sep)\n")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    fmt = run("import os\n\nprint( os.sep )\n")
    assert fmt.returncode == 1 and "run 'ruff format .'" in fmt.stderr, fmt.stdout + fmt.stderr
    lint = run("import os\nimport sys\n\nprint(os.sep)\n")
    assert lint.returncode == 1 and "F401" in lint.stdout and "ruff check" in lint.stderr, lint.stdout + lint.stderr


def test_console_script_and_version():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"gsv-ray {__version__}"
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert f'version = "{__version__}"' in pyproject
    assert 'gsv-ray = "gsv_ray.cli:main"' in pyproject


def test_help_lists_inspect():
    r = run_cli("--help")
    assert r.returncode == 0 and "inspect" in r.stdout
    # the CLI stays thin: building it for --help and for the main commands imports neither torch nor
    # Ray (semantic's and verify's options live beside their torch code; only those commands load it)
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from gsv_ray.cli import build_parser; "
            "[build_parser(c) for c in ('', 'inspect', 'rebuild', 'train', 'tune', 'demo')]; "
            "print(sorted(m for m in ('torch', 'ray', 'accelerate', 'wandb') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr


def _pytest_one(env_extra: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GSV_REFERENCE_DIR")}
    env.update(env_extra)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/io/test_fixtures.py::test_small_pk_v2_export_is_not_called_v1",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_reference_data_is_in_the_repository_and_its_absence_fails(tmp_path):
    """The contract data ships with the tests (a fresh clone checks everything); pointed elsewhere
    at nothing, the tests fail (locally and in CI alike), they never skip."""
    bundled = _pytest_one({})
    assert bundled.returncode == 0 and "1 passed" in bundled.stdout and "skipped" not in bundled.stdout, bundled.stdout
    absent = _pytest_one({"GSV_REFERENCE_DIR": str(tmp_path / "nowhere")})
    assert absent.returncode != 0 and "skipped" not in absent.stdout, absent.stdout
