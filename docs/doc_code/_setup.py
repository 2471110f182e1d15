"""Setup shared by the doc_code files (never shown in the docs): each file runs its snippet in a fresh
temporary folder that holds, under the names the snippet uses, small or freshly made files of the
real formats, so a test can run every snippet (``tests/test_docs.py``)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "reference" / "gpt_sovits" / "fixtures"


def workdir() -> Path:
    """Change into a new temporary folder, removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix="gsv-doc-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.chdir(path)
    return path


def place(name: str, source: Path) -> Path:
    """Make ``name`` (relative to the working folder) point at ``source``."""
    target = Path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source)
    return target
