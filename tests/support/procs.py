"""Processes as a user sees them: by session and process title, read from /proc (Linux)."""

from __future__ import annotations

from pathlib import Path


def session_processes(session: int) -> dict[int, str]:
    """Titles of every process in a session, e.g. the one a CLI run started with
    ``start_new_session=True`` (its pid is the session id): the CLI, and for a local Ray its GCS,
    raylet, agents, actors and their data workers (they keep the session, not the process group)."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            title = (d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            sid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[3])
        except (OSError, ValueError, IndexError):
            continue
        if sid == session:
            found[int(d.name)] = title
    return found


def ray_processes(session: int) -> dict[int, str]:
    """Titles (``ray::<Class>...``) of the Ray processes in a session."""
    return {pid: title for pid, title in session_processes(session).items() if title.startswith("ray::")}
