"""The package's dependency order, checked: import-linter's contract in pyproject.toml (every
import counts, the ones inside functions too) and one deliberate break to show it is enforced."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(lint), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PATH": str(lint.parent), "PYTHONPATH": str(cwd)})


def test_layers_contract_is_kept():
    r = _lint(REPO)
    assert r.returncode == 0 and "1 kept, 0 broken" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


def test_an_upward_import_inside_a_function_breaks_the_contract(tmp_path):
    """``rebuild`` importing from ``train`` (the cycle `verify` used to make) is caught, although
    the import is lazy; so is a module missing from the layers."""
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copy(REPO / "pyproject.toml", copy)
    shutil.copytree(REPO / "gsv_ray", copy / "gsv_ray", ignore=shutil.ignore_patterns("__pycache__", "*.json"))
    with open(copy / "gsv_ray" / "rebuild" / "core.py", "a") as f:
        f.write("\n\ndef _upward():\n    from gsv_ray.train.loop import fixed_batches\n\n    return fixed_batches\n")
    r = _lint(copy)
    assert r.returncode != 0 and "gsv_ray.rebuild.core -> gsv_ray.train.loop" in r.stdout, r.stdout[-3000:]
    (copy / "gsv_ray" / "rebuild" / "core.py").write_text((REPO / "gsv_ray" / "rebuild" / "core.py").read_text())
    (copy / "gsv_ray" / "newthing.py").write_text("X = 1\n")
    r = _lint(copy)
    assert r.returncode != 0 and "newthing" in r.stdout, r.stdout[-3000:]
