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

FIX = "logs/gsvfix/logs_s2_v2/"


@pytest.fixture
def files(fixtures_dir):
    return {"init": str(fixtures_dir / "SoVITS_weights_v2/gsvfix_e1_s2.pth"),
            "base_g": str(fixtures_dir / FIX / "G_233333333333.pth"),
            "base_d": str(fixtures_dir / FIX / "D_233333333333.pth")}


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
    again = rebuild_cached(files["init"], base_g=files["base_g"], base_d=files["base_d"], cache_root=tmp_path,
                           verify_inputs=True)
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


def test_concurrent_identical_rebuilds_all_succeed(files, tmp_path):
    env = {**os.environ, "GSV_RAY_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-m", "gsv_ray", "rebuild", files["init"], "--base", files["base_g"],
                               "--base-d", files["base_d"], "-o", str(tmp_path / f"out{i}"), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(3)]
    results = [(p.returncode, *p.communicate(timeout=600)) for p in procs]
    results = [(p.returncode, out, err) for p, (_, out, err) in zip(procs, results)]
    assert all(rc == 0 for rc, _, _ in results), [err for _, _, err in results]
    entries = list((tmp_path / "cache" / "rebuild").iterdir())
    assert len([e for e in entries if not e.name.startswith(".")]) == 1
    assert all(entry_problem(tmp_path / f"out{i}", full=True) is None for i in range(3))
