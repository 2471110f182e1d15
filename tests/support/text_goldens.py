"""The text front-end goldens (``text/text_frontend.json``) and an offline runner for the language modules.

``sentences(lang, version)`` is read at collection time (tests are parametrised by sentence id);
``run_offline(code)`` runs Python in a fresh interpreter where no download can succeed or go unseen.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from tests.conftest import REPO_ROOT, find_reference_dir


@lru_cache(maxsize=1)
def goldens() -> dict[str, Any]:
    """The whole ``text_frontend.json``."""
    return json.loads((find_reference_dir() / "text" / "text_frontend.json").read_text(encoding="utf-8"))


def sentences(lang: str, version: str) -> list[dict[str, Any]]:
    """The golden sentences of one language and version, in file order."""
    return goldens()["languages"][lang][version]["sentences"]


def module_output(sentence: dict[str, Any]) -> list[str]:
    """The language module's own phones: the tokens before the cleaner's UNK mapping where it changed
    any (``module_g2p_before_unk_mapping``), else ``phones`` (nothing was mapped)."""
    return sentence.get("module_g2p_before_unk_mapping") or sentence["phones"]


def unk_mapped(phones: list[str], version: str) -> list[str]:
    """Upstream's cleaner's last step: a phone outside the version's table becomes ``UNK``."""
    table = set(goldens()["symbols"]["v1" if version == "v1" else "v2"])
    return [p if p in table else "UNK" for p in phones]


# Records every network attempt and every child process the code under test makes (the audit events
# Python raises for them), makes the connection fail, and prints them as JSON on the last line.
_PROLOGUE = """
import json, sys
attempts = []
def _hook(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "urllib.Request", "subprocess.Popen"):
        attempts.append([event, repr(args)[:200]])
        if event != "subprocess.Popen":
            raise OSError("network disabled by the test")
sys.addaudithook(_hook)
import nltk
nltk.data.path[:] = []
result = {}
"""
_EPILOGUE = "\nprint(json.dumps({'attempts': attempts, 'result': result}, ensure_ascii=False))\n"


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_offline(code: str, tmp_path: Path) -> dict[str, Any]:
    """Run ``code`` (which fills the dict ``result``) in a fresh Python with no way to the network:
    proxies at a closed loopback port, an empty ``nltk.data.path``, ``HOME``/``NLTK_DATA`` empty
    folders, and an audit hook that fails and records every connection attempt or child process.
    Returns ``{"attempts": [...], "result": {...}, "printed": [lines the code printed]}``."""
    home = tmp_path / "home"
    home.mkdir()
    proxy = f"http://127.0.0.1:{_closed_port()}"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "HOME": str(home),
        "NLTK_DATA": str(home),
        "HTTP_PROXY": proxy,
        "HTTPS_PROXY": proxy,
        "http_proxy": proxy,
        "https_proxy": proxy,
        "NO_PROXY": "",
    }
    env.pop("OPEN_JTALK_DICT_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-c", _PROLOGUE + code + _EPILOGUE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    *printed, last = proc.stdout.strip().splitlines()
    return {**json.loads(last), "printed": printed}
