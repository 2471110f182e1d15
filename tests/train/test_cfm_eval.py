"""v3/v4 validation on the CFM's inference path (#26): each held-out utterance sampled as GPT-SoVITS
infers it (another held-out utterance's mel as the prompt and its tokens' features before the
target's, fixed noise), scored against its real mel; ``quality`` is that score, not the loss. Tiny
settings (1-2 sampling steps, 2 utterances): the full-size cost is ``benchmarks/bench_eval.py``'s."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from gsv_ray.data.cfm import CFMDataset
from gsv_ray.rebuild import build_models, rebuild_cached
from gsv_ray.train import load_config
from gsv_ray.train.cfm import SILENT_MEL, cfm_inference_metrics, log_mel
from gsv_ray.train.loop import open_run_experiment
from gsv_ray.train.quality import log_mel_dist, sovits_quality
from tests.train.test_eval_metrics import val_rows


def _cfg(v4_inputs, out, **kw):
    base = dict(
        init=str(v4_inputs["init"]),
        base_g=str(v4_inputs["base"]),
        data=str(v4_inputs["data"]),
        output_dir=str(out),
        batch_size=4,
        warmup_steps=0,
        val_fraction=0.25,
        val_every=1,
        save_every=1,
        max_steps=1,
        seed=5,
        wandb_mode="disabled",
        num_workers=0,
        cfm_eval_steps=2,
        cfm_eval_utterances=2,
    )
    return load_config(None, **{**base, **kw})


@pytest.mark.slow  # two v4 training runs
def test_validation_scores_the_inference_path(v4_inputs, tmp_path):
    """val/mel_dist and utt/<stem>/mel_dist per scored utterance in metrics.jsonl, finite; quality is
    their composite (no speaker model: mel_dist alone), not the loss; two runs log the same numbers."""
    runs = [val_rows(_cfg(v4_inputs, tmp_path / name)) for name in ("a", "b")]
    (row,) = runs[0]
    per_utt = {k: v for k, v in row.items() if k.startswith("utt/")}
    assert len(per_utt) == 2 and all(k.endswith("/mel_dist") for k in per_utt), sorted(row)
    assert all(math.isfinite(v) and v > 0 for v in per_utt.values())
    assert row["mel_dist"] == pytest.approx(sum(per_utt.values()) / 2)
    assert row["quality"] == sovits_quality(row["mel_dist"]) != row["loss"]
    assert "spk_sim" not in row and "mrstft_dist" not in row  # no vocoder / speaker model: not guessed
    assert runs[0] == runs[1]  # fixed pairing and noise: the same numbers


def test_a_broken_cfm_ranks_last(v4_inputs, tmp_path):
    """An estimator that blows up (x1000) scores a far worse quality than the model as rebuilt; one
    that outputs NaN scores finite, as silence would (never NaN, which would drop out of a ranking)."""
    rb = rebuild_cached(str(v4_inputs["init"]), base_g=str(v4_inputs["base"]), cache_root=tmp_path / "cache")
    g = build_models(rb.resolved)["generator"]
    g.load_state_dict(rb.generator)
    experiment = open_run_experiment(v4_inputs["data"], rb)
    ds = CFMDataset(experiment, experiment.names[:2], spec=rb.resolved.sovits_v3.spec)
    items = [ds[0], ds[1]]

    def quality(model) -> dict[str, float]:
        return cfm_inference_metrics(model.eval(), items, seed=1, version="v4", steps=2)

    def broken(fill) -> torch.nn.Module:
        h = copy.deepcopy(g)
        with torch.no_grad():
            for p in h.flow.estimator.proj_out.parameters():
                fill(p)
        return h

    good = quality(g)["quality"]
    assert quality(broken(lambda p: p.mul_(1000)))["quality"] > 10 * good
    nan = quality(broken(lambda p: p.fill_(float("nan"))))
    silence = [log_mel_dist(log_mel(torch.full_like(it.mel, SILENT_MEL)), log_mel(it.mel)) for it in items]
    assert math.isfinite(nan["quality"]) and nan["quality"] == pytest.approx(sum(silence) / 2, rel=0.01)


class _Oracle(torch.nn.Module):
    """A DiT stand-in that knows the answer: the velocity of the straight path to ``x1``, so the
    Euler steps end exactly on ``x1`` (``[mel, T]``: the prompt's place, then the target)."""

    def __init__(self, x1: torch.Tensor):
        super().__init__()
        self.x1 = x1

    def forward(self, x, cond, x_lens, time, dt, mu):
        return ((self.x1[None] - x) / (1 - time[:, None, None])).transpose(1, 2)


def test_the_generated_frames_line_up_with_the_real_mel(v4_inputs, tmp_path):
    """With an estimator that reaches any target exactly, the frames after the reference prompt are
    the utterance's own mel from its first frame: mel_dist 0 (a shift by the prompt or a frame would
    not be), whatever the steps."""
    rb = rebuild_cached(str(v4_inputs["init"]), base_g=str(v4_inputs["base"]), cache_root=tmp_path / "cache")
    g = build_models(rb.resolved)["generator"]
    g.load_state_dict(rb.generator)
    experiment = open_run_experiment(v4_inputs["data"], rb)
    ds = CFMDataset(experiment, experiment.names[:1], spec=rb.resolved.sovits_v3.spec)
    item = ds[0]  # alone, its own reference (eval_pairs)
    g.eval()
    fea = g.decode_encp(item.ssl, item.text[None], g.reference_embedding(item.spec[None])).size(-1)
    prompt, todo = min(item.mel.size(-1), fea), fea
    target = torch.nn.functional.pad(item.mel, (0, max(0, todo - item.mel.size(-1))), value=SILENT_MEL)[:, :todo]
    g.flow.estimator = _Oracle(torch.cat([torch.zeros(item.mel.size(0), prompt), target], dim=1))
    for steps in (1, 3):
        m = cfm_inference_metrics(g, [item], seed=1, version="v4", steps=steps)  # a single item: its own reference
        assert m["mel_dist"] == pytest.approx(0, abs=1e-4), (steps, m)


@pytest.mark.slow  # the full-size vocoder and speaker model
def test_vocoded_audio_scores_stft_and_speaker(v4_inputs, goldens_dir, tmp_path):
    """v4 with --vocoder: the vocoded audio (48 kHz, resampled to 32 kHz) against the real recording
    adds mrstft_dist, and with --sv-model spk_sim, per utterance and averaged; quality counts spk_sim."""
    from gsv_ray.models.sovits.vocoder import V4Vocoder
    from tests.support.goldens import eres2netv2_state_dict

    torch.manual_seed(0)
    voc, sv = tmp_path / "vocoder.pth", tmp_path / "pretrained_eres2netv2w24s4ep4.ckpt"
    torch.save(V4Vocoder(upsample_initial_channel=32).plain_state_dict(), voc)
    torch.save(eres2netv2_state_dict(goldens_dir), sv)
    (row,) = val_rows(
        _cfg(
            v4_inputs,
            tmp_path / "run",
            vocoder=str(voc),
            sv_model=str(sv),
            cfm_eval_steps=1,
            cfm_eval_utterances=1,
            audio_samples=0,
        )
    )  # a full-size speaker model: one utterance
    for key in ("mel_dist", "mrstft_dist", "spk_sim"):
        (per_utt,) = [v for k, v in row.items() if k.startswith("utt/") and k.endswith(f"/{key}")]
        assert math.isfinite(per_utt) and row[key] == per_utt, sorted(row)
    assert -1 <= row["spk_sim"] <= 1
    assert row["quality"] == pytest.approx(row["mel_dist"] + 1 - row["spk_sim"])
