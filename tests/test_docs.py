"""The docs hold what they show: the CLI reference is what the option declarations generate, every
Python snippet is a file under docs/doc_code/ that runs, every relative link reaches a file (and
heading) of the repository, and nothing a user reads points outside the repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DOC_CODE = REPO_ROOT / "docs" / "doc_code"
SNIPPET = re.compile(r"# __doc_start__\n(.*?)# __doc_end__\n", re.S)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _pages() -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]


def test_cli_reference_is_current():
    from gsv_ray.docs_cli import REFERENCE, REGENERATE, render

    committed = (REPO_ROOT / REFERENCE).read_text(encoding="utf-8")
    assert committed == render(), f"{REFERENCE} is stale: regenerate it with `{REGENERATE}` (from the repository root)"


def test_cli_reference_check_fails_on_a_stale_file(tmp_path):
    """What a contributor runs: ``--check`` exits 1 naming the command; writing makes it pass."""
    from gsv_ray.docs_cli import main

    (tmp_path / "docs" / "reference").mkdir(parents=True)
    (tmp_path / "docs" / "reference" / "cli.md").write_text("# CLI reference\n\nold\n")
    assert main(["--check", "--root", str(tmp_path)]) == 1
    assert main(["--root", str(tmp_path)]) == 0 and main(["--check", "--root", str(tmp_path)]) == 0


def _snippets() -> dict[str, str]:
    """doc_code file name -> the part of it the docs show."""
    out = {}
    for path in sorted(DOC_CODE.glob("*.py")):
        if path.name.startswith("_"):
            continue
        found = SNIPPET.findall(path.read_text(encoding="utf-8"))
        assert len(found) == 1, f"{path}: one '# __doc_start__' ... '# __doc_end__' part expected"
        out[path.name] = found[0]
    return out


def test_every_python_block_in_the_docs_is_a_doc_code_file():
    snippets = _snippets()
    shown = set()
    for page in _pages():
        for lang, body in FENCE.findall(page.read_text(encoding="utf-8")):
            if lang != "python":
                continue
            match = [name for name, text in snippets.items() if text == body]
            assert match, (
                f"{page.relative_to(REPO_ROOT)}: a python block that is not the marked part of a file "
                f"in docs/doc_code/ (copy it there and keep the two equal):\n{body}"
            )
            shown.update(match)
    assert shown == set(snippets), f"doc_code files no page shows: {sorted(set(snippets) - shown)}"


@pytest.mark.parametrize(
    "name",
    [
        "writing_files.py",
        "prepare_audio.py",
        "prepare_bert.py",
        pytest.param("models.py", marks=pytest.mark.slow),  # full-size v2 G and GPT
        pytest.param("speaker_embeddings.py", marks=pytest.mark.slow),  # full-size ERes2NetV2
    ],
)
def test_doc_code_runs(name):
    assert name in _snippets()
    r = subprocess.run(
        [sys.executable, str(DOC_CODE / name)], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT
    )
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout[-2000:] + r.stderr[-3000:]


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_every_relative_link_reaches_a_file_and_heading():
    broken = []
    for page in _pages():
        text = FENCE.sub("", page.read_text(encoding="utf-8"))
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(REPO_ROOT)}: ({target})"
            if not dest.exists() or not dest.is_relative_to(REPO_ROOT):
                broken.append(f"{where}: no such file in the repository")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{where}: no heading with anchor #{anchor} in {dest.relative_to(REPO_ROOT)}")
    assert not broken, "\n".join(broken)


#: Paths a user or a fresh clone does not have, as they were written before (the notes folder beside
#: the checkout, its stack notes), and the reference data named without its place in the repository.
OUTSIDE = re.compile(r"(?<![\w/])(\.\./)?shared/|STACK\.md|(?<!gpt_sovits/)\bFORMATS\b|goldens' README")

#: A Markdown link to the reference's FORMATS.md by its repository path (its text may say just "FORMATS.md").
LINKED_FORMATS = re.compile(r"\[[^\]]*\]\([^)]*tests/reference/gpt_sovits/FORMATS\.md\)")


def _user_read_files() -> list[Path]:
    """What users and contributors read: the docs, the package (docstrings, comments, messages), the
    benchmarks, examples and project files (tests/ is excluded: its fixtures name such paths on purpose)."""
    files = _pages() + [REPO_ROOT / n for n in ("pyproject.toml", "cluster.yaml", ".ci/run")]
    for folder in ("gsv_ray", "benchmarks", "examples", "docs"):
        files += [p for p in (REPO_ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".yaml", ".json", ".txt")]
    return sorted(set(files))


def test_nothing_users_read_points_outside_the_repository():
    hits = []
    for path in _user_read_files():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(LINKED_FORMATS.sub("", line)):
                hits.append(f"{path.relative_to(REPO_ROOT)}:{n}: {line.strip()}")
    assert not hits, (
        "paths a user or a clone does not have (say it here, or link tests/reference/... by its "
        "repository path):\n" + "\n".join(hits)
    )
