"""Untagged v1/v2 SoVITS exports are told apart by GPT-SoVITS from their FILE SIZE: ours must land
on the right side of every size line (FORMATS 2.3, 2.4), and the v2 padding must be invisible.

The two upstream rules are re-implemented here from FORMATS (not imported from gsv_ray), so the
writer is checked against the documented behaviour, not against its own constants.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict

import pytest
import torch

from gsv_ray.io import read
from gsv_ray.io.inspect import describe
from gsv_ray.io.writers import (
    PAD_KEY,
    _torch_save,
    _UpstreamPickleModule,
    atomic_write,
    v2_padded_size,
    write_sovits_export,
)
from tests.conftest import run_cli
from tests.support.schemafiles import SchemaFiles, _upstream_utils_module

KiB, MiB = 1024, 1024 * 1024
MARGIN = 1 * MiB
#: upstream head2version (FORMATS 2.3): tag -> model_version
HEAD2VERSION = {b"00": "v1", b"01": "v2", b"02": "v3", b"03": "v3", b"04": "v4", b"05": "v2Pro", b"06": "v2ProPlus"}


def upstream_fast_version(path) -> str:
    """``process_ckpt.get_sovits_version_from_path_fast`` for a file that is not an official base
    (no MD5 match): the header tag if any, else the size rule. Returns the model version."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head != b"PK":
        return HEAD2VERSION[head]
    size = os.path.getsize(path)
    if size < 82978 * KiB:
        return "v1"
    if size < 700 * MiB:
        return "v2"
    return "v3"


def semantic_version(path) -> str:
    """``prepare_datasets/3-get-semantic.py``: size only, headers ignored."""
    size = os.path.getsize(path)
    if size < 82978 * KiB:
        return "v1"
    if size < 100 * MiB:
        return "v2"
    if size < 103520 * KiB:
        return "v1"
    if size < 700 * MiB:
        return "v2"
    return "v3"


@pytest.fixture(scope="module")
def gen(schemas_dir, tmp_path_factory):
    return SchemaFiles(schemas_dir, tmp_path_factory.mktemp("size_schema"))


@pytest.fixture(scope="module")
def full_v2(gen, tmp_path_factory):
    """A full-size v2 generator (enc_q included, as training holds it), its export and the export
    written without padding (the same bytes upstream's my_save would hold)."""
    sd = gen.tensors(gen._g_schema("v2"), torch.float32)
    cfg = gen.s2_config("v2")
    d = tmp_path_factory.mktemp("full_v2")
    padded = write_sovits_export(d / "exp_e8_s200.pth", sd, config=cfg, info="8epoch_200iteration", version="v2")
    plain = _write_unpadded(d / "unpadded.pth", sd, cfg, "8epoch_200iteration")
    yield sd, padded, plain
    for p in (padded, plain):
        p.unlink(missing_ok=True)


def _write_unpadded(path, sd, cfg, info):
    from gsv_ray.io.writers import HParams, _fp16

    obj = OrderedDict(weight=_fp16(sd, drop=lambda k: "enc_q" in k), config=HParams(cfg), info=info)
    return atomic_write(path, _torch_save(obj, None, _UpstreamPickleModule))


