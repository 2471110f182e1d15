"""The tree is formatted and lint-clean as ruff sees it (``[tool.ruff]`` in pyproject.toml: line
length 120; pyflakes, pycodestyle, import order): what ``.ci/run`` checks before the tests, here so a
contributor sees it in pytest too (docs/design/tests.md, "Format and lint")."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def _ruff(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    """``ruff ARGS`` from this interpreter's environment (the test extra pins it), writing no cache."""
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_the_tree_is_formatted():
    r = _ruff("format", "--check", ".")
    assert r.returncode == 0, f"not formatted: run `ruff format .`\n{r.stdout}{r.stderr}"


def test_the_tree_is_lint_clean():
    r = _ruff("check", ".")
    assert r.returncode == 0, f"lint errors: fix them (`ruff check --fix .` fixes some)\n{r.stdout}{r.stderr}"


def test_the_checks_use_the_projects_settings_and_see_a_bad_file(tmp_path):
    """On a folder with the project's pyproject.toml: a 121-column line and an unused import are
    errors, a hand-formatted call is unformatted; the same file written as ruff wants passes both."""
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path)
    good = 'import os\n\nprint(os.sep, "' + "x" * 100 + '")\n'
    (tmp_path / "m.py").write_text(good)
    assert _ruff("format", "--check", ".", cwd=tmp_path).returncode == 0
    assert _ruff("check", ".", cwd=tmp_path).returncode == 0
    (tmp_path / "m.py").write_text("import os\nimport sys\n\nprint( os.sep )\n")
    fmt = _ruff("format", "--check", ".", cwd=tmp_path)
    assert fmt.returncode == 1 and "m.py" in fmt.stdout, fmt.stdout + fmt.stderr
    (tmp_path / "m.py").write_text('import os\nimport sys\n\nprint(os.sep, "' + "x" * 104 + '")\n')
    lint = _ruff("check", ".", cwd=tmp_path)
    assert lint.returncode == 1 and "F401" in lint.stdout and "E501" in lint.stdout, lint.stdout + lint.stderr
