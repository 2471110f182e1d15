"""Where gsv-ray keeps files on a node: reusable results (rebuilds, input hashes, model key/shape
schemas, fetched inputs, experiment indexes) and run-local scratch.

Both are *node* settings — on a cluster each node's own environment says where (``GSV_RAY_CACHE``,
``GSV_RAY_SCRATCH``), so a Ray worker reads them on its node, never from the driver. This module is
the one place that reads them; everything else takes the paths as arguments (``cache_root=``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gsv_ray.errors import usable_dir

CACHE_ENV = "GSV_RAY_CACHE"
SCRATCH_ENV = "GSV_RAY_SCRATCH"


def default_cache_root() -> Path:
    """``$GSV_RAY_CACHE``, else ``$XDG_CACHE_HOME/gsv-ray``, else ``~/.cache/gsv-ray``: an existing
    directory (created when missing), or a one-line :class:`GsvError` naming the setting to change."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return usable_dir(env, named=CACHE_ENV, fix=f"point {CACHE_ENV} at a directory you can write, or unset it")
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gsv-ray"
    return usable_dir(root, named="the cache", fix=f"set {CACHE_ENV} to a directory you can write")


def cache_root(given: str | Path | None) -> Path:
    """A cache root given by the user (``--cache``; usable, created when missing), else the default."""
    if given is None or str(given) == "":
        return default_cache_root()
    return usable_dir(given, named="--cache", fix="pass --cache a directory you can write")


def scratch_root() -> Path:
    """Where runs keep node-local files: ``$GSV_RAY_SCRATCH``, else a per-user folder in the system
    temp dir (one shared by every user grew to GBs and could not be cleaned by anyone but its owner)."""
    env = os.environ.get(SCRATCH_ENV)
    return Path(env) if env else Path(tempfile.gettempdir()) / f"gsv-ray-scratch-{os.getuid()}"
