"""Every file GPT-SoVITS itself wrote (fixtures/) is read safely and identified as INDEX.json says."""

from __future__ import annotations

import json

import pytest
import torch

from gsv_ray.io import read, sha256_file
from tests.conftest import find_reference_dir, run_cli

KIND_NAMES = {  # fixtures/INDEX.json kind -> our kind
    "sovits_export": "sovits-export",
    "sovits_lora_export": "sovits-lora-export",
    "sovits_G_checkpoint": "sovits-train-g",
    "sovits_D_checkpoint": "sovits-train-d",
    "gpt_export": "gpt-export",
    "gpt_lightning_checkpoint": "gpt-lightning",
}


def _fixture_names() -> list[str]:
    ref = find_reference_dir()
    return sorted(json.loads((ref / "fixtures" / "INDEX.json").read_text())["files"])


@pytest.fixture(scope="module")
def index(fixtures_dir):
    return json.loads((fixtures_dir / "INDEX.json").read_text())["files"]


def _jsonable(x):
    return json.loads(json.dumps(x))


@pytest.mark.parametrize("name", _fixture_names())
def test_fixture_read_and_identified(name, fixtures_dir, index):
    want = index[name]
    path = fixtures_dir / name
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    f = read(path)

    assert f.kind == KIND_NAMES[want["kind"]]
    assert want["version"] in f.versions
    if want["kind"] != "sovits_D_checkpoint":  # D files cannot tell v1 from v2: both allowed
        assert f.version == want["version"]
    else:
        assert f.versions == ["v1", "v2"] and f.version is None
    assert sha256_file(path) == want["sha256"]
    assert f.header == want["header_2_bytes_ascii"]
    assert f.pickle_globals == sorted(want["pickle_globals"])

    sd_facts = want.get("weight") or want.get("model") or want.get("state_dict")
    assert len(f.state_dict) == sd_facts["num_keys"]
    assert sorted({str(t.dtype).replace("torch.", "") for t in f.state_dict.values()}) == sd_facts["dtypes"]
    assert sum(t.numel() for t in f.state_dict.values()) == sd_facts["num_elements"]
    assert all(isinstance(t, torch.Tensor) for t in f.state_dict.values())

    if "info" in want:
        assert f.info == want["info"]
    if "config" in want:  # HParams / dict config converted to plain JSON-able data, equal to upstream's
        assert f.config_type == want["config_type"]
        assert _jsonable(f.config) == want["config"]
    if "lora_rank" in want:
        assert f.lora_rank == want["lora_rank"] and isinstance(f.lora_rank, int)
    if "iteration" in want:
        assert f.epoch == want["iteration"]
        assert f.extra["learning_rate"] == want["learning_rate"]
        opt = f.extra["optimizer"]
        assert len(opt["param_groups"]) == want["optimizer"]["num_param_groups"]
        assert [len(g["params"]) for g in opt["param_groups"]] == want["optimizer"]["params_per_group"]
    if want["kind"] == "gpt_lightning_checkpoint":
        assert (f.epoch, f.step) == (want["epoch"], want["global_step"])
        hp = f.extra["hyper_parameters"]
        assert hp["output_dir"] == want["hyper_parameters_output_dir"]["value"]  # PosixPath -> str
        assert isinstance(hp["output_dir"], str)
        assert f.extra["lr_schedulers"] == want["lr_schedulers"]
    for k, shape in want.get("notable_shapes", {}).items():
        assert list(f.state_dict[k].shape) == shape

    assert (path.read_bytes(), path.stat().st_mtime_ns) == before  # reading never touches the file


@pytest.mark.slow
def test_inspect_json_on_every_fixture(fixtures_dir, index):
    paths = [str(fixtures_dir / n) for n in sorted(index)]
    r = run_cli("inspect", "--json", *paths, in_process=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out) == len(paths)
    required = {
        "path",
        "kind",
        "version",
        "versions",
        "stage",
        "dtype",
        "num_tensors",
        "num_parameters",
        "header",
        "info",
        "sha256",
        "evidence",
        "warnings",
    }
    for d, name in zip(out, sorted(index)):
        want = index[name]
        assert required <= set(d)
        assert d["kind"] == KIND_NAMES[want["kind"]]
        assert d["sha256"] == want["sha256"]
        assert d["header"] == want["header_2_bytes_ascii"]
        assert d["stage"] == ("gpt" if want["kind"].startswith("gpt") else "sovits")
        assert d["dtype"] == (want.get("weight") or want.get("model") or want.get("state_dict"))["dtypes"][0]
        assert d["info"] == want.get("info")
        assert d["evidence"] and isinstance(d["warnings"], list)


def test_inspect_table_names_kind_version_and_evidence(fixtures_dir):
    r = run_cli("inspect", str(fixtures_dir / "SoVITS_weights_v2Pro" / "gsvfix_e1_s2.pth"), in_process=True)
    assert r.returncode == 0, r.stderr
    for text in ("sovits-export", "v2Pro", "header tag '05'", "1epoch_2iteration", "c1332dc0b8883ff1"):
        assert text in r.stdout.replace("\n", "").replace("│", "").replace(" ", "") or text in r.stdout


def test_small_pk_v2_export_is_not_called_v1(fixtures_dir):
    """Upstream's size rule calls this file v1 (#2784); the shapes say v2."""
    f = read(fixtures_dir / "SoVITS_weights_v2" / "gsvfix_e1_s2.pth")
    assert f.version == "v2"
    assert any("732 rows" in e for e in f.evidence)
