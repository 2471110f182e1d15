"""The package's dependency order, checked: import-linter's contract in pyproject.toml (every
import counts, the ones inside functions too) and one deliberate break to show it is enforced."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(lint), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": str(lint.parent), "PYTHONPATH": str(cwd)},
    )


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


def _import_cycles(package_dir: Path) -> list[list[str]]:
    """Strongly connected groups (more than one module) of the package's import graph, every import
    counted (inside functions and ``TYPE_CHECKING`` blocks too), read from the AST."""
    import ast

    mods = {}
    for f in package_dir.rglob("*.py"):
        parts = f.relative_to(package_dir.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                if isinstance(node, ast.ImportFrom) and node.module
                else []
            )
            for t in names:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m and not m.startswith(t + "."):  # a module's own package is not an edge
                    graph[m].add(t)
    cycles, seen = [], set()
    for start in sorted(graph):  # each module's group: what it reaches that also reaches it back
        if start in seen:
            continue
        reach = _reachable(graph, start)
        group = sorted(m for m in reach if start in _reachable(graph, m))
        seen.update(group)
        if len(group) > 1:
            cycles.append(group)
    return cycles


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    out, todo = {start}, [start]
    while todo:
        for nxt in graph[todo.pop()] - out:
            out.add(nxt)
            todo.append(nxt)
    return out


def test_no_import_circle_in_the_package():
    """Issue #27 item 7: ``rebuild/schemas.py`` (the runtime lookup) and ``rebuild/targets.py`` imported
    each other because the generator lived in the lookup; it lives in ``rebuild/schemagen.py`` now."""
    assert _import_cycles(REPO / "gsv_ray") == []


def _distributed_imports(package_dir: Path) -> list[tuple[str, int, str | None, list[str]]]:
    """(file, line, module, names) of every import of ``gsv_ray.distributed`` (or one of its modules)
    under ``package_dir``, inside functions too."""
    import ast

    found = []
    for f in sorted(package_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gsv_ray.distributed"):
                found.append((f.name, node.lineno, node.module, [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                found += [
                    (f.name, node.lineno, a.name, []) for a in node.names if a.name.startswith("gsv_ray.distributed")
                ]
    return found


def _outside_public_api(package_dir: Path) -> list[str]:
    import gsv_ray.distributed as distributed

    public = set(distributed.__all__)
    return [
        f"{f}:{line}: {module} {names}"
        for f, line, module, names in _distributed_imports(package_dir)
        if module != "gsv_ray.distributed" or not names or not set(names) <= public
    ]


def test_tune_uses_only_the_public_names_of_distributed(tmp_path):
    """Issue #27 item 2: ``tune/`` imports from ``distributed/`` only names in the ``__all__`` of
    ``gsv_ray/distributed/__init__.py``, and only from that package (not its modules); each of those
    names resolves. A deliberate break (an internal imported from a module) is caught."""
    import gsv_ray.distributed as distributed

    assert _outside_public_api(REPO / "gsv_ray" / "tune") == []
    assert _distributed_imports(REPO / "gsv_ray" / "tune")  # the check sees tune's imports at all
    for name in distributed.__all__:
        assert getattr(distributed, name) is not None, name
    shutil.copytree(REPO / "gsv_ray" / "tune", tmp_path / "tune", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "tune" / "search.py", "a") as f:
        f.write("\n\ndef _internal():\n    from gsv_ray.distributed.worker import _restore\n\n    return _restore\n")
    assert [v for v in _outside_public_api(tmp_path / "tune") if "distributed.worker" in v]


#: the packages below ``distributed/``: they run without Ray (local training, rebuild, data, files)
RAY_FREE = ("io", "models", "data", "prepare", "rebuild", "track", "train")
_RAY_WORD = re.compile(r"(^|_)ray($|_)", re.IGNORECASE)


def _ray_named(package: Path) -> list[str]:
    """``path:name`` of every top-level function, class or constant under ``package`` named after Ray."""
    found = []
    for f in sorted(package.rglob("*.py")):
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            else:
                continue
            found += [f"{f.relative_to(package.parent).as_posix()}:{n}" for n in names if _RAY_WORD.search(n)]
    return found


def test_the_ray_free_packages_name_nothing_after_ray(tmp_path):
    """What only a Ray launcher knows lives in ``distributed/``: the packages below it hold
    launcher-neutral names (rundir's ``LAUNCH_RECORD``, not a ``RAY_...`` constant)."""
    assert [hit for p in RAY_FREE for hit in _ray_named(REPO / "gsv_ray" / p)] == []
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "x.py").write_text('RAY_THING = "a"\narray_size = 1\n\n\ndef ray_helper():\n    pass\n')
    assert _ray_named(tmp_path / "train") == ["train/x.py:RAY_THING", "train/x.py:ray_helper"]
