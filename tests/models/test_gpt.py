"""Stage-1 GPT (text-to-semantic decoder): keys, goldens, real files.

Goldens: ``goldens/gpt_t2s_small.*`` (README sections 6 and 7), produced by GPT-SoVITS's own
``Text2SemanticLightningModule``; one test per stored ``out.*`` tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gsv_ray.io import read
from gsv_ray.models.gpt import (
    T2SConfig,
    Text2SemanticDecoder,
    from_upstream_keys,
    load_upstream_state_dict,
    sample_next_token,
    to_upstream_keys,
)
from gsv_ray.models.gpt.sampling import apply_repetition_penalty, filter_top_k, filter_top_p
from tests.support.goldens import assert_close_golden, load_io

GOLDEN = "gpt_t2s_small"

#: (golden name, with prompt, repetition penalty) of the three greedy decodes.
DECODES = [
    ("greedy_rp1.35", True, 1.35),
    ("greedy_rp1.0", True, 1.0),
    ("greedy_noprompt_rp1.35", False, 1.35),
]

GOLDEN_OUTPUTS = sorted(
    [f"out.{b}.{what}" for b in "AB" for what in ("loss", "acc", "logits", "targets")]
    + [f"out.decode.{name}.{what}" for name, _, _ in DECODES for what in ("y", "idx")]
    + ["out.decode.step_logits_rp1.0_first3"]
)


# ---------------------------------------------------------------------------------- helpers


def _golden_model(goldens_dir: Path) -> Text2SemanticDecoder:
    cfg = T2SConfig.from_s1_config(json.loads((goldens_dir / f"{GOLDEN}.config.json").read_text()))
    model = Text2SemanticDecoder(cfg)
    load_upstream_state_dict(model, load_file(str(goldens_dir / f"{GOLDEN}.state_dict.safetensors")))
    return model.eval()


@pytest.fixture(scope="module")
def golden_io(goldens_dir: Path) -> dict[str, torch.Tensor]:
    return load_io(goldens_dir / f"{GOLDEN}.io.safetensors")


@pytest.fixture(scope="module")
def golden_model(goldens_dir: Path) -> Text2SemanticDecoder:
    return _golden_model(goldens_dir)


def _decode(model: Text2SemanticDecoder, io: dict[str, torch.Tensor], prompt: bool, rp: float, **kw):
    return model.generate(
        io["in.decode.phoneme_ids"],
        io["in.decode.bert_feature"],
        io["in.decode.prompt"] if prompt else None,
        top_k=1,
        top_p=1.0,
        early_stop_num=19,
        temperature=1.0,
        repetition_penalty=rp,
        **kw,
    )


@pytest.fixture(scope="module")
def our_outputs(golden_model: Text2SemanticDecoder, golden_io: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Everything the goldens store, computed by our model the way upstream's script did."""
    io, out = golden_io, {}
    with torch.no_grad():
        for b in "AB":
            res = golden_model(
                io[f"in.{b}.phoneme_ids"],
                io[f"in.{b}.phoneme_ids_len"],
                io[f"in.{b}.semantic_ids"],
                io[f"in.{b}.semantic_ids_len"],
                io[f"in.{b}.bert_feature"],
            )
            out[f"out.{b}.loss"] = res.loss.reshape(1)
            out[f"out.{b}.acc"] = res.acc.reshape(1).double()
            out[f"out.{b}.logits"] = res.logits
            out[f"out.{b}.targets"] = res.targets
    for name, prompt, rp in DECODES:
        res = _decode(golden_model, io, prompt, rp, keep_logits=True)
        out[f"out.decode.{name}.y"] = res.tokens
        out[f"out.decode.{name}.idx"] = torch.tensor([res.idx])
        if name == "greedy_rp1.0":
            out["out.decode.step_logits_rp1.0_first3"] = torch.cat(res.step_logits[:3])
    return out


# ---------------------------------------------------------------------------------- full-size shapes


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_full_size_state_dict_matches_schema(version: str, schemas_dir: Path) -> None:
    schema = json.loads((schemas_dir / f"gpt_t2s_{version}.json").read_text())
    with torch.device("meta"):  # shapes only: no 300 MB allocation, no init cost
        model = Text2SemanticDecoder(T2SConfig.default(version))
    sd = to_upstream_keys(model.state_dict())
    want = schema["state_dict"]
    assert list(sd) == list(want)  # same keys, same (upstream state_dict) order
    for key, spec in want.items():
        assert list(sd[key].shape) == spec["shape"], key
        assert str(sd[key].dtype).removeprefix("torch.") == spec["dtype"], key
    assert len(sd) == schema["num_state_dict_keys"] == 295
    assert sum(p.numel() for p in model.parameters()) == schema["num_parameters"]
    assert all(p.requires_grad for p in model.parameters())
    assert sum(b.numel() for b in model.buffers()) == schema["num_buffer_elements"] == 0


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_packaged_default_equals_schema_config(version: str, schemas_dir: Path) -> None:
    schema_cfg = json.loads((schemas_dir / f"config_s1_{version}.json").read_text())["config"]
    assert T2SConfig.default(version) == T2SConfig.from_s1_config(schema_cfg)
    assert T2SConfig.default(version) == T2SConfig.from_s1_config(schema_cfg["model"])
    assert T2SConfig.default(version).phoneme_vocab_size == {"v1": 512, "v2": 732}[version]


def test_key_helpers_round_trip_and_refuse_unprefixed() -> None:
    sd = {"bert_proj.weight": 1, "h.layers.0.norm1.bias": 2}
    assert from_upstream_keys(to_upstream_keys(sd)) == sd
    with pytest.raises(KeyError):
        from_upstream_keys({"bert_proj.weight": 1})


# ---------------------------------------------------------------------------------- goldens


