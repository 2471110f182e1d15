"""SoVITS generator (v1/v2/v2Pro/v2ProPlus): upstream key/shape compatibility, numeric goldens,
and loading GPT-SoVITS's own files (real fixtures, narrowed widths)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from gsv_ray.models.sovits import SemanticExtractor, SoVITSConfig, SoVITSGenerator
from gsv_ray.models.sovits.config import VITS_VERSIONS
from tests.conftest import find_reference_dir
from tests.support.goldens import assert_close_golden, load_io, manifest_state_dict

VERSIONS = list(VITS_VERSIONS)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64}


# ---------------------------------------------------------------- schema (full size)
@pytest.mark.parametrize("version", VERSIONS)
def test_full_size_state_dict_matches_schema(version: str, schemas_dir: Path) -> None:
    schema = json.loads((schemas_dir / f"sovits_G_{version}.json").read_text())
    model = SoVITSGenerator(SoVITSConfig.default(version))
    sd = model.state_dict()
    want = schema["state_dict"]
    assert set(sd) == set(want)
    assert list(sd) == list(want), "key order differs from upstream's state_dict order"
    for key, meta in want.items():
        assert list(sd[key].shape) == meta["shape"], key
        assert sd[key].dtype == _DTYPES[meta["dtype"]], key
    n_params = sum(p.numel() for p in model.parameters())
    n_buffers = sum(b.numel() for b in model.buffers())
    assert n_params == schema["num_parameters"]
    assert n_buffers == schema["num_buffer_elements"]
    # the constructor arguments upstream used are what our config derives from the packaged json
    args = schema["constructor_arguments"]
    cfg = model.config
    assert cfg.spec_channels == args["spec_channels"] and cfg.segment_frames == args["segment_size"]
    for key in (
        "inter_channels",
        "hidden_channels",
        "filter_channels",
        "gin_channels",
        "p_dropout",
        "upsample_initial_channel",
        "n_layers",
        "n_heads",
    ):
        assert getattr(cfg, key) == args[key], key
    assert list(cfg.upsample_kernel_sizes) == args["upsample_kernel_sizes"]


# ---------------------------------------------------------------- goldens
def _golden_output_names() -> list[tuple[str, str]]:
    ref = find_reference_dir()
    index = json.loads((ref / "goldens" / "INDEX.json").read_text())
    names = []
    for v in VERSIONS:
        entry = index["files"].get(f"sovits_G_{v}.io.safetensors", {})
        tensors = entry.get("tensors") or {}
        keys = (
            tensors.keys() if isinstance(tensors, dict) else [t["name"] if isinstance(t, dict) else t for t in tensors]
        )
        names += [(v, k) for k in sorted(keys) if k.startswith("out.")]
    return names


GOLDEN_CASES = _golden_output_names()


@functools.lru_cache(maxsize=None)
def _golden_run(version: str, goldens: str) -> dict[str, torch.Tensor]:
    """Build the small golden model, load the rule weights strictly, produce every ``out.*``."""
    gdir = Path(goldens)
    cfg = SoVITSConfig.from_s2_config(json.loads((gdir / f"sovits_G_{version}.config.json").read_text()), version)
    model = SoVITSGenerator(cfg)
    model.load_state_dict(manifest_state_dict(gdir / f"sovits_G_{version}.weights.json"), strict=True)
    model.eval()
    inp = load_io(gdir / "sovits_G_inputs.safetensors")
    inp.update({k: v for k, v in load_io(gdir / f"sovits_G_{version}.io.safetensors").items() if k.startswith("in.")})
    pro = cfg.is_pro
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        codes = model.extract_latent(inp["in.ssl"])
        out["out.extract_latent.codes"] = codes
        out["out.extract_latent.ssl_proj"] = model.ssl_proj(inp["in.ssl"])
        out["out.quantizer_decode"] = model.quantizer.decode(codes)

        sv = inp["in.sv_emb"] if pro else None
        trace = model.decode_latent(codes, inp["in.text"], inp["in.refer"], noise_scale=0.0, sv_emb=sv)
        out["out.decode.audio"] = model.decode(codes, inp["in.text"], inp["in.refer"], noise_scale=0.0, sv_emb=sv)
        out["out.decode.ge"] = trace.ge
        if pro:
            ones = torch.ones(1, 1, inp["in.refer"].size(2))
            out["out.decode.ge_ref_enc"] = model.ref_enc(inp["in.refer"][:, :704] * ones, ones)
            out["out.decode.sv_emb_proj"] = model.sv_emb(sv)
            out["out.decode.ge_512"] = trace.ge_text
        for name in ("x", "m_p", "logs_p", "y_mask"):
            out[f"out.decode.enc_p.{name}"] = getattr(trace, name)
        out["out.decode.flow_out.z"] = trace.z

        refs = [inp["in.refer"], inp["in.refer2"]]
        svs = [inp["in.sv_emb"], inp["in.sv_emb2"]] if pro else None
        out["out.decode_multiref.audio"] = model.decode(codes, inp["in.text"], refs, noise_scale=0.0, sv_emb=svs)
        out["out.decode_speed1.25.audio"] = model.decode(
            codes, inp["in.text"], inp["in.refer"], noise_scale=0.0, speed=1.25, sv_emb=sv
        )
        out["out.decode_noise0.5.audio"] = model.decode(
            codes, inp["in.text"], inp["in.refer"], noise_scale=0.5, sv_emb=sv, noise=inp["in.decode_noise.eps"]
        )

        out["out.flow.forward"] = model.flow(inp["in.flow.z"], inp["in.flow.x_mask"], g=inp["in.flow.g"])
        out["out.flow.reverse"] = model.flow(inp["in.flow.z"], inp["in.flow.x_mask"], g=inp["in.flow.g"], reverse=True)
        out["out.dec"] = model.dec(inp["in.dec.z"], g=inp["in.dec.g"])

        x, m_p, logs_p, y_mask = model.enc_p(
            inp["in.enc_p.y"],
            inp["in.enc_p.y_lengths"],
            inp["in.enc_p.text"],
            inp["in.enc_p.text_lengths"],
            inp["in.enc_p.ge"],
        )
        out.update({"out.enc_p.x": x, "out.enc_p.m_p": m_p, "out.enc_p.logs_p": logs_p, "out.enc_p.y_mask": y_mask})

        spec, lengths = inp["in.ref_enc.spec"], inp["in.ref_enc.lengths"]
        mask = (torch.arange(spec.size(2)).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(1).float()
        out["out.ref_enc.ge"] = model.ref_enc(spec[:, : cfg.ref_in_channels] * mask, mask)

        fwd = model(
            inp["in.fwd.ssl"],
            inp["in.fwd.spec"],
            inp["in.fwd.spec_lengths"],
            inp["in.fwd.text"],
            inp["in.fwd.text_lengths"],
            inp["in.fwd.sv_emb"] if pro else None,
            eps=inp["in.fwd.enc_q_eps"],
            slice_u=inp["in.fwd.slice_u"],
        )
        out["out.fwd.y_hat"] = fwd.y_hat
        out["out.fwd.kl_ssl"] = fwd.kl_ssl.reshape(1)
        out["out.fwd.ids_slice"] = fwd.ids_slice
        out["out.fwd.y_mask"] = fwd.x_mask
        for name in ("z", "z_p", "m_p", "logs_p", "m_q", "logs_q"):
            out[f"out.fwd.{name}"] = getattr(fwd.stats, name)
        out["out.fwd.codes"] = model.extract_latent(inp["in.fwd.ssl"])
    return out


@functools.lru_cache(maxsize=None)
def _golden_want(version: str, goldens: str) -> dict[str, torch.Tensor]:
    return load_io(Path(goldens) / f"sovits_G_{version}.io.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize(("version", "name"), GOLDEN_CASES, ids=[f"{v}-{n}" for v, n in GOLDEN_CASES])
def test_golden_output(version: str, name: str, goldens_dir: Path) -> None:
    want = _golden_want(version, str(goldens_dir))
    assert name in want, f"{name} not in golden file"
    got = _golden_run(version, str(goldens_dir))
    assert name in got, f"no producer for {name}"
    assert_close_golden(f"{version} {name}", got[name], want[name])


# ---------------------------------------------------------------- semantic module
@pytest.mark.parametrize("schema_name", ["sovits_G_v3", "sovits_G_v4", "sovits_G_v2"])
def test_semantic_module_matches_schema(schema_name: str, schemas_dir: Path) -> None:
    want = json.loads((schemas_dir / f"{schema_name}.json").read_text())["state_dict"]
    want = {k: v for k, v in want.items() if k.startswith(("ssl_proj.", "quantizer."))}
    sd = SemanticExtractor().state_dict()
    assert list(sd) == list(want)
    for key, meta in want.items():
        assert list(sd[key].shape) == meta["shape"] and sd[key].dtype == _DTYPES[meta["dtype"]], key


def test_semantic_module_reproduces_golden_codes(goldens_dir: Path) -> None:
    full = manifest_state_dict(goldens_dir / "sovits_G_v2.weights.json")
    ext = SemanticExtractor().eval()
    result = ext.load_semantic_state_dict(full, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    inp = load_io(goldens_dir / "sovits_G_inputs.safetensors")
    want = load_io(goldens_dir / "sovits_G_v2.io.safetensors")
    assert torch.equal(ext.extract_latent(inp["in.ssl"]), want["out.extract_latent.codes"])
    assert torch.equal(ext.extract_latent(inp["in.fwd.ssl"]), want["out.fwd.codes"])


def test_uninitialised_codebook_runs_kmeans_once() -> None:
    torch.manual_seed(0)
    ext = SemanticExtractor(ssl_dim=8, codebook_size=4).eval()
    assert not ext.is_initialised
    ssl = torch.randn(2, 8, 40)
    codes = ext.extract_latent(ssl)
    assert ext.is_initialised and codes.shape == (2, 1, 20)
    codebook = ext.quantizer.vq.layers[0]._codebook
    assert codebook.embed.abs().sum() > 0 and torch.equal(codebook.embed, codebook.embed_avg)
    embed = codebook.embed.clone()
    assert torch.equal(ext.extract_latent(ssl), codes)
    assert torch.equal(codebook.embed, embed)  # eval mode: no second init, no EMA update


# ---------------------------------------------------------------- real GPT-SoVITS files
def _read(path: Path):
    from gsv_ray import io

    return io.read(path)


def _narrowed(fixtures_dir: Path, version: str, model_cfg: dict | None = None) -> SoVITSConfig:
    """Config of a fixture model: its s2 config plus the hard-coded widths the fixtures narrowed."""
    index = json.loads((fixtures_dir / "INDEX.json").read_text())
    s2 = model_cfg or index["small_configs"]["sovits_s2_json"][version]
    overrides = index["small_configs"]["width_overrides"]["sovits_v1_v2_v2Pro_v2ProPlus"]
    assert "hidden_size=16" in overrides["enc_p_mrte"] and "style_hidden=16" in overrides["ref_enc"]
    return SoVITSConfig.from_s2_config(
        s2, version, mrte_hidden_channels=16, mrte_heads=4, ref_hidden_channels=16, ge_text_channels=16
    )


EXPORT_DIRS = {
    "v1": "SoVITS_weights",
    "v2": "SoVITS_weights_v2",
    "v2Pro": "SoVITS_weights_v2Pro",
    "v2ProPlus": "SoVITS_weights_v2ProPlus",
}


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_export_fixture_loads_into_model_minus_enc_q(version: str, fixtures_dir: Path) -> None:
    f = _read(fixtures_dir / EXPORT_DIRS[version] / "gsvfix_e1_s2.pth")
    assert f.config is not None
    model = SoVITSGenerator(_narrowed(fixtures_dir, version, f.config))
    ours = model.state_dict()
    result = model.load_state_dict(f.state_dict, strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == sorted(k for k in ours if k.startswith("enc_q."))
    assert list(f.state_dict) == [k for k in ours if not k.startswith("enc_q.")], "export key order"
    for key, value in f.state_dict.items():
        assert torch.equal(model.state_dict()[key], value.float()), key

    # the loaded (narrowed, fp16-trained) model runs end to end
    model.eval()
    torch.manual_seed(0)
    ssl = torch.randn(1, 768, 20)
    codes = model.extract_latent(ssl)
    assert codes.shape == (1, 1, 10) and int(codes.max()) < 1024
    sv = torch.randn(1, 20480) if model.is_pro else None
    audio = model.decode(codes, torch.randint(1, 300, (1, 7)), torch.rand(1, 1025, 30), sv_emb=sv)
    assert audio.shape == (1, 1, 20 * 640) and torch.isfinite(audio).all()


def _g_checkpoint_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        from gsv_ray.io import read
    except ImportError:  # reader not there yet: a G checkpoint is weights-only loadable
        return torch.load(path, map_location="cpu", weights_only=True)["model"]
    return read(path).state_dict


@pytest.mark.slow
def test_g_checkpoint_fixture_loads_strictly_and_trains(fixtures_dir: Path) -> None:
    sd = _g_checkpoint_state_dict(fixtures_dir / "logs/gsvfix/logs_s2_v2/G_233333333333.pth")
    model = SoVITSGenerator(_narrowed(fixtures_dir, "v2"))
    assert list(sd) == list(model.state_dict()), "checkpoint key order"
    model.load_state_dict(sd, strict=True)

    # one training forward/backward: the frozen quantizer passes no gradient to ssl_proj
    model.train()
    assert not model.quantizer.training and not model.ssl_proj.training and model.enc_p.training
    torch.manual_seed(0)
    lengths = torch.tensor([40, 36])
    out = model(
        torch.randn(2, 768, 40), torch.rand(2, 1025, 40), lengths, torch.randint(1, 300, (2, 12)), torch.tensor([12, 7])
    )
    y_hat, kl_ssl, ids_slice, x_mask, z_mask, (z, z_p, m_p, logs_p, m_q, logs_q), quantized = out
    assert y_hat.shape == (2, 1, 32 * 640) and float(kl_ssl) == 0.0
    assert bool(((ids_slice >= 0) & (ids_slice <= lengths - 32)).all())
    (y_hat.square().mean() + (z_p - m_p).square().mean()).backward()
    assert model.ssl_proj.weight.grad is None and model.ssl_proj.bias.grad is None
    assert model.enc_p.text_embedding.weight.grad is not None
    assert model.enc_q.enc.cond_layer.weight_v.grad is not None
    assert model.ref_enc.fc.fc.weight.grad is not None


def test_v4_lora_fixture_quantizer_loads_into_semantic_module(fixtures_dir: Path) -> None:
    f = _read(fixtures_dir / "SoVITS_weights_v4/gsvfix_e1_s2_l32.pth")
    ext = SemanticExtractor()
    result = ext.load_semantic_state_dict(f.state_dict, strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == ["ssl_proj.bias", "ssl_proj.weight"]
    sd = ext.state_dict()
    buffers = [k for k in f.state_dict if k.startswith("quantizer.")]
    assert len(buffers) == 4
    for key in buffers:
        assert torch.equal(sd[key], f.state_dict[key].float()), key
    assert ext.is_initialised


def test_config_round_trips_model_section() -> None:
    for version in VERSIONS:
        cfg = SoVITSConfig.default(version)
        again = SoVITSConfig.from_s2_config({"model": cfg.model_section()}, spec_channels=cfg.spec_channels)
        assert again == cfg
