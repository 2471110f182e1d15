"""The contract every language module of the text front-end keeps."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Protocol

#: upstream's ``text.symbols.punctuation``: the only punctuation phones of the symbol tables (the tables
#: themselves are ``gsv_ray.resources.symbols``).
PUNCTUATION = ("!", "?", "…", ",", ".", "-")


class TextRejected(ValueError):
    """A line the front-end cannot turn into phones; upstream drops such a line from ``2-name2text.txt``.

    ``reason`` is one line a user can act on (which text, what is wrong with it).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LanguageModule(Protocol):
    """What ``gsv_ray.prepare.text.<lang>`` exposes (module-level functions, no module-level mutable state).

    ``normalize(text, version)`` -> upstream's ``norm_text`` for that language;
    ``g2p(norm_text, version)`` -> (phones before the cleaner's UNK mapping, ``word2ph`` or ``None``).
    Both raise :class:`TextRejected` where upstream's code raises (the line is dropped).
    """

    def normalize(self, text: str, version: str) -> str: ...

    def g2p(self, norm_text: str, version: str) -> tuple[list[str], list[int] | None]: ...


def table_path(*parts: str) -> Path:
    """The path of a data table shipped with the package (``tables/<lang>/<file>``)."""
    return Path(str(files("gsv_ray.prepare.text").joinpath("tables", *parts)))
