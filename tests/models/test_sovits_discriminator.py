"""SoVITS multi-period discriminator: upstream key layout, golden numerics, fixture checkpoint.

References (see ``goldens/README.md`` section 3): GPT-SoVITS's ``MultiPeriodDiscriminator`` run on
``in.y`` / ``in.y_hat`` with rule-generated weights. Each golden output is its own test.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gsv_ray.models.sovits.discriminator import (
    MultiPeriodDiscriminator,
    PeriodDiscriminator,
    ScaleDiscriminator,
    periods_for_version,
)
from tests.support.goldens import assert_close_golden, load_io, manifest_state_dict, rule_tensor

VERSIONS = ("v1", "v2", "v2Pro", "v2ProPlus")


def _d_output_names(indices: range) -> list[str]:
    """Every ``out.*`` name the D goldens store for the given sub-discriminator indices."""
    names = []
    for i in indices:
        n_maps = 7 if i == 0 else 6  # scale D: 6 convs + conv_post; period D: 5 convs + conv_post
        names += [f"out.y_d_rs.{i}", f"out.y_d_gs.{i}"]
        names += [f"out.{side}.{i}.{j}" for side in ("fmap_rs", "fmap_gs") for j in range(n_maps)]
    return names


D_V2_OUTPUTS = _d_output_names(range(6))
D_V2PRO_OUTPUTS = _d_output_names(range(6, 8))


def _flatten_outputs(outs) -> dict[str, torch.Tensor]:
    y_d_rs, y_d_gs, fmap_rs, fmap_gs = outs
    flat = {}
    for i in range(len(y_d_rs)):
        flat[f"out.y_d_rs.{i}"] = y_d_rs[i]
        flat[f"out.y_d_gs.{i}"] = y_d_gs[i]
        for side, fmaps in (("fmap_rs", fmap_rs), ("fmap_gs", fmap_gs)):
            for j, f in enumerate(fmaps[i]):
                flat[f"out.{side}.{i}.{j}"] = f
    return flat


def _meta_model(version: str, **kwargs) -> MultiPeriodDiscriminator:
    with torch.device("meta"):
        return MultiPeriodDiscriminator(version, **kwargs)


def _partial_manifest(path: Path, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Rule weights (SHA-verified) for only the manifest keys starting with ``prefixes``."""
    out = {}
    for e in json.loads(path.read_text())["tensors"]:
        if not e["key"].startswith(prefixes):
            continue
        arr = rule_tensor(e["key"], e["shape"], e["offset"], e["scale"])
        assert hashlib.sha256(np.ascontiguousarray(arr, dtype="<f4").tobytes()).hexdigest() == e["sha256_fp32_le"]
        out[e["key"]] = torch.from_numpy(arr)
    return out


# --------------------------------------------------------------------------- full-size layout


@pytest.mark.parametrize("version", VERSIONS)
def test_full_size_state_dict_matches_schema(schemas_dir, version):
    schema = json.loads((schemas_dir / f"sovits_D_{version}.json").read_text())
    want = schema["state_dict"]
    sd = _meta_model(version).state_dict()  # meta device: shapes only, no 60M-element init
    assert list(sd) == list(want), "state_dict keys (or their order) differ from upstream"
    for k, t in sd.items():
        assert list(t.shape) == want[k]["shape"], k
        assert str(t.dtype).removeprefix("torch.") == want[k]["dtype"], k
    assert len(sd) == schema["num_state_dict_keys"]
    assert sum(t.numel() for t in sd.values()) == schema["num_parameters"]
    model = _meta_model(version)
    assert sum(p.numel() for p in model.parameters()) == schema["num_parameters"]
    assert sum(b.numel() for b in model.buffers()) == schema["num_buffer_elements"]


def test_versions_and_periods():
    assert periods_for_version("v1") == periods_for_version("v2") == (2, 3, 5, 7, 11)
    assert periods_for_version("v2Pro") == periods_for_version("v2ProPlus") == (2, 3, 5, 7, 11, 17, 23)
    d = _meta_model("v2Pro")
    assert isinstance(d.discriminators[0], ScaleDiscriminator)
    assert [m.period for m in d.discriminators[1:]] == [2, 3, 5, 7, 11, 17, 23]
    assert all(isinstance(m, PeriodDiscriminator) for m in d.discriminators[1:])
    with pytest.raises(ValueError):
        MultiPeriodDiscriminator("v4")


# --------------------------------------------------------------------------- goldens


@pytest.fixture(scope="module")
def d_v2_weights(goldens_dir) -> dict[str, torch.Tensor]:
    return manifest_state_dict(goldens_dir / "sovits_D_v2.weights.json")


@pytest.fixture(scope="module")
def d_v2_io(goldens_dir):
    return load_io(goldens_dir / "sovits_D_v2.io.safetensors")


