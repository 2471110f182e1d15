"""Outputs on filesystems that say no: a full disk (ENOSPC), a read-only mount, a dangling symlink
or a path under a regular file. Each is one line naming the place and the fix, exit 2, no traceback,
and no temp file left behind. Real filesystems: a small tmpfs mounted in a private mount namespace
(``unshare -rm``, no root needed where unprivileged user namespaces are enabled)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gsv_ray.data.synthetic import make_synthetic_experiment

pytestmark = pytest.mark.slow  # real mounts: full and read-only filesystems


def _can_mount() -> str | None:
    if not shutil.which("unshare"):
        return "needs unshare (util-linux) to mount a private tmpfs"
    r = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || mount -t tmpfs -o size=64k tmpfs /tmp",
        ],
        capture_output=True,
    )
    return (
        None if r.returncode == 0 else "this kernel does not let unprivileged users mount a tmpfs (user namespaces off)"
    )


NO_MOUNT = _can_mount()
needs_mount = pytest.mark.skipif(NO_MOUNT is not None, reason=NO_MOUNT or "")


def _cli_on_mount(mount: Path, size: str, *args: str, read_only: bool = False, env: dict | None = None):
    """`gsv-ray ARGS` with a fresh tmpfs of ``size`` at ``mount`` (read-only if asked), visible to it only."""
    mount.mkdir(parents=True, exist_ok=True)
    ro = f" && mount -o remount,ro {mount}" if read_only else ""
    listing = mount.parent / f"{mount.name}.listing"
    script = (
        f'mount -t tmpfs -o size={size} tmpfs {mount}{ro} && "$0" -m gsv_ray "$@"; rc=$?; '
        f"cd {mount} && find . -mindepth 1 > {listing}; exit $rc"
    )
    r = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, sys.executable, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    left = [x[2:] for x in listing.read_text().split()]  # every path left on the mount
    return r, left


def _one_line(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gsv-ray: error: ") and "Fix:" in lines[0], r.stderr[-3000:]
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def gpt(fixtures_dir):
    return str(fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt")


@pytest.fixture
def sovits(fixtures_dir):
    fix = fixtures_dir / "logs/gsvfix/logs_s2_v2"
    return [
        str(fixtures_dir / "SoVITS_weights_v2/gsvfix_e1_s2.pth"),
        "--base",
        str(fix / "G_233333333333.pth"),
        "--base-d",
        str(fix / "D_233333333333.pth"),
    ]


@needs_mount
def test_rebuild_output_on_a_full_disk(sovits, tmp_path):
    m = tmp_path / "small"
    r, left = _cli_on_mount(
        m, "256k", "rebuild", *sovits, "-o", str(m / "out"), env={"GSV_RAY_CACHE": str(tmp_path / "cache")}
    )
    _one_line(r, "no space left", str(m))
    assert left == []  # the half-copied output was removed


@needs_mount
def test_cache_on_a_full_disk(sovits, tmp_path):
    m = tmp_path / "cache"
    r, left = _cli_on_mount(m, "256k", "rebuild", *sovits, env={"GSV_RAY_CACHE": str(m)})
    _one_line(r, "no space left", str(m))
    assert not [n for n in left if n.startswith("rebuild/") or "/." in f"/{n}"], left  # no entry, no temp file


@needs_mount
@pytest.mark.parametrize("where", ["cache", "-o"])
def test_read_only_filesystem(where, gpt, tmp_path):
    m = tmp_path / "ro"
    if where == "cache":
        r, _ = _cli_on_mount(
            m, "1m", "rebuild", gpt, "-o", str(tmp_path / "out"), read_only=True, env={"GSV_RAY_CACHE": str(m)}
        )
    else:
        r, _ = _cli_on_mount(
            m,
            "1m",
            "rebuild",
            gpt,
            "-o",
            str(m / "out"),
            read_only=True,
            env={"GSV_RAY_CACHE": str(tmp_path / "cache")},
        )
    _one_line(r, "read-only", str(m))


@needs_mount
def test_train_checkpoint_on_a_full_disk(gpt, tmp_path):
    """The run directory fills up at the first checkpoint: one line, no partial checkpoint left."""
    data = make_synthetic_experiment(tmp_path / "exp", version="v2", num_utterances=8)
    m = tmp_path / "run"
    r, left = _cli_on_mount(
        m,
        "1m",
        "train",
        "--init",
        gpt,
        "--data",
        str(data),
        "-o",
        str(m / "r"),
        "--max-steps",
        "2",
        "--save-every",
        "1",
        "--wandb-mode",
        "disabled",
        env={"GSV_RAY_CACHE": str(tmp_path / "cache")},
    )
    _one_line(r, "no space left", str(m))
    # no partial checkpoint, no temp file (the run's lock file, where its owner's PID was, stays)
    assert not [n for n in left if "/." in f"/{n}" and not n.endswith("/.gsv-run.lock")], left


@pytest.mark.parametrize("command", ["rebuild", "train"])
@pytest.mark.parametrize("case", ["dangling symlink", "under a file"])
def test_impossible_output_paths(command, case, gpt, tmp_path):
    from tests.conftest import run_cli

    if case == "dangling symlink":
        out = tmp_path / "out"
        out.symlink_to(tmp_path / "missing" / "dir")
        needle = "does not exist"
    else:
        (tmp_path / "afile").write_text("mine")
        out = tmp_path / "afile" / "out"
        needle = "is a file"
    env = {"GSV_RAY_CACHE": str(tmp_path / "cache")}
    if command == "rebuild":
        r = run_cli("rebuild", gpt, "-o", str(out), env=env, in_process=True)
    else:
        data = make_synthetic_experiment(tmp_path / "exp", version="v2", num_utterances=8)
        r = run_cli(
            "train",
            "--init",
            gpt,
            "--data",
            str(data),
            "-o",
            str(out),
            "--max-steps",
            "2",
            "--wandb-mode",
            "disabled",
            env=env,
            in_process=True,
        )
    _one_line(r, needle, str(out))
    if case == "dangling symlink":
        assert out.is_symlink() and not (tmp_path / "missing").exists()  # the user's link untouched
    else:
        assert (tmp_path / "afile").read_text() == "mine"
