"""Full-size files of every real kind and version, generated from schemas/, are identified from
their shapes (never their size or name), with the evidence named."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from gsv_ray.io import read
from tests.conftest import run_cli
from tests.support.schemafiles import EXPECTED, SchemaFiles, save_like_upstream

pytestmark = pytest.mark.slow  # full-size files of every kind (identification is also covered on the fixtures)

# Evidence each case must cite (substrings of `evidence` lines).
EVIDENCE = {
    "v1": ["322 rows", "1025 bins", "no sv_emb"],
    "v2": ["732 rows", "704 bins", "no sv_emb"],
    "v2Pro": ["732 rows", "704 bins", "sv_emb/ge_to512/prelu present", "kernel is 16"],
    "v2ProPlus": ["732 rows", "704 bins", "sv_emb/ge_to512/prelu present", "kernel is 20"],
}
BIG = {("sovits-pretrained-g", "v3"), ("sovits-pretrained-g", "v4"), ("sovits-train-g", "v3"), ("sovits-train-g", "v4")}


@pytest.mark.parametrize(("kind", "version", "versions"), EXPECTED, ids=[f"{k}-{v}" for k, v, _ in EXPECTED])
def test_generated_file_identified(kind, version, versions, schema_files: SchemaFiles):
    path = schema_files.path(kind, version)
    f = read(path)
    assert (f.kind, f.versions) == (kind, versions)
    assert f.version == (versions[0] if len(versions) == 1 else None)
    assert f.stage == ("gpt" if kind.startswith("gpt") else "sovits")
    assert not f.warnings, f.warnings
    if kind in ("sovits-export", "sovits-pretrained-g", "sovits-train-g") and version in EVIDENCE:
        for needle in EVIDENCE[version]:
            assert any(needle in e for e in f.evidence), (needle, f.evidence)
    if kind == "sovits-lora-export":
        assert f.header == {"v3": "03", "v4": "04"}[version] and f.lora_rank == 32
        assert any("LoRA" in e for e in f.evidence)
    if kind.startswith("sovits-pretrained-d") or kind == "sovits-train-d":
        assert any(("6 sub" in e) or ("8 sub" in e) for e in f.evidence)
    if kind.startswith("gpt"):
        assert any(("512 rows" if version == "v1" else "732 rows") in e for e in f.evidence)
    if (kind, version) in BIG:
        schema_files.delete(kind, version)  # 0.8-1.6 GB each: free the disk early


def test_identification_ignores_file_name_and_size(schema_files: SchemaFiles, tmp_path):
    """A v2 export renamed into a v1 folder with a v3-ish name is still v2."""
    src = schema_files.path("sovits-export", "v2")
    dst = tmp_path / "SoVITS_weights" / "s2Gv3_e1_s1.pth"
    dst.parent.mkdir()
    shutil.copy(src, dst)
    assert read(dst).version == "v2"


def _retagged(schema_files: SchemaFiles, tmp_path, kind: str, version: str, tag: bytes, name: str):
    data = bytearray(schema_files.path(kind, version).read_bytes())
    data[:2] = tag
    p = tmp_path / name
    p.write_bytes(bytes(data))
    return p


def test_conflicting_tag_is_reported_not_resolved(schema_files: SchemaFiles, tmp_path):
    """A '05' (v2Pro) tag on v2-shaped weights: the shapes decide, and the conflict is a warning."""
    p = _retagged(schema_files, tmp_path, "sovits-export", "v2", b"05", "tagged_v2.pth")
    f = read(p)
    assert f.header == "05"
    assert f.versions == ["v2"]
    assert any("header tag says v2Pro" in w and "v2" in w for w in f.warnings), f.warnings
    r = run_cli("inspect", "--json", str(p), in_process=True)
    assert r.returncode == 0
    assert any("v2Pro" in w for w in json.loads(r.stdout)["warnings"])


def test_untagged_pro_export_is_warned(schema_files: SchemaFiles, tmp_path):
    """Without its '06' tag GPT-SoVITS would load a v2ProPlus export as v2: we identify it and warn."""
    p = _retagged(schema_files, tmp_path, "sovits-export", "v2ProPlus", b"PK", "untagged.pth")
    f = read(p)
    assert f.version == "v2ProPlus"
    assert any("untagged" in w for w in f.warnings)


def test_v3_v4_told_apart_by_tag_or_config_only(schema_files: SchemaFiles, tmp_path):
    """LoRA files: v3 and v4 have identical shapes; the tag, else the config, tells them apart."""
    p = _retagged(schema_files, tmp_path, "sovits-lora-export", "v4", b"PK", "lora_untagged.pth")
    f = read(p)
    assert f.kind == "sovits-lora-export" and f.versions == ["v4"]
    assert any("config version says v4" in e for e in f.evidence)
    assert any("untagged" in w for w in f.warnings)
    # An untagged config-less v4 base G reads as ["v3", "v4"]: test_generated_file_identified's
    # sovits-pretrained-g-v4 case asserts exactly that (EXPECTED), on the same generated file.


def test_config_conflict_is_reported(schema_files: SchemaFiles, tmp_path):
    """A config that claims v2 on v1-shaped weights: shapes win, the claim is reported."""
    src = read(schema_files.path("sovits-export", "v1"))
    cfg = dict(src.config, version="v2")
    from tests.support.schemafiles import AsHParams

    p = save_like_upstream(
        {
            "weight": {k: v.clone() for k, v in src.state_dict.items()},
            "config": AsHParams(cfg),
            "info": "1epoch_1iteration",
        },
        tmp_path / "x.pth",
    )
    f = read(p)
    assert f.versions == ["v1"]
    assert any("config version says v2" in w for w in f.warnings)


def test_wrapper_prefix_is_stripped(tmp_path, schema_files: SchemaFiles):
    """DDP-saved weights (``module.`` prefix) are still recognised, and the prefix is named."""
    src = read(schema_files.path("sovits-train-d", "v2"))
    p = save_like_upstream(
        {
            "model": {f"module.{k}": v for k, v in src.state_dict.items()},
            "iteration": 1,
            "optimizer": {"state": {}, "param_groups": []},
            "learning_rate": 1e-4,
        },
        tmp_path / "D.pth",
    )
    f = read(p)
    assert f.kind == "sovits-train-d" and all(not k.startswith("module.") for k in f.state_dict)
    assert any("module." in e for e in f.evidence)


def test_inspect_pretty_table_for_generated(schema_files: SchemaFiles):
    path = schema_files.path("gpt-lightning", "v1")
    r = run_cli("inspect", str(path), in_process=True)
    assert r.returncode == 0, r.stderr
    assert "gpt-lightning" in r.stdout and "v1" in r.stdout and "512 rows" in r.stdout
    f = read(path)  # once for both checks (the same file, read the same way)
    assert isinstance(f.extra["hyper_parameters"]["output_dir"], str)
    assert torch.is_tensor(next(iter(f.state_dict.values())))
