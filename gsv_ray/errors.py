"""The one error type users see: a single line naming the file, the problem and the fix."""

from __future__ import annotations

from pathlib import Path


class GsvError(Exception):
    """A user-facing failure. ``str(err)`` is one line: what, where, and what to do.

    The CLI prints it to stderr and exits with status 2; library callers can catch it.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, fix: str | None = None):
        parts = []
        if path is not None:
            parts.append(f"{path}:")
        parts.append(message.rstrip("."))
        line = " ".join(parts)
        if fix:
            line += f". Fix: {fix.rstrip('.')}"
        line += "."
        super().__init__(" ".join(line.split()))  # guarantee a single line
        self.path = None if path is None else str(path)
