"""The rebuild step: every target key gets exactly one fate, as FORMATS says it should, for the
fixtures written by GPT-SoVITS and for full-size files of every version."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from gsv_ray.errors import GsvError
from gsv_ray.io import read
from gsv_ray.models.gpt import T2SConfig, Text2SemanticDecoder
from gsv_ray.models.sovits import MultiPeriodDiscriminator, SemanticExtractor, SoVITSGenerator
from gsv_ray.rebuild import RebuildSpec, build_models, load_result, rebuild, rebuild_cached
from gsv_ray.rebuild.report import FILLED_FROM_BASE, INITIALISED, LOADED

VITS = ["v1", "v2", "v2Pro", "v2ProPlus"]
G_KEYS = {"v1": 776, "v2": 776, "v2Pro": 781, "v2ProPlus": 781}
D_KEYS = {"v1": 111, "v2": 111, "v2Pro": 147, "v2ProPlus": 147}
ENC_Q = 103


def fates(result, target="generator") -> dict[str, str]:
    return {k: f.fate for k, f in result.report.targets[target].items()}


def by_prefix(result, target="generator") -> Counter:
    return Counter((k.split(".")[0], f.fate) for k, f in result.report.targets[target].items())


def assert_loads_strictly(result):
    """The rebuilt weights load strictly into fresh models built from the resolved config."""
    models = build_models(result.resolved)
    for name, module in models.items():
        module.load_state_dict(result.weights[name], strict=True)
        assert all(t.dtype == torch.float32 for t in result.weights[name].values())


# -- fixtures ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("version", VITS)
def test_fixture_export_train_without_base(version, fixtures_dir):
    sub = "SoVITS_weights" if version == "v1" else f"SoVITS_weights_{version}"
    torch.manual_seed(1234)
    rng = torch.random.get_rng_state()
    r = rebuild(fixtures_dir / sub / "gsvfix_e1_s2.pth")
    assert torch.equal(torch.random.get_rng_state(), rng)  # enc_q and D initialised at their own seed (was: reseeded)
    f = fates(r)
    exported = len(read(fixtures_dir / sub / "gsvfix_e1_s2.pth").state_dict)
    assert Counter(f.values()) == {LOADED: exported, INITIALISED: ENC_Q}
    assert all(v == INITIALISED for k, v in f.items() if k.startswith("enc_q."))
    assert set(fates(r, "discriminator").values()) == {INITIALISED}
    assert len(r.report.targets["discriminator"]) == D_KEYS[version]
    assert any("discriminator starts from scratch" in n for n in r.report.notes)
    assert all("posterior encoder" in r.report.targets["generator"][k].reason for k in f if k.startswith("enc_q."))
    assert r.report.verdict == "ok" and r.version == version
    assert_loads_strictly(r)
    # loaded tensors are the file's values, cast to fp32
    src = read(fixtures_dir / sub / "gsvfix_e1_s2.pth").state_dict
    k = "enc_p.text_embedding.weight"
    assert torch.equal(r.generator[k], src[k].float())


@pytest.mark.slow
def test_fixture_export_with_base_g_and_d(fixtures_dir):
    g = fixtures_dir / "logs/gsvfix/logs_s2_v2/G_233333333333.pth"
    d = fixtures_dir / "logs/gsvfix/logs_s2_v2/D_233333333333.pth"
    torch.manual_seed(1234)
    rng = torch.random.get_rng_state()
    r = rebuild(fixtures_dir / "SoVITS_weights_v2/gsvfix_e1_s2.pth", base_g=g, base_d=d)
    assert torch.equal(torch.random.get_rng_state(), rng)  # built at its own seed; the caller's RNG untouched
    f = fates(r)
    assert Counter(f.values()) == {LOADED: 529, FILLED_FROM_BASE: ENC_Q}
    assert {k for k, v in f.items() if v == FILLED_FROM_BASE} == {k for k in f if k.startswith("enc_q.")}
    assert all(r.report.targets["generator"][k].source == str(g) for k in f if k.startswith("enc_q."))
    assert Counter(fates(r, "discriminator").values()) == {FILLED_FROM_BASE: 111}
    base = read(g).state_dict
    assert torch.equal(r.generator["enc_q.pre.weight"], base["enc_q.pre.weight"])
    # base keys that the export already had are reported as superseded, not silently ignored
    dropped = r.report.dropped[str(g)]
    assert len(dropped) == 529 and set(dropped.values()) == {"superseded by the init file"}
    assert not r.report.notes or not any("scratch" in n for n in r.report.notes)
    assert_loads_strictly(r)


def test_fixture_training_checkpoint_is_complete(fixtures_dir):
    r = rebuild(
        fixtures_dir / "logs/gsvfix/logs_s2_v2/G_233333333333.pth",
        config=read(fixtures_dir / "SoVITS_weights_v2/gsvfix_e1_s2.pth").config,
    )
    assert Counter(fates(r).values()) == {LOADED: 632}
    assert any("optimizer state is not used" in n for n in r.report.notes)


@pytest.mark.parametrize("name", ["GPT_weights_v2/gsvfix-e1.ckpt", "logs/gsvfix/logs_s1_v2/ckpt/epoch=0-step=6.ckpt"])
def test_fixture_gpt(name, fixtures_dir):
    r = rebuild(fixtures_dir / name)
    assert r.stage == "gpt" and Counter(fates(r, "gpt").values()) == {LOADED: 31}
    assert not any(k.startswith("model.") for k in r.gpt)
    assert_loads_strictly(r)


@pytest.mark.parametrize("version", VITS)
def test_fixture_semantic(version, fixtures_dir):
    sub = "SoVITS_weights" if version == "v1" else f"SoVITS_weights_{version}"
    r = rebuild(fixtures_dir / sub / "gsvfix_e1_s2.pth", task="semantic")
    assert Counter(fates(r).values()) == {LOADED: 6}
    assert set(r.generator) == set(SemanticExtractor().state_dict())
    harmless = r.report.harmless["generator"]
    assert len(harmless) == ENC_Q and all(k.startswith("enc_q.") for k in harmless)
    assert all("semantic extraction" in why for why in harmless.values())
    ex = SemanticExtractor()
    ex.load_state_dict(r.generator, strict=True)
    codes = ex.extract_latent(torch.randn(1, 768, 40, generator=torch.Generator().manual_seed(0)))
    assert codes.shape == (1, 1, 20) and codes.dtype == torch.int64


# -- full-size generated files of every version ------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("version", VITS)
def test_full_size_export_with_bases(version, schema_files):
    export = schema_files.path("sovits-export", version)
    g = schema_files.path("sovits-pretrained-g", version)
    d = schema_files.path("sovits-pretrained-d", version)
    r = rebuild(export, base_g=g, base_d=d)
    f = fates(r)
    assert len(f) == G_KEYS[version]
    assert Counter(f.values()) == {LOADED: G_KEYS[version] - ENC_Q, FILLED_FROM_BASE: ENC_Q}
    assert {k.split(".")[0] for k, v in f.items() if v == FILLED_FROM_BASE} == {"enc_q"}
    assert Counter(fates(r, "discriminator").values()) == {FILLED_FROM_BASE: D_KEYS[version]}
    counts = r.report.to_json()["counts"]
    assert counts["generator"][FILLED_FROM_BASE] == ENC_Q and counts["discriminator"]["error"] == 0
    models = build_models(r.resolved)
    assert isinstance(models["generator"], SoVITSGenerator) and isinstance(
        models["discriminator"], MultiPeriodDiscriminator
    )
    models["generator"].load_state_dict(r.generator, strict=True)
    models["discriminator"].load_state_dict(r.discriminator, strict=True)
    # semantic on the same export: only ssl_proj + quantizer matter; enc_q is harmless
    s = rebuild(export, task="semantic")
    assert Counter(fates(s).values()) == {LOADED: 6}
    assert len(s.report.harmless["generator"]) == ENC_Q


@pytest.mark.slow
@pytest.mark.parametrize("version", ["v3", "v4"])
def test_full_size_v3_v4_semantic_reports_decoder_as_harmless(version, schema_files):
    """Upstream printed 517 'missing' keys here (#2048); they are harmless for semantic extraction."""
    base = schema_files.path("sovits-pretrained-g", version)
    r = rebuild(base, task="semantic", version=version)
    assert Counter(fates(r).values()) == {LOADED: 6}
    harmless = Counter(k.split(".")[0] for k in r.report.harmless["generator"])
    assert harmless == {"dec": 290, "enc_q": 103, "flow": 124}
    assert "HiFi-GAN decoder" in r.report.harmless["generator"]["dec.conv_pre.weight"]
    ex = SemanticExtractor()
    ex.load_state_dict(r.generator, strict=True)
    assert ex.extract_latent(torch.randn(1, 768, 30)).shape == (1, 1, 15)
    # a LoRA export carries no ssl_proj: with its base, ssl_proj comes from the base, quantizer from the LoRA
    lora = schema_files.path("sovits-lora-export", version)
    r2 = rebuild(lora, base_g=base, task="semantic")
    f2 = fates(r2)
    assert {k for k, v in f2.items() if v == FILLED_FROM_BASE} == {"ssl_proj.weight", "ssl_proj.bias"}
    assert {k for k, v in f2.items() if v == LOADED} == {k for k in f2 if k.startswith("quantizer.")}
    with pytest.raises(GsvError, match="needs|carries"):
        rebuild(lora, task="semantic")


@pytest.mark.slow
def test_full_size_v4_lora_merged_onto_base_for_infer(schema_files):
    lora_path = schema_files.path("sovits-lora-export", "v4")
    base_path = schema_files.path("sovits-pretrained-g", "v4")
    r = rebuild(lora_path, base_g=base_path, task="infer")
    lora, base = read(lora_path).state_dict, read(base_path).state_dict
    k = "cfm.estimator.transformer_blocks.3.attn.to_v.weight"
    a = lora["cfm.base_model.model.estimator.transformer_blocks.3.attn.to_v.lora_A.default.weight"].float()
    b = lora["cfm.base_model.model.estimator.transformer_blocks.3.attn.to_v.lora_B.default.weight"].float()
    assert torch.allclose(r.generator[k], base[k].float() + b @ a * (32 / 32))
    assert "LoRA" in r.report.targets["generator"][k].reason
    assert r.report.targets["generator"]["wns1.enc.in_layers.0.bias"].fate == LOADED  # trained part from the LoRA file
    assert r.report.targets["generator"]["enc_p.ssl_proj.weight"].fate == FILLED_FROM_BASE
    assert len(r.generator) == 685
    # for training: the LoRA model (861 keys, peft's layout), the adapters and trained parts from the
    # export, the frozen rest from the base, nothing fresh
    t = rebuild(lora_path, base_g=base_path, task="train")
    counts = Counter(f.fate for f in t.report.targets["generator"].values())
    assert len(t.generator) == 861 and counts == {LOADED: 258, FILLED_FROM_BASE: 861 - 258}, counts
    assert t.resolved.sovits_v3.lora_rank == 32 and t.resolved.sovits_v3.model.dit.depth == 22
    with pytest.raises(GsvError, match="rank 32"):
        rebuild(lora_path, base_g=base_path, task="train", lora_rank=16)
    schema_files.delete("sovits-pretrained-g", "v4")


@pytest.mark.slow
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_full_size_gpt(version, schema_files):
    r = rebuild(schema_files.path("gpt-export", version))
    assert Counter(fates(r, "gpt").values()) == {LOADED: 295}
    m = Text2SemanticDecoder(T2SConfig.default(version))
    m.load_state_dict(r.gpt, strict=True)


# -- what does not fit -------------------------------------------------------------------------
def test_v1_export_with_v2_base_is_refused(fixtures_dir):
    with pytest.raises(GsvError, match="do not fit together") as e:
        rebuild(
            fixtures_dir / "SoVITS_weights/gsvfix_e1_s2.pth",
            base_g=fixtures_dir / "logs/gsvfix/logs_s2_v2/G_233333333333.pth",
        )
    assert "v1 base" in str(e.value) and "\n" not in str(e.value)


def test_missing_required_keys_are_errors_with_a_fix(fixtures_dir, tmp_path):
    from gsv_ray.io.writers import write_sovits_export

    src = read(fixtures_dir / "SoVITS_weights_v2/gsvfix_e1_s2.pth")
    partial = {k: v for k, v in src.state_dict.items() if not k.startswith("dec.")}
    p = write_sovits_export(tmp_path / "partial.pth", partial, config=src.config, info=src.info, version="v2")
    with pytest.raises(GsvError) as e:
        rebuild(p)
    msg = str(e.value)
    assert "missing from partial.pth" in msg and "--base" in msg
    report = e.value.report
    assert report.verdict == "error" and report.counts()["generator"]["error"] == sum(
        1 for k in src.state_dict if k.startswith("dec.")
    )
    # for semantic the same file is fine: the decoder is not needed there
    assert rebuild(p, task="semantic").report.verdict == "ok"


# -- the stored result -------------------------------------------------------------------------
@pytest.mark.slow
def test_cache_hit_does_not_reread_inputs(schema_files, tmp_path, monkeypatch):
    import gsv_ray.rebuild.store as store

    export = schema_files.path("sovits-export", "v2")
    g = schema_files.path("sovits-pretrained-g", "v2")
    d = schema_files.path("sovits-pretrained-d", "v2")
    first = rebuild_cached(export, base_g=g, base_d=d, cache_root=tmp_path)

    def refuse(*a, **k):
        raise AssertionError("a cache hit must neither hash nor rebuild the inputs")

    with monkeypatch.context() as m:  # a direct proof, not a timing
        m.setattr(store, "sha256_file", refuse)
        m.setattr(store, "rebuild", refuse)
        second = rebuild_cached(export, base_g=g, base_d=d, cache_root=tmp_path)
    assert not first.cache_hit and second.cache_hit and second.path == first.path
    # the spec is the request and the cache key: the same request as a RebuildSpec is the same entry
    spec = RebuildSpec(init=export, base_g=g, base_d=d)
    assert spec == RebuildSpec.of(str(export), base_g=str(g), base_d=str(d))
    assert rebuild_cached(spec, cache_root=tmp_path).path == first.path
    with pytest.raises(TypeError):
        RebuildSpec.of(spec, task="infer")  # options belong in the spec
    for name in first.weights:
        assert all(torch.equal(first.weights[name][k], second.weights[name][k]) for k in first.weights[name])
    stored = json.loads((first.path / "report.json").read_text())
    assert stored["verdict"] == "ok" and stored["inputs"]["init"]["sha256"]
    assert set(stored["targets"]) == {"generator", "discriminator"}
    assert stored["counts"]["generator"] == {"loaded": 673, "filled_from_base": 103, "initialised": 0, "error": 0}
    # other options -> another entry; a fresh result is deterministic (seeded fresh init)
    a = rebuild_cached(export, cache_root=tmp_path)
    b = rebuild(export)
    assert a.path != first.path and torch.equal(
        a.discriminator["discriminators.0.convs.0.bias"], b.discriminator["discriminators.0.convs.0.bias"]
    )
    assert load_result(a.path).report.to_json() == a.report.to_json()


@pytest.mark.slow
def test_resolved_config_is_typed_and_round_trips_through_the_store(fixtures_dir, tmp_path):
    """The rebuild's config is read once, at the store boundary, into typed settings: the model the
    store describes is the model that is built (config.json's ``model`` section used to be ignored in
    favour of ``s2`` + widths), the audio front-end and the training constants come from ``s2``."""
    from gsv_ray.rebuild import rebuild_cached
    from gsv_ray.rebuild.resolved import Resolved

    spec = dict(base_g=str(fixtures_dir / "logs/gsvfix/logs_s2_v2/G_233333333333.pth"))
    fresh = rebuild_cached(str(fixtures_dir / "SoVITS_weights_v2/gsvfix_e1_s2.pth"), cache_root=tmp_path, **spec)
    again = rebuild_cached(str(fixtures_dir / "SoVITS_weights_v2/gsvfix_e1_s2.pth"), cache_root=tmp_path, **spec)
    assert again.cache_hit and again.resolved == fresh.resolved == Resolved.from_json(fresh.config)
    st = fresh.resolved.sovits
    s2 = fresh.config["s2"]
    assert st.model.inter_channels == s2["model"]["inter_channels"]
    assert st.audio.hop_length == s2["data"]["hop_length"] and st.audio.n_fft == s2["data"]["filter_length"]
    assert st.train.c_mel == s2["train"]["c_mel"] and st.train.betas == tuple(s2["train"]["betas"])
    g = build_models(fresh.resolved)["generator"]
    assert g.config == st.model
    g.load_state_dict(fresh.generator, strict=True)