def test_golden_key_order(golden_model: Text2SemanticDecoder, goldens_dir: Path) -> None:
    order = json.loads((goldens_dir / "INDEX.json").read_text())["gpt_state_dict_key_order"]
    assert list(to_upstream_keys(golden_model.state_dict())) == order


def test_golden_outputs_are_all_covered(golden_io: dict[str, torch.Tensor]) -> None:
    assert sorted(k for k in golden_io if k.startswith("out.")) == GOLDEN_OUTPUTS


@pytest.mark.parametrize("name", GOLDEN_OUTPUTS, ids=GOLDEN_OUTPUTS)
def test_golden(name: str, our_outputs: dict[str, torch.Tensor], golden_io: dict[str, torch.Tensor]) -> None:
    assert_close_golden(name, our_outputs[name], golden_io[name])


@pytest.mark.parametrize("name,prompt,rp", DECODES, ids=[d[0] for d in DECODES])
def test_kv_cache_matches_full_recompute(
    name: str, prompt: bool, rp: float, golden_model: Text2SemanticDecoder, golden_io: dict[str, torch.Tensor]
) -> None:
    cached = _decode(golden_model, golden_io, prompt, rp, keep_logits=True)
    full = _decode(golden_model, golden_io, prompt, rp, keep_logits=True, use_cache=False)
    assert torch.equal(cached.tokens, full.tokens) and cached.idx == full.idx
    assert_close_golden(name, torch.cat(cached.step_logits), torch.cat(full.step_logits))


def test_sampled_decode_is_reproducible_and_cache_independent(
    golden_model: Text2SemanticDecoder, golden_io: dict[str, torch.Tensor]
) -> None:
    def run(use_cache: bool) -> torch.Tensor:
        gen = torch.Generator().manual_seed(1234)
        return golden_model.generate(
            golden_io["in.decode.phoneme_ids"],
            golden_io["in.decode.bert_feature"],
            golden_io["in.decode.prompt"],
            top_k=15,
            top_p=0.9,
            temperature=0.8,
            early_stop_num=30,
            generator=gen,
            use_cache=use_cache,
        ).tokens

    a, b = run(True), run(False)
    assert torch.equal(a, b)
    assert a.shape[1] > golden_io["in.decode.prompt"].shape[1]


def test_training_mode_backward(golden_model: Text2SemanticDecoder, golden_io: dict[str, torch.Tensor]) -> None:
    """Dropout on (upstream's fixed 0.1): loss differs from eval but stays finite and trains."""
    model = Text2SemanticDecoder(golden_model.config)
    model.load_state_dict(golden_model.state_dict())
    model.train()
    torch.manual_seed(0)
    io = golden_io
    res = model(
        io["in.A.phoneme_ids"], io["in.A.phoneme_ids_len"], io["in.A.semantic_ids"],
        io["in.A.semantic_ids_len"], io["in.A.bert_feature"],
    )  # fmt: skip
    res.loss.backward()
    assert torch.isfinite(res.loss) and not torch.allclose(res.loss.detach(), io["out.A.loss"][0])
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.ar_text_position.alpha.grad.abs() > 0 and model.ar_audio_position.alpha.grad.abs() > 0


# ---------------------------------------------------------------------------------- sampling rules


def test_repetition_penalty_once_per_token_sign_aware() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    got = apply_repetition_penalty(logits, torch.tensor([[0, 1, 0, 1]]), 2.0)
    assert torch.equal(got, torch.tensor([[1.0, -4.0, 1.0, 0.5]]))
    assert torch.equal(logits, torch.tensor([[2.0, -2.0, 1.0, 0.5]]))  # input untouched


def test_top_p_keeps_most_likely_and_top_k_keeps_ties() -> None:
    logits = torch.tensor([[10.0, 0.0, 0.0, -1.0]])
    assert torch.isfinite(filter_top_p(logits, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_top_k(logits, 2)).tolist() == [[True, True, True, False]]
    assert torch.equal(filter_top_k(logits, None), logits)


def test_greedy_sampling_is_argmax() -> None:
    logits = torch.randn(1, 1025, generator=torch.Generator().manual_seed(0))
    token, _ = sample_next_token(logits, None, top_k=1)
    assert token.item() == logits.argmax().item() and token.dtype == torch.int64


# ---------------------------------------------------------------------------------- real files


def _check_loads_and_runs(config: dict, state_dict: dict[str, torch.Tensor], io: dict[str, torch.Tensor]) -> None:
    model = Text2SemanticDecoder(T2SConfig.from_s1_config(config["model"]))
    load_upstream_state_dict(model, state_dict, strict=True)
    model.eval()
    with torch.no_grad():
        res = model(
            io["in.B.phoneme_ids"], io["in.B.phoneme_ids_len"], io["in.B.semantic_ids"],
            io["in.B.semantic_ids_len"], io["in.B.bert_feature"],
        )  # fmt: skip
    assert torch.isfinite(res.loss)


def test_gpt_export_loads_strictly(fixtures_dir: Path, golden_io: dict[str, torch.Tensor]) -> None:
    ckpt = torch.load(fixtures_dir / "GPT_weights_v2" / "gsvfix-e1.ckpt", map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float16 for v in ckpt["weight"].values())
    _check_loads_and_runs(ckpt["config"], ckpt["weight"], golden_io)


def test_lightning_ckpt_loads_strictly(fixtures_dir: Path, golden_io: dict[str, torch.Tensor]) -> None:
    f = read(fixtures_dir / "logs" / "gsvfix" / "logs_s1_v2" / "ckpt" / "epoch=0-step=6.ckpt")
    assert f.config is not None
    assert all(v.dtype == torch.float32 for v in f.state_dict.values())
    _check_loads_and_runs(f.config, f.state_dict, golden_io)
