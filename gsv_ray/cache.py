"""Where gsv-ray keeps reusable results (rebuilds, input hashes, model key/shape schemas)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_root() -> Path:
    """``$GSV_RAY_CACHE``, else ``$XDG_CACHE_HOME/gsv-ray``, else ``~/.cache/gsv-ray``."""
    env = os.environ.get("GSV_RAY_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gsv-ray"
