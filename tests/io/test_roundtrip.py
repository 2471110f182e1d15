"""read -> write -> read is exact, and what we write is what GPT-SoVITS's own loaders expect."""

from __future__ import annotations

import os
import pickletools
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch

from gsv_ray.atomic import atomic_write
from gsv_ray.errors import GsvError
from gsv_ray.io import read
from gsv_ray.io.safeload import _TagPatchedFile
from gsv_ray.io.writers import write_gpt_export, write_sovits_export

FIXTURE_EXPORTS = [
    "SoVITS_weights/gsvfix_e1_s2.pth",
    "SoVITS_weights_v2/gsvfix_e1_s2.pth",
    "SoVITS_weights_v2Pro/gsvfix_e1_s2.pth",
    "SoVITS_weights_v2ProPlus/gsvfix_e1_s2.pth",
    "SoVITS_weights_v4/gsvfix_e1_s2_l32.pth",
    "GPT_weights_v2/gsvfix-e1.ckpt",
]
GENERATED_EXPORTS = [("sovits-export", v) for v in ("v1", "v2", "v2Pro", "v2ProPlus")] + [
    ("sovits-lora-export", "v3"),
    ("sovits-lora-export", "v4"),
    ("gpt-export", "v1"),
    ("gpt-export", "v2"),
]


def _write_like(src, out):
    if src.stage == "gpt":
        return write_gpt_export(out, src.state_dict, config=src.config, info=src.info)
    return write_sovits_export(
        out, src.state_dict, config=src.config, info=src.info, version=src.version, lora_rank=src.lora_rank
    )


def _pickle_bytes(path) -> bytes:
    with open(path, "rb") as raw, zipfile.ZipFile(_TagPatchedFile(raw)) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))


def _assert_same(a, b):
    assert (b.kind, b.versions, b.header, b.info, b.lora_rank) == (a.kind, a.versions, a.header, a.info, a.lora_rank)
    assert b.config == a.config
    assert list(b.state_dict) == list(a.state_dict)  # key order kept
    for k, t in a.state_dict.items():
        assert b.state_dict[k].dtype == torch.float16
        assert torch.equal(b.state_dict[k], t.to(torch.float16)), k


@pytest.mark.parametrize("name", FIXTURE_EXPORTS)
def test_roundtrip_fixture(name, fixtures_dir, tmp_path):
    src = read(fixtures_dir / name)
    out = _write_like(src, tmp_path / os.path.basename(name))
    _assert_same(src, read(out))


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "version"), GENERATED_EXPORTS, ids=[f"{k}-{v}" for k, v in GENERATED_EXPORTS])
def test_roundtrip_full_size(kind, version, schema_files, tmp_path):
    src = read(schema_files.path(kind, version))
    out = _write_like(src, tmp_path / "out.pth")
    _assert_same(src, read(out))
    head = out.read_bytes()[:4]
    want = {"v2Pro": "30350304", "v2ProPlus": "30360304", "v3": "30330304", "v4": "30340304"}
    assert head.hex() == (want.get(version, "504b0304") if kind != "gpt-export" else "504b0304")


@pytest.mark.slow
def test_full_g_exports_without_enc_q_in_fp16(schema_files, tmp_path):
    """Writing a full fp32 generator gives upstream's export: no enc_q, fp16, everything else kept."""
    g = read(schema_files.path("sovits-train-g", "v2"))
    out = write_sovits_export(
        tmp_path / "e.pth", g.state_dict, config={"model": {"version": "v2"}}, info="3epoch_30iteration", version="v2"
    )
    e = read(out)
    assert e.kind == "sovits-export" and e.version == "v2"
    assert len(e.state_dict) == 673 and not any("enc_q" in k for k in e.state_dict)
    assert (e.epoch, e.step) == (3, 30)
    for k, t in e.state_dict.items():
        assert torch.equal(t, g.state_dict[k].half())


def test_v2pro_export_bytes_and_pickle_globals(fixtures_dir, tmp_path):
    src = read(fixtures_dir / "SoVITS_weights_v2Pro/gsvfix_e1_s2.pth")
    out = _write_like(src, tmp_path / "pro.pth")
    assert out.read_bytes()[:4] == bytes([0x30, 0x35, 0x03, 0x04])
    ops = list(pickletools.genops(_pickle_bytes(out)))
    globals_ = [arg for op, arg, _ in ops if op.name in ("GLOBAL", "STACK_GLOBAL", "INST")]
    hparams = [g for g in globals_ if "HParams" in g]
    assert hparams == ["utils HParams"]  # exactly one global, named as upstream's trainers name it
    assert set(globals_) == {
        "collections OrderedDict",
        "torch._utils _rebuild_tensor_v2",
        "torch HalfStorage",
        "utils HParams",
    }
    # nested sections are HParams objects too: one NEWOBJ per HParams (top + train/data/model)
    assert sum(1 for op, _, _ in ops if op.name == "NEWOBJ") == 4


