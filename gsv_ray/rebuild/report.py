"""The rebuild report: the fate of every target key, every unused source key, and a verdict.

This is what users read instead of upstream's raw ``_IncompatibleKeys`` dumps, and what W&B logs.
Fates of target keys:

* ``loaded``            — taken from the init file (the user's weights);
* ``filled_from_base``  — taken from ``--base`` / ``--base-d`` (same version, checked);
* ``initialised``       — freshly initialised by our model, because a policy allows it (declared);
* ``error``             — missing or mis-shaped with no allowed resolution (verdict becomes error).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

LOADED = "loaded"
FILLED_FROM_BASE = "filled_from_base"
INITIALISED = "initialised"
ERROR = "error"
FATES = (LOADED, FILLED_FROM_BASE, INITIALISED, ERROR)


@dataclass
class KeyFate:
    fate: str
    source: str | None  # path of the file the tensor came from, None when initialised / error
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"fate": self.fate, "source": self.source, "reason": self.reason}


@dataclass
class RebuildReport:
    version: str | None
    stage: str
    task: str
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> path/sha256/kind/version
    targets: dict[str, dict[str, KeyFate]] = field(default_factory=dict)  # model -> key -> fate
    dropped: dict[str, dict[str, str]] = field(default_factory=dict)  # source path -> key -> reason
    harmless: dict[str, dict[str, str]] = field(default_factory=dict)  # model -> key -> why it does not matter
    notes: list[str] = field(default_factory=list)  # consequences the user should know (warmup, ...)
    errors: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    # -- derived -------------------------------------------------------------------------------
    def counts(self) -> dict[str, dict[str, int]]:
        out = {}
        for model, fates in self.targets.items():
            c = Counter(f.fate for f in fates.values())
            out[model] = {fate: c.get(fate, 0) for fate in FATES}
        return out

    @property
    def ok(self) -> bool:
        return not self.errors and not any(f.fate == ERROR for t in self.targets.values() for f in t.values())

    @property
    def verdict(self) -> str:
        return "ok" if self.ok else "error"

    def message(self) -> str:
        """The one-line verdict."""
        if not self.ok:
            first = (
                self.errors[0]
                if self.errors
                else next(f"{k}: {f.reason}" for t in self.targets.values() for k, f in t.items() if f.fate == ERROR)
            )
            n = len(self.errors) + sum(f.fate == ERROR for t in self.targets.values() for f in t.values())
            return f"cannot rebuild for {self.task}: {first}" + (f" (and {n - 1} more problems)" if n > 1 else "")
        parts = []
        for model, c in self.counts().items():
            bits = [f"{c[LOADED]} loaded"]
            if c[FILLED_FROM_BASE]:
                bits.append(f"{c[FILLED_FROM_BASE]} from base")
            if c[INITIALISED]:
                bits.append(f"{c[INITIALISED]} freshly initialised")
            parts.append(f"{model}: " + ", ".join(bits))
        ver = self.version or "?"
        return f"ready for {self.task} ({self.stage} {ver}): " + "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "stage": self.stage,
            "task": self.task,
            "verdict": self.verdict,
            "message": self.message(),
            "inputs": self.inputs,
            "targets": {m: {k: f.to_json() for k, f in t.items()} for m, t in self.targets.items()},
            "dropped": self.dropped,
            "harmless": self.harmless,
            "counts": self.counts(),
            "notes": self.notes,
            "errors": self.errors,
            "config": self.config,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RebuildReport:
        return cls(
            version=d["version"],
            stage=d["stage"],
            task=d["task"],
            inputs=d.get("inputs", {}),
            targets={m: {k: KeyFate(**f) for k, f in t.items()} for m, t in d["targets"].items()},
            dropped=d.get("dropped", {}),
            harmless=d.get("harmless", {}),
            notes=d.get("notes", []),
            errors=d.get("errors", []),
            config=d.get("config", {}),
        )

    # -- for people ----------------------------------------------------------------------------
    def groups(self) -> list[tuple[str, str, str, int, str]]:
        """Non-``loaded`` target keys grouped by (model, module prefix, fate, reason): counts."""
        g: dict[tuple[str, str, str, str], int] = defaultdict(int)
        for model, fates in self.targets.items():
            for key, f in fates.items():
                if f.fate != LOADED:
                    g[(model, module_prefix(key), f.fate, f.reason)] += 1
        return [(m, p, fate, n, r) for (m, p, fate, r), n in sorted(g.items())]

    def render(self) -> Any:
        """A rich renderable: counts per fate, grouped non-loaded keys, harmless and dropped keys."""
        from rich.console import Group
        from rich.markup import escape
        from rich.table import Table
        from rich.text import Text

        counts = Table(title=f"rebuild for {self.task}: {self.stage} {self.version or '?'}", title_justify="left")
        counts.add_column("target")
        for fate in FATES:
            counts.add_column(fate, justify="right")
        for model, c in self.counts().items():
            counts.add_row(model, *(str(c[f]) for f in FATES))
        parts: list[Any] = [counts]
        rows = self.groups()
        if rows:
            t = Table(title="not loaded from the init file", title_justify="left")
            for col in ("target", "keys", "fate", "count", "why"):
                t.add_column(col, overflow="fold")
            for m, p, fate, n, r in rows:
                t.add_row(m, escape(p + ".*"), fate, str(n), escape(r))
            parts.append(t)
        if self.harmless:
            t = Table(title="missing but harmless for this task", title_justify="left")
            for col in ("target", "keys", "count", "why"):
                t.add_column(col, overflow="fold")
            for model, keys in self.harmless.items():
                by: dict[tuple[str, str], int] = defaultdict(int)
                for k, why in keys.items():
                    by[(module_prefix(k), why)] += 1
                for (p, why), n in sorted(by.items()):
                    t.add_row(model, escape(p + ".*"), str(n), escape(why))
            parts.append(t)
        for src, keys in self.dropped.items():
            by = defaultdict(int)
            for k, why in keys.items():
                by[(module_prefix(k), why)] += 1
            summary = "; ".join(f"{p}.* x{n} ({why})" for (p, why), n in sorted(by.items()))
            parts.append(Text(f"unused from {src}: {summary}", style="dim"))
        for n in self.notes:
            parts.append(Text(f"note: {n}", style="yellow"))
        parts.append(Text(("OK: " if self.ok else "ERROR: ") + self.message(), style="green" if self.ok else "red"))
        return Group(*parts)


def module_prefix(key: str) -> str:
    """The top-level module a key belongs to: ``enc_q.enc.in_layers.0.bias`` -> ``enc_q``."""
    return key.split(".", 1)[0]