@pytest.fixture(scope="module")
def d_v2pro_io(goldens_dir):
    return load_io(goldens_dir / "sovits_D_v2Pro.io.safetensors")


@pytest.fixture(scope="module")
def d_v2_outputs(d_v2_weights, d_v2_io) -> dict[str, torch.Tensor]:
    model = _meta_model("v2")
    model.load_state_dict(d_v2_weights, strict=True, assign=True)
    model.eval()
    with torch.no_grad():
        return _flatten_outputs(model(d_v2_io["in.y"], d_v2_io["in.y_hat"]))


@pytest.fixture(scope="module")
def d_v2pro_outputs(goldens_dir, d_v2_weights, d_v2pro_io) -> dict[str, torch.Tensor]:
    # Sub-discriminators 0..5 share keys (hence rule weights) with v2; only 6 and 7 are new.
    weights = dict(d_v2_weights)
    weights.update(
        _partial_manifest(goldens_dir / "sovits_D_v2Pro.weights.json", ("discriminators.6.", "discriminators.7."))
    )
    model = _meta_model("v2Pro")
    model.load_state_dict(weights, strict=True, assign=True)
    model.eval()
    with torch.no_grad():
        return _flatten_outputs(model(d_v2pro_io["in.y"], d_v2pro_io["in.y_hat"]))


@pytest.mark.slow
def test_golden_output_lists_are_complete(d_v2_io, d_v2pro_io, d_v2_outputs):
    assert sorted(k for k in d_v2_io if k.startswith("out.")) == sorted(D_V2_OUTPUTS)
    assert sorted(k for k in d_v2pro_io if k.startswith("out.")) == sorted(D_V2PRO_OUTPUTS)
    assert sorted(d_v2_outputs) == sorted(D_V2_OUTPUTS)


@pytest.mark.parametrize("name", D_V2_OUTPUTS, ids=D_V2_OUTPUTS)
def test_golden_d_v2(name, d_v2_outputs, d_v2_io):
    assert_close_golden(name, d_v2_outputs[name], d_v2_io[name])


@pytest.mark.parametrize("name", D_V2PRO_OUTPUTS, ids=D_V2PRO_OUTPUTS)
def test_golden_d_v2pro(name, d_v2pro_outputs, d_v2pro_io):
    assert_close_golden(name, d_v2pro_outputs[name], d_v2pro_io[name])


# --------------------------------------------------------------------------- fixture checkpoint


def test_fixture_checkpoint_loads_strictly_with_narrow_widths(fixtures_dir, d_v2_io):
    ckpt = torch.load(fixtures_dir / "logs/gsvfix/logs_s2_v2/D_233333333333.pth", weights_only=True)
    sd = ckpt["model"]
    model = MultiPeriodDiscriminator("v2", width_divisor=32)
    assert list(model.state_dict()) == list(sd)
    model.load_state_dict(sd, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # Narrowed scale discriminator as the fixture rule describes: 1->1->2->8->32(g2)->32(g8)->32->1.
    s = model.discriminators[0]
    assert [(c.in_channels, c.out_channels, c.groups) for c in s.convs] == [
        (1, 1, 1),
        (1, 2, 1),
        (2, 8, 1),
        (8, 32, 2),
        (32, 32, 8),
        (32, 32, 1),
    ]
    model.eval()
    with torch.no_grad():
        y_d_rs, y_d_gs, fmap_rs, fmap_gs = model(d_v2_io["in.y"], d_v2_io["in.y_hat"])
    assert len(y_d_rs) == len(fmap_gs) == 6
    assert all(torch.isfinite(t).all() for t in y_d_rs + y_d_gs)


def test_narrow_discriminator_trains(fixtures_dir):
    """Gradients reach every weight-norm parameter (g and v), as the D update step needs."""
    sd = torch.load(fixtures_dir / "logs/gsvfix/logs_s2_v2/D_233333333333.pth", weights_only=True)["model"]
    model = MultiPeriodDiscriminator("v2", width_divisor=32)
    model.load_state_dict(sd, strict=True)
    gen = torch.Generator().manual_seed(0)
    y = torch.rand(1, 1, 512, generator=gen) * 1.6 - 0.8
    y_hat = torch.rand(1, 1, 512, generator=gen) * 1.6 - 0.8
    y_d_rs, y_d_gs, _, _ = model(y, y_hat)
    loss = sum(torch.mean((1 - r) ** 2) + torch.mean(g**2) for r, g in zip(y_d_rs, y_d_gs))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_custom_periods_override_version():
    d = _meta_model("v2", periods=[3, 7])
    assert [m.period for m in d.discriminators[1:]] == [3, 7]
    # (bias, weight_g, weight_v) per conv: scale D has 6 convs + post, each period D 5 + post.
    assert len(d.state_dict()) == 3 * 7 + 2 * 3 * 6
