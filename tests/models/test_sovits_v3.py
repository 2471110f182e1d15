"""The v3/v4 generator (SynthesizerTrnV3: CFM + DiT, LoRA r=32) against upstream's goldens
(goldens/README.md §9): keys and shapes, the training forward with every random draw given, the
CFM loss with and without the shortcut branch, gradients and what trains, the DiT boundary, and
4-step inference with the adapter active, merged and off. Full-size models, as the goldens are."""

from __future__ import annotations

import gc
import json

import pytest
import torch

from gsv_ray.models.lora import adapters_disabled, merge_lora
from gsv_ray.models.sovits.cfm import CFMDraws
from gsv_ray.models.sovits.v3 import SoVITSV3Config, SoVITSV3Generator
from tests.support.goldens import assert_close_golden, load_io, v3_state_dict

pytestmark = pytest.mark.slow


def _config(goldens_dir, version: str) -> SoVITSV3Config:
    return SoVITSV3Config.from_s2_config(json.loads((goldens_dir / f"sovits_G_{version}.config.json").read_text()))


@pytest.mark.parametrize("version", ["v3", "v4"])
@pytest.mark.parametrize("lora", [False, True])
def test_state_dict_keys_shapes_and_order_are_upstreams(schemas_dir, goldens_dir, version, lora):
    schema = json.loads((schemas_dir / f"sovits_G_{version}{'_lora32' if lora else ''}.json").read_text())
    with torch.device("meta"):
        model = SoVITSV3Generator(_config(goldens_dir, version))
        if lora:
            model.add_lora(32)
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    want = [(k, v["shape"]) for k, v in schema["state_dict"].items()]
    assert got == want
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    want_trainable = {k for k, v in schema["state_dict"].items() if v.get("requires_grad")}
    assert trainable == want_trainable  # with LoRA: what upstream's optimizer holds


@pytest.fixture(scope="module", params=["v4", "v3"])
def golden_model(request, goldens_dir):
    version = request.param
    torch.manual_seed(0)
    model = SoVITSV3Generator(_config(goldens_dir, version)).add_lora(32)
    model.load_state_dict(v3_state_dict(goldens_dir, version, lora=True), strict=True)
    model.eval()
    io = load_io(goldens_dir / f"sovits_G_{version}.io.safetensors")
    yield version, model, io
    del model
    gc.collect()


def _forward(model, io, case: str, trace=None, calls=None):
    draws = CFMDraws(
        t=io[f"in.{case}.draw.t"],
        x0=io[f"in.{case}.draw.x0"],
        shortcut_u=float(io[f"in.{case}.draw.shortcut_u"]),
        base=io.get(f"in.{case}.draw.base"),
    )
    return model(
        io["in.fwd.ssl"],
        io["in.fwd.spec"],
        io["in.fwd.mel"],
        io["in.fwd.spec_lengths"],
        io["in.fwd.text"],
        io["in.fwd.text_lengths"],
        io["in.fwd.mel_lengths"],
        prompt_u=io[f"in.{case}.draw.prompt_u"],
        draws=draws,
        trace=trace,
        on_call=(lambda name, d: calls.__setitem__(name, d)) if calls is not None else None,
    )


@pytest.mark.parametrize("case", ["fwd_noshort", "fwd_short"])
def test_training_forward_and_cfm_loss(golden_model, case):
    version, model, io = golden_model
    trace, calls = {}, {}
    with torch.no_grad():
        loss = _forward(model, io, case, trace, calls)
    for name in (
        "ge",
        "ssl_proj",
        "quantized",
        "codes",
        "commit_loss",
        "enc_p.x",
        "enc_p.m_p",
        "enc_p.logs_p",
        "enc_p.y_mask",
        "bridge",
        "bridge_interp",
        "wns1.fea",
        "wns1.mask",
        "cfm_in.x1",
    ):
        got = trace[name]
        want = io[f"out.fwd.{name}"]
        assert_close_golden(name, got.reshape(want.shape) if got.numel() == want.numel() else got, want)
    assert_close_golden("prompt_len", trace["prompt_len"], io[f"out.{case}.prompt_len"])
    assert len(calls) == int(io[f"out.{case}.estimator_calls.count"])
    for call, d in calls.items():
        for field in ("x_in", "time", "dt", "out"):
            key = f"out.{case}.{call}.{field}"
            if key in io:
                assert_close_golden(key, d[field], io[key])
    want = io[f"out.{case}.cfm_loss"].double()
    assert abs(loss.double() - want).item() <= 1e-5 * abs(want).item(), (float(loss), float(want))