GSV_STYLE_LOADER = textwrap.dedent("""
    # Loads like GPT-SoVITS: a module named utils with HParams on sys.path, load_sovits_new's header
    # fix, torch.load(weights_only=False), attribute access into nested config sections.
    import io, sys, torch
    sys.path.insert(0, sys.argv[2])
    import utils
    path = sys.argv[1]
    with open(path, "rb") as f:
        head = f.read(2)
        data = f.read()
    obj = torch.load(io.BytesIO(b"PK" + data) if head != b"PK" else path, map_location="cpu", weights_only=False)
    hps = obj["config"]
    assert type(hps) is utils.HParams and type(hps.model) is utils.HParams, type(hps)
    print(head.decode(), hps.model.version, hps.data.sampling_rate, obj["info"], len(obj["weight"]),
          next(iter(obj["weight"].values())).dtype)
""")
UPSTREAM_UTILS = textwrap.dedent("""
    class HParams:
        def __init__(self, **kwargs):
            for k, v in kwargs.items():
                if type(v) == dict:
                    v = HParams(**v)
                self[k] = v
        def __setitem__(self, key, value):
            return setattr(self, key, value)
        def __getitem__(self, key):
            return getattr(self, key)
""")


@pytest.mark.slow
def test_written_export_loads_the_way_gpt_sovits_loads_it(fixtures_dir, tmp_path):
    src = read(fixtures_dir / "SoVITS_weights_v2ProPlus/gsvfix_e1_s2.pth")
    out = _write_like(src, tmp_path / "plus.pth")
    mod = tmp_path / "gsvmod"
    mod.mkdir()
    (mod / "utils.py").write_text(UPSTREAM_UTILS)
    (tmp_path / "load.py").write_text(GSV_STYLE_LOADER)
    r = subprocess.run([sys.executable, str(tmp_path / "load.py"), str(out), str(mod)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["06", "v2ProPlus", "32000", "1epoch_2iteration", "534", "torch.float16"]


def test_gpt_export_loads_strictly_keys_and_max_sec(fixtures_dir, tmp_path):
    src = read(fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt")
    bare = {k[len("model.") :]: v for k, v in src.state_dict.items()}  # writer adds the prefix back
    out = write_gpt_export(tmp_path / "x-e3.ckpt", bare, config=src.config, info="GPT-e3")
    obj = torch.load(out, weights_only=True)  # GPT exports are plain zips torch reads by itself
    assert list(obj) == ["weight", "config", "info"] and obj["info"] == "GPT-e3"
    assert list(obj["weight"]) == list(src.state_dict) and obj["config"]["data"]["max_sec"] == 54
    with pytest.raises(GsvError, match="max_sec"):
        write_gpt_export(tmp_path / "bad.ckpt", bare, config={"model": {}}, info="GPT-e1")


def test_writer_never_replaces_inputs_or_existing_files(fixtures_dir, tmp_path):
    src_path = tmp_path / "in.pth"
    src_path.write_bytes((fixtures_dir / "SoVITS_weights_v2/gsvfix_e1_s2.pth").read_bytes())
    src = read(src_path)
    before = (src_path.read_bytes(), src_path.stat().st_mtime_ns)
    with pytest.raises(GsvError, match="input"):
        write_sovits_export(
            src_path, src.state_dict, config=src.config, info=src.info, version="v2", overwrite=True, protect=[src_path]
        )
    with pytest.raises(GsvError, match="already exists"):
        write_sovits_export(src_path, src.state_dict, config=src.config, info=src.info, version="v2")
    assert (src_path.read_bytes(), src_path.stat().st_mtime_ns) == before


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out.pth", boom)
    assert list(tmp_path.iterdir()) == []


def test_full_v4_export_refused(tmp_path):
    with pytest.raises(GsvError, match="LoRA"):
        write_sovits_export(
            tmp_path / "v4.pth", {"ssl_proj.weight": torch.zeros(1)}, config={}, info="1epoch_1iteration", version="v4"
        )
