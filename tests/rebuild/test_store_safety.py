"""The rebuild cache: a damaged entry is never served (it is rebuilt), a malformed hash index is
repaired, `-o` shares no inode with the cache, and identical rebuilds racing on an empty cache all
succeed (real files damaged on disk, real CLI processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from gsv_ray.rebuild import export_result, rebuild_cached
from gsv_ray.rebuild.store import entry_problem

pytestmark = pytest.mark.slow  # rebuilds of the fixtures damaged in every way, concurrent and killed rebuilds

FIX = "logs/gsvfix/logs_s2_v2/"


@pytest.fixture
def files(fixtures_dir):
    return {
        "init": str(fixtures_dir / "SoVITS_weights_v2/gsvfix_e1_s2.pth"),
        "base_g": str(fixtures_dir / FIX / "G_233333333333.pth"),
        "base_d": str(fixtures_dir / FIX / "D_233333333333.pth"),
    }


def _flip(path, offset=4096, n=4096):
    with open(path, "r+b") as f:
        f.seek(offset)
        block = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in block))


DAMAGE = {
    "flip 4 KiB": lambda d: _flip(d / "generator.safetensors"),
    "delete": lambda d: (d / "generator.safetensors").unlink(),
    "truncate": lambda d: os.truncate(d / "generator.safetensors", 100),
    "empty": lambda d: os.truncate(d / "discriminator.safetensors", 0),
    "bad report": lambda d: (d / "report.json").write_text("{not json"),
    "bad config": lambda d: (d / "config.json").write_text("[]"),
    "no manifest": lambda d: (d / "manifest.json").unlink(),
    "bad manifest": lambda d: (d / "manifest.json").write_text('{"files": 3}'),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_entry_is_rebuilt_not_served(damage, files, tmp_path, caplog):
    first = rebuild_cached(files["init"], base_g=files["base_g"], base_d=files["base_d"], cache_root=tmp_path)
    DAMAGE[damage](first.path)
    with caplog.at_level("WARNING"):
        again = rebuild_cached(files["init"], base_g=files["base_g"], base_d=files["base_d"], cache_root=tmp_path)
    assert not again.cache_hit and again.path == first.path and entry_problem(again.path) is None
    assert any("damaged" in r.getMessage() for r in caplog.records)
    for name, sd in first.weights.items():
        assert all(torch.equal(sd[k], again.weights[name][k]) and torch.isfinite(sd[k]).all() for k in sd)
    assert rebuild_cached(files["init"], base_g=files["base_g"], base_d=files["base_d"], cache_root=tmp_path).cache_hit


def test_full_verification_catches_what_identity_does_not(files, tmp_path):
    """A same-size rewrite that restores the old mtime keeps the file's identity; --verify-inputs
    (full checksums) still finds it."""
    first = rebuild_cached(files["init"], base_g=files["base_g"], base_d=files["base_d"], cache_root=tmp_path)
    f = first.path / "generator.safetensors"
    st = f.stat()
    _flip(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert entry_problem(first.path) is None and "generator" in entry_problem(first.path, full=True)
    again = rebuild_cached(
        files["init"], base_g=files["base_g"], base_d=files["base_d"], cache_root=tmp_path, verify_inputs=True
    )
    assert not again.cache_hit and entry_problem(again.path, full=True) is None


@pytest.mark.parametrize("index", ["[1, 2]", "{not json", '{"k": 3}', ""])
def test_malformed_hash_index_is_repaired(index, files, tmp_path):
    rebuild_cached(files["init"], cache_root=tmp_path, task="infer")
    (tmp_path / "sha256-index.json").write_text(index)
    r = rebuild_cached(files["init"], cache_root=tmp_path, task="infer")
    assert r.cache_hit and isinstance(json.loads((tmp_path / "sha256-index.json").read_text()), dict)


def test_output_shares_no_inode_with_the_cache(files, tmp_path):
    r = rebuild_cached(files["init"], base_g=files["base_g"], base_d=files["base_d"], cache_root=tmp_path / "c")
    out = export_result(r, tmp_path / "out")
    for f in r.path.iterdir():
        assert not os.path.samefile(f, out / f.name) and f.stat().st_nlink == 1
    _flip(out / "generator.safetensors")  # damage to the user's copy is not damage to the cache
    assert entry_problem(r.path) is None


@pytest.mark.slow
def test_concurrent_identical_rebuilds_all_succeed(files, tmp_path):
    env = {**os.environ, "GSV_RAY_CACHE": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gsv_ray",
                "rebuild",
                files["init"],
                "--base",
                files["base_g"],
                "--base-d",
                files["base_d"],
                "-o",
                str(tmp_path / f"out{i}"),
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(3)
    ]
    results = [(p.returncode, *p.communicate(timeout=600)) for p in procs]
    results = [(p.returncode, out, err) for p, (_, out, err) in zip(procs, results)]
    assert all(rc == 0 for rc, _, _ in results), [err for _, _, err in results]
    entries = list((tmp_path / "cache" / "rebuild").iterdir())
    assert len([e for e in entries if not e.name.startswith(".")]) == 1
    assert all(entry_problem(tmp_path / f"out{i}", full=True) is None for i in range(3))


def _hidden_dirs(d):
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".") and p.is_dir()) if d.is_dir() else []


@pytest.mark.slow
def test_a_rebuild_killed_mid_write_leaves_an_orphan_the_next_run_removes(schema_files, tmp_path):
    """SIGKILL `gsv-ray rebuild` (from outside, by PID) while it writes a full-size entry: the temp
    dir it leaves is removed by the next rebuild that writes into the cache, once older than the
    grace period (aged here); a temp dir whose writer is alive is never touched."""
    import signal
    import time

    from gsv_ray.owned import GRACE_S, OWNER, Owner

    gpt = schema_files.path("gpt-export", "v2")
    env = {**os.environ, "GSV_RAY_CACHE": str(tmp_path / "cache")}
    store = tmp_path / "cache" / "rebuild"
    p = subprocess.Popen(
        [sys.executable, "-m", "gsv_ray", "rebuild", str(gpt), "-o", str(tmp_path / "out")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        temps = [d for d in _hidden_dirs(store)]
        if temps and any(f.stat().st_size > 2**20 for f in (store / temps[0]).glob("*.safetensors")):
            break
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    (orphan,) = _hidden_dirs(store)
    size = sum(f.stat().st_size for f in (store / orphan).iterdir())
    assert size > 2**20, "killed too late or too early to leave a half-written entry"
    old = time.time() - 2 * GRACE_S
    os.utime(store / orphan / OWNER, (old, old))
    live = store / ".0123456789abcdef01234567.live"  # another writer, alive (this process holds it)
    with Owner(live):
        os.utime(live / OWNER, (old, old))
        r = subprocess.run(
            [sys.executable, "-m", "gsv_ray", "rebuild", str(gpt), "-o", str(tmp_path / "out2")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        assert _hidden_dirs(store) == [live.name]  # the orphan is gone, the live one kept
    assert entry_problem(tmp_path / "out2") is None