def test_gradients_and_what_trains(golden_model):
    version, model, io = golden_model
    model.zero_grad(set_to_none=True)
    _forward(model, io, "fwd_noshort").backward()
    params = dict(model.named_parameters())
    grads = {k[len("out.grad.") :]: v for k, v in io.items() if k.startswith("out.grad.")}
    assert grads
    for name, want in grads.items():
        assert_close_golden(name, params[name].grad, want)
    # the frozen front end and ref_enc get no gradient; bridge, wns1 and the adapters do
    assert all(
        p.grad is None for n, p in params.items() if n.startswith(("enc_p.", "ssl_proj.", "ref_enc.", "linear_mel."))
    )
    assert all(p.grad is not None for n, p in params.items() if n.startswith(("bridge.", "wns1.")) or ".lora_" in n)
    assert all(not p.requires_grad for n, p in params.items() if n.startswith("cfm.") and ".lora_" not in n)
    model.zero_grad(set_to_none=True)


def test_dit_boundary_with_and_without_the_adapter(golden_model):
    version, model, io = golden_model
    if version == "v3":  # the DiT is the same in v3 and v4: its boundary golden is in the v4 file only
        assert "in.dit.x" not in io
        return
    dit = model.flow.estimator
    args = [io[f"in.dit.{k}"] for k in ("x", "cond", "x_lens", "time", "d", "mu")]
    trace: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        v = dit(*args, trace=trace)
        with adapters_disabled(model.cfm):
            plain = dit(*args)
    assert_close_golden("v_lora", v, io["out.dit.v_lora"])
    assert_close_golden("v_plain", plain, io["out.dit.v_plain"])
    assert_close_golden("rope_freqs", trace["rope_freqs"], io["out.dit.rope_freqs"])
    assert_close_golden("d_embed", trace["d_embed"], io["out.dit.lora.d_embed"])
    # the golden's time_embed was captured after upstream's in-place `t += d_embed(d)`: the sum
    assert_close_golden("time_embed", trace["time_embed"] + trace["d_embed"], io["out.dit.lora.time_embed"])
    for name, key in (
        ("text_embed", "text_embed"),
        ("input_embed", "input_embed"),
        ("block0", "block0"),
        ("block21", "block21"),
    ):
        assert_close_golden(name, trace[key][1:2], io[f"out.dit.lora.{name}"])


def test_inference_unmerged_plain_and_merged(golden_model):
    version, model, io = golden_model
    cfm = model.flow
    args = dict(
        mu=io["in.infer.mu"],
        x_lens=io["in.infer.x_lens"],
        prompt=io["in.infer.prompt"],
        n_timesteps=4,
        noise=io["in.infer.noise"],
    )
    assert_close_golden("lora_unmerged", cfm.inference(**args), io["out.infer.lora_unmerged"])
    with adapters_disabled(model.cfm):
        assert_close_golden("plain", cfm.inference(**args), io["out.infer.plain"])
    merged = merge_lora(model.cfm)  # the last test on this model: merging changes it
    model.cfm = merged
    w = merged.estimator.transformer_blocks[0].attn.to_q.weight[:8]
    assert_close_golden("merged rows", w, io["out.merged.cfm.estimator.transformer_blocks.0.attn.to_q.weight.rows0to7"])
    assert_close_golden("lora_merged", merged.inference(**args), io["out.infer.lora_merged"])


def test_v4_vocoder_has_upstreams_keys_and_shapes(schemas_dir):
    """The file upstream loads strictly into its v4 vocoder (weight norm removed) is what ours reads
    and writes."""
    from gsv_ray.models.sovits.vocoder import V4Vocoder

    schema = json.loads((schemas_dir / "vocoder_v4_hifigan.json").read_text())["state_dict"]
    v = V4Vocoder()
    plain = v.plain_state_dict()
    assert {k: list(t.shape) for k, t in plain.items()} == {k: e["shape"] for k, e in schema.items()}
    again = V4Vocoder().load_plain(plain)
    x = torch.randn(1, 100, 8) * 0.3
    assert float((again(x) - v(x)).abs().max()) < 1e-5 and v(x).shape[-1] == 8 * 480