def _narrow_sd(version: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    rows, bins = (322, 1025) if version == "v1" else (732, 704)
    return {
        "enc_p.text_embedding.weight": torch.randn(rows, 8, generator=g),
        "ref_enc.spectral.0.fc.weight": torch.randn(8, bins, generator=g),
        "dec.conv_pre.weight": torch.randn(8, 8, 7, generator=g),
        "enc_q.pre.weight": torch.randn(8, 8, 1, generator=g),  # dropped by the export
    }


def _upstream_load(path):
    """Plain ``torch.load(weights_only=True)``, with upstream's ``utils.HParams`` allowed (what the
    config pickles as). Only works for untagged files, like upstream's training scripts."""
    hp = _upstream_utils_module().HParams
    with torch.serialization.safe_globals([hp]):
        return torch.load(path, map_location="cpu", weights_only=True)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


def _sparse_supported(tmp_path) -> bool:
    p = tmp_path / "sparse_probe"
    with open(p, "wb") as f:
        f.truncate(8 * MiB)
    ok = p.stat().st_blocks * 512 < 1 * MiB
    p.unlink()
    return ok


# -- sizes ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_size_v2_export_clears_the_v1_line(full_v2):
    _, padded, plain = full_v2
    size = os.path.getsize(padded)
    assert os.path.getsize(plain) >= 82978 * KiB  # upstream-sized: only ~21 KB above the line
    assert 82978 * KiB + MARGIN <= size < 82978 * KiB + MARGIN + 64 * KiB  # padded to the target, no more
    assert size < 100 * MiB  # never pushed into 3-get-semantic's [100 MiB, 103520 KiB) "v1" window
    assert upstream_fast_version(padded) == "v2"
    assert semantic_version(padded) == "v2"
    assert open(padded, "rb").read(4) == b"PK\x03\x04"  # a plain zip, loadable everywhere


@pytest.mark.slow
def test_full_size_v1_export_stays_below_the_line(gen, tmp_path):
    sd = gen.tensors(gen._g_schema("v1"), torch.float32)
    p = write_sovits_export(
        tmp_path / "v1.pth", sd, config=gen.s2_config("v1"), info="8epoch_200iteration", version="v1"
    )
    assert os.path.getsize(p) < 82978 * KiB
    assert upstream_fast_version(p) == "v1" and semantic_version(p) == "v1"
    assert list(_upstream_load(p)) == ["weight", "config", "info"]  # no padding in v1 exports
    p.unlink()


def test_narrow_v2_export_says_v2_and_is_sparse(tmp_path):
    p = write_sovits_export(
        tmp_path / "n.pth",
        _narrow_sd("v2"),
        config={"model": {"version": "v2"}},
        info="1epoch_2iteration",
        version="v2",
    )
    st = p.stat()
    assert 82978 * KiB + MARGIN <= st.st_size < 100 * MiB
    assert upstream_fast_version(p) == "v2" and semantic_version(p) == "v2"
    if _sparse_supported(tmp_path):
        assert st.st_blocks * 512 < 1 * MiB, "the zero padding should be a hole, not written zeros"
    obj = _upstream_load(p)
    assert list(obj) == ["weight", "config", "info", PAD_KEY]
    assert obj[PAD_KEY].dtype == torch.float16 and not _bits(obj[PAD_KEY]).any()  # all-zero bytes


def _disk(p) -> int:
    return os.stat(p).st_blocks * 512


def test_trial_and_best_copies_keep_the_padding_sparse(tmp_path):
    """A trial's export reaches -o through Ray's checkpoint upload (pyarrow's copy_files, which
    writes the padding's zeros out: 86 MB on disk for a 1 MB export) and then ``place_outputs``
    (moved from local storage, copied from remote); ``best/`` is made from it. Every copy keeps the
    padding a hole and reads back bit-identically; the W&B artifact naming a placed file sees the
    same bytes."""
    from pyarrow.fs import LocalFileSystem, copy_files

    from gsv_ray.distributed.launch import place_outputs

    if not _sparse_supported(tmp_path):
        pytest.skip("no sparse files on this filesystem")
    scratch = tmp_path / "scratch" / "run" / "SoVITS_weights_v2"
    export = write_sovits_export(
        scratch / "t_e1_s2.pth",
        _narrow_sd("v2"),
        config={"model": {"version": "v2"}},
        info="1epoch_2iteration",
        version="v2",
    )
    data = export.read_bytes()
    assert _disk(export) < 1 * MiB < len(data)
    for move in (True, False):
        storage = tmp_path / f"storage-{move}" / "final" / "run"
        storage.parent.mkdir(parents=True)
        copy_files(
            str(export.parent.parent),
            str(storage),
            source_filesystem=LocalFileSystem(),
            destination_filesystem=LocalFileSystem(),
        )  # what Ray's checkpoint upload does
        assert _disk(storage / "SoVITS_weights_v2" / export.name) >= len(data) // 2  # the zeros written out
        out = tmp_path / f"out-{move}" / "trials" / "t1"
        stale = out / "SoVITS_weights_v2" / export.name  # the worker's hard link of its export (W&B names it)
        stale.parent.mkdir(parents=True)
        os.link(export, stale)
        place_outputs(storage, out, move=move)
        placed = out / "SoVITS_weights_v2" / export.name
        assert placed.read_bytes() == data and _disk(placed) < 1 * MiB, (move, _disk(placed))
        assert export.read_bytes() == data and _disk(export) < 1 * MiB  # replaced by rename, not written into
        from gsv_ray.atomic import link_or_copy

        best = link_or_copy(placed, out.parent.parent / "best" / "SoVITS_weights_v2" / export.name)
        assert best.read_bytes() == data and _disk(best) < 1 * MiB
        assert list(_upstream_load(best)) == ["weight", "config", "info", PAD_KEY]


def test_narrow_v1_export_is_not_padded(tmp_path):
    p = write_sovits_export(
        tmp_path / "n1.pth",
        _narrow_sd("v1"),
        config={"model": {"version": "v1"}},
        info="1epoch_2iteration",
        version="v1",
    )
    assert os.path.getsize(p) < 1 * MiB
    assert upstream_fast_version(p) == "v1" and semantic_version(p) == "v1"


@pytest.mark.parametrize(
    ("version", "rank", "tag"), [("v2Pro", None, b"05"), ("v2ProPlus", None, b"06"), ("v4", 32, b"04")]
)
def test_tagged_exports_are_not_padded(version, rank, tag, tmp_path):
    sd = {"enc_p.text_embedding.weight": torch.randn(732, 8), "sv_emb.weight": torch.randn(8, 16)}
    if rank:
        lora_a = "cfm.base_model.model.estimator.transformer_blocks.0.attn.to_q.lora_A.default.weight"
        sd = {lora_a: torch.randn(rank, 8)}
    p = write_sovits_export(
        tmp_path / "t.pth",
        sd,
        config={"model": {"version": version}},
        info="1epoch_2iteration",
        version=version,
        lora_rank=rank,
    )
    assert open(p, "rb").read(2) == tag and os.path.getsize(p) < 1 * MiB
    assert upstream_fast_version(p) == version
    assert PAD_KEY not in read(p).extra


def test_v2_export_naturally_in_the_100MiB_window_is_padded_past_it(tmp_path):
    """3-get-semantic calls [100 MiB, 103520 KiB) "v1": a (widened) v2 export that large is padded past it."""
    n = (100 * MiB + 512 * KiB) // 2  # fp16 elements: ~100.5 MiB of weights
    sd = {"enc_p.text_embedding.weight": torch.randn(732, 8), "dec.big.weight": torch.zeros(n)}
    p = write_sovits_export(
        tmp_path / "w.pth", sd, config={"model": {"version": "v2"}}, info="1epoch_2iteration", version="v2"
    )
    size = os.path.getsize(p)
    assert 103520 * KiB + MARGIN <= size < 103520 * KiB + MARGIN + 64 * KiB
    assert upstream_fast_version(p) == "v2" and semantic_version(p) == "v2"
    obj = _upstream_load(p)
    assert list(obj) == ["weight", "config", "info", PAD_KEY] and obj["weight"]["dec.big.weight"].numel() == n
    del obj
    p.unlink()


def test_v2_padded_size_targets():
    low, high = 82978 * KiB + MARGIN, 103520 * KiB + MARGIN
    assert v2_padded_size(1000) == v2_padded_size(82978 * KiB - 1) == v2_padded_size(low - 1) == low
    assert v2_padded_size(low) is None and v2_padded_size(100 * MiB - 1) is None  # never pushed to >= 100 MiB
    assert v2_padded_size(100 * MiB) == v2_padded_size(high - 1) == high
    assert v2_padded_size(high) is None and v2_padded_size(700 * MiB) is None  # >= 700 MiB: "v3", cannot help


# -- the padding is invisible -----------------------------------------------------------------------


@pytest.mark.slow
def test_padded_export_loads_plainly_with_identical_weights(full_v2):
    sd, padded, plain = full_v2
    a, b = _upstream_load(padded), _upstream_load(plain)
    assert list(a)[:3] == ["weight", "config", "info"] and list(a) == ["weight", "config", "info", PAD_KEY]
    assert not _bits(a[PAD_KEY]).any()
    assert a["info"] == b["info"] == "8epoch_200iteration"
    assert vars(a["config"]).keys() == vars(b["config"]).keys() and a["config"].model.version == "v2"
    assert list(a["weight"]) == list(b["weight"]) == [k for k in sd if "enc_q" not in k]
    for k, t in b["weight"].items():
        assert t.dtype == a["weight"][k].dtype == torch.float16
        assert torch.equal(_bits(a["weight"][k]), _bits(t)), k
        assert torch.equal(_bits(t), _bits(sd[k].half())), k


@pytest.mark.slow
def test_padded_export_reads_like_the_unpadded_one(full_v2):
    _, padded, plain = full_v2
    a, b = read(padded), read(plain)
    assert (a.kind, a.versions, a.header, a.info, a.epoch, a.step) == (
        "sovits-export",
        ["v2"],
        "PK",
        "8epoch_200iteration",
        8,
        200,
    )
    assert (b.kind, b.versions, b.header, b.info, b.config, b.config_type) == (
        a.kind,
        a.versions,
        a.header,
        a.info,
        a.config,
        a.config_type,
    )
    assert a.extra == {} and a.warnings == b.warnings and a.evidence == b.evidence
    assert list(a.state_dict) == list(b.state_dict)
    for k, t in b.state_dict.items():
        assert torch.equal(_bits(a.state_dict[k]), _bits(t)), k


@pytest.mark.slow
def test_inspect_reports_the_padded_file_like_the_unpadded_one(full_v2):
    _, padded, plain = full_v2
    a, b = describe(str(padded)), describe(str(plain))
    assert a["size_bytes"] == os.path.getsize(padded)
    for d in (a, b):
        for k in ("path", "size_bytes", "sha256"):
            d.pop(k)
    assert a == b
    assert (a["kind"], a["version"], a["num_tensors"], a["has_optimizer"]) == ("sovits-export", "v2", 673, False)


def test_inspect_cli_on_a_padded_export(tmp_path):
    p = write_sovits_export(
        tmp_path / "n.pth",
        _narrow_sd("v2"),
        config={"model": {"version": "v2"}},
        info="1epoch_2iteration",
        version="v2",
    )
    r = run_cli("inspect", "--json", str(p), in_process=True)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["kind"], d["version"], d["header"], d["num_tensors"], d["info"]) == (
        "sovits-export",
        "v2",
        "PK",
        3,
        "1epoch_2iteration",
    )
    assert d["warnings"] == [] and d["has_optimizer"] is False and d["size_bytes"] == os.path.getsize(p)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_exports_honour_the_umask(umask, mode, tmp_path):
    """Outputs are created like any new file (temp file + rename used to keep mkstemp's 0600, hiding
    exports from GPT-SoVITS running as another user)."""
    old = os.umask(umask)
    try:
        path = write_sovits_export(
            tmp_path / "v_e1_s1.pth",
            _narrow_sd("v1"),
            config={"model": {"version": "v1"}},
            info="1epoch_1iteration",
            version="v1",
        )
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
