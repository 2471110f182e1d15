"""What opening an experiment found: every utterance left out or altered, counted per kind of
problem with the first few names (:class:`DataReport`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SEVERITIES = ("error", "warning", "info")


@dataclass
class Problem:
    """One kind of problem: how many utterances, which ones, and whether they were left out.

    ``severity``: ``error`` = the data is broken (upstream would crash, train on NaN or on zeros);
    ``warning`` = upstream's own rules drop or alter these (worth knowing); ``info`` = expected.
    """

    code: str
    severity: str
    message: str
    excluded: bool
    names: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.names)

    def line(self, examples: int = 5) -> str:
        shown = ", ".join(self.names[:examples])
        more = f", ... (+{self.count - examples})" if self.count > examples else ""
        action = " [left out]" if self.excluded else ""
        return f"{self.severity}: {self.code}: {self.count} x {self.message}{action}: {shown}{more}"


@dataclass
class DataReport:
    """What :func:`open_experiment` found: counts per problem kind plus the usable total."""

    root: Path
    stage: str
    version: str
    listed: int = 0  # utterances named in 2-name2text.txt (GPT: rows of the semantic TSV)
    usable: int = 0
    problems: list[Problem] = field(default_factory=list)
    examples: int = 5

    def add(self, code: str, severity: str, message: str, name: str, *, excluded: bool) -> None:
        """Count ``name`` under ``code`` (created on first use, order of first appearance kept)."""
        assert severity in SEVERITIES, severity
        for p in self.problems:
            if p.code == code:
                p.names.append(name)
                return
        self.problems.append(Problem(code, severity, message, excluded, [name]))

    def get(self, code: str) -> Problem | None:
        return next((p for p in self.problems if p.code == code), None)

    def count(self, code: str) -> int:
        p = self.get(code)
        return 0 if p is None else p.count

    @property
    def codes(self) -> list[str]:
        return [p.code for p in self.problems]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def has_errors(self) -> bool:
        return bool(self.errors)

    def lines(self) -> list[str]:
        head = f"{self.root} ({self.stage}, {self.version}): {self.usable} of {self.listed} utterances usable"
        order = {s: i for i, s in enumerate(SEVERITIES)}
        probs = sorted(self.problems, key=lambda p: order[p.severity])
        return [head] + ["  " + p.line(self.examples) for p in probs]

    def __str__(self) -> str:
        return "\n".join(self.lines())
