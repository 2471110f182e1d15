"""The code's shape: no function in ``gsv_ray/`` is longer than 60 lines unless the line above its
``def`` (above its first decorator, when it has one) is a ``# long: <reason>`` comment
(docs/design/architecture.md, "Code shape")."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_LINES = 60
REASON = re.compile(r"^\s*# long: \S")


def long_functions(package: Path, max_lines: int = MAX_LINES) -> list[str]:
    """``path:name (N lines)`` of every function (methods and nested functions too) longer than
    ``max_lines`` (from its ``def`` to its last line) without a ``# long:`` reason above it."""
    found = []
    for f in sorted(package.rglob("*.py")):
        text = f.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            above = lines[first - 2] if first >= 2 else ""
            if length > max_lines and not REASON.match(above):
                found.append(f"{f.relative_to(package).as_posix()}:{node.name} ({length} lines)")
    return found


def test_no_function_over_60_lines_without_a_reason():
    found = long_functions(REPO / "gsv_ray")
    assert not found, (
        "functions over 60 lines: shorten them, or write `# long: <reason>` on the line above "
        "their def:\n" + "\n".join(found)
    )


def test_the_check_sees_a_long_function_and_its_reason(tmp_path):
    """A 61-line function is reported; the same with a reason above it, or 60 lines, is not."""
    body = "".join(f"    x{i} = {i}\n" for i in range(59))
    long_def = f"def too_long():\n{body}    return 0\n"
    (tmp_path / "a.py").write_text(f"import os\n\n\n{long_def}")
    assert long_functions(tmp_path) == ["a.py:too_long (61 lines)"]
    (tmp_path / "a.py").write_text(f"import os\n\n\n# long: one table, read top to bottom\n{long_def}")
    assert long_functions(tmp_path) == []
    method = "    @staticmethod\n    " + long_def.replace("\n", "\n    ")
    (tmp_path / "a.py").write_text(f"class C:\n{method}")
    assert long_functions(tmp_path) == ["a.py:too_long (61 lines)"]
    (tmp_path / "a.py").write_text(f"class C:\n    # long: a reason above the decorator\n{method}")
    assert long_functions(tmp_path) == []
    (tmp_path / "a.py").write_text(long_def.replace("    x0 = 0\n", ""))
    assert long_functions(tmp_path) == []
