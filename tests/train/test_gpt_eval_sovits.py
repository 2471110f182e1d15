"""GPT validation heard through a SoVITS decoder (#26 item 1): ``--eval-sovits FILE`` decodes each held-out
item's generated tokens to audio (the paired utterance as the reference clip), ``--sv-model`` scores it by
val/spk_sim against the real utterance, ``--asr DIR`` transcribes it for val/cer. Bad files and folders are
one line and exit status 2, before training starts."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gsv_ray.train import load_config
from tests.conftest import run_cli
from tests.train.test_eval_metrics import val_rows

HELD_OUT = ("synth_003.wav", "synth_010.wav")  # two held-out utterances: each decode + embedding costs seconds


@pytest.fixture(scope="module")
def sv_model(goldens_dir, tmp_path_factory):
    """The golden ERes2NetV2 saved as upstream ships pretrained_eres2netv2w24s4ep4.ckpt (a torch.save'd state_dict)."""
    from tests.support.goldens import eres2netv2_state_dict

    path = tmp_path_factory.mktemp("sv") / "pretrained_eres2netv2w24s4ep4.ckpt"
    torch.save(eres2netv2_state_dict(goldens_dir), path)
    return path


def gpt_args(gpt_init, data, out, names) -> list[str]:
    """A short GPT run (8 steps teach the fixture to end its sequences) with one validation at the end."""
    return [
        "train",
        "--init",
        gpt_init,
        "--data",
        str(data),
        "-o",
        str(out),
        "--max-steps",
        "8",
        "--batch-size",
        "4",
        "--optimizer",
        "adamw",
        "--lr-scale",
        "1.0",
        "--warmup-steps",
        "2",
        "--val-every",
        "8",
        "--save-every",
        "8",
        "--val-names",
        str(names),
        "--num-workers",
        "0",
        "--wandb-mode",
        "disabled",
    ]


@pytest.fixture
def held_out(tmp_path):
    path = tmp_path / "val_names.txt"
    path.write_text("\n".join(HELD_OUT) + "\n")
    return path


@pytest.mark.slow  # the full-size ERes2NetV2, two runs: ~130 s on a busy 2-core CPU
def test_gpt_eval_sovits_logs_spk_sim(gpt_init, synth_v2, sovits_files, sv_model, tmp_path):
    """One held-out utterance (its own prompt and reference clip): each decode and speaker embedding of the full
    ERes2NetV2 costs seconds on a CPU, and the run is made twice. (The per-utterance mean: the --asr test.)"""
    held_out = tmp_path / "val_names.txt"
    held_out.write_text(HELD_OUT[0] + "\n")
    r = run_cli(
        *gpt_args(gpt_init, synth_v2, tmp_path / "cli", held_out),
        "--eval-sovits",
        sovits_files["init"],
        "--sv-model",
        str(sv_model),
        # the torch threads of this process, where the run is made again: a matmul's sums follow the thread count
        env={"OMP_NUM_THREADS": str(torch.get_num_threads())},
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    (row,) = [x for x in rows if x["split"] == "val"]
    stem = HELD_OUT[0].removesuffix(".wav")
    assert {k for k in row if k.startswith("utt/")} == {f"utt/{stem}/spk_sim"}, sorted(row)
    assert math.isfinite(row["spk_sim"]) and -1.0 <= row["spk_sim"] <= 1.0
    assert row["spk_sim"] == row[f"utt/{stem}/spk_sim"]
    assert row["eos_rate"] == 1.0  # the tokens decoded are ended sequences
    assert "cer" not in row and row["quality"] == pytest.approx(row["len_error"] + row["repeat_rate"])

    # the same run again (in-process): fixed pairing, sampling and decode noise give the same numbers
    cfg = load_config(
        None,
        init=gpt_init,
        data=str(synth_v2),
        output_dir=str(tmp_path / "again"),
        max_steps=8,
        batch_size=4,
        optimizer="adamw",
        lr_scale=1.0,
        warmup_steps=2,
        val_every=8,
        save_every=8,
        val_names=str(held_out),
        num_workers=0,
        wandb_mode="disabled",
        eval_sovits=sovits_files["init"],
        sv_model=str(sv_model),
    )
    (again,) = val_rows(cfg)
    assert again == {k: v for k, v in row.items() if k not in ("time", "timestamp", "wall")}


def test_gpt_eval_sovits_without_sv_model_says_so(gpt_init, synth_v2, sovits_files, held_out, tmp_path):
    """Nothing to score the decoded audio with: one line saying what --sv-model adds, and no decoding."""
    lines: list[str] = []
    cfg = load_config(
        None,
        init=gpt_init,
        data=str(synth_v2),
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        batch_size=4,
        optimizer="adamw",
        warmup_steps=0,
        val_every=1,
        save_every=1,
        val_names=str(held_out),
        num_workers=0,
        wandb_mode="disabled",
        eval_sovits=sovits_files["init"],
    )
    (row,) = val_rows(cfg, say=lines.append)
    assert sum("(val/spk_sim) is not scored: pass --sv-model" in s for s in lines) == 1, lines
    assert "spk_sim" not in row and not any(k.startswith("utt/") for k in row)


@pytest.mark.parametrize("case", ["gpt-file", "not-a-model"])
def test_bad_eval_sovits_file_is_one_line(case, gpt_init, synth_v2, held_out, tmp_path):
    bad = gpt_init if case == "gpt-file" else tmp_path / "s2G_broken.pth"
    if case == "not-a-model":
        bad.write_bytes(b"this is no checkpoint\n")
    r = run_cli(*gpt_args(gpt_init, synth_v2, tmp_path / "run", held_out), "--eval-sovits", str(bad), in_process=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--eval-sovits" in r.stderr and str(bad) in r.stderr, r.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("case", ["no-eval-sovits", "not-a-model", "no-tokenizer"])
def test_bad_asr_is_one_line(case, gpt_init, synth_v2, sovits_files, held_out, tmp_path):
    folder = tmp_path / "faster-whisper-large-v3"
    folder.mkdir()
    if case == "no-tokenizer":  # faster-whisper would fetch a tokenizer from the Hugging Face hub: refused
        for f in ("model.bin", "config.json", "vocabulary.json"):
            (folder / f).write_text("{}")
    else:
        (folder / "notes.txt").write_text("not a model\n")
    sovits = [] if case == "no-eval-sovits" else ["--eval-sovits", sovits_files["init"]]
    r = run_cli(
        *gpt_args(gpt_init, synth_v2, tmp_path / "run", held_out), *sovits, "--asr", str(folder), in_process=True
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--asr" in r.stderr
    expected = {
        "no-eval-sovits": "--eval-sovits",
        "not-a-model": "not a CTranslate2 Whisper model folder",
        "no-tokenizer": "no tokenizer.json",
    }[case]
    assert expected in r.stderr, r.stderr
    if case != "no-eval-sovits":
        assert str(folder) in r.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_gpt_asr_logs_cer_end_to_end(gpt_init, synth_v2, sovits_files, held_out, tmp_path):
    """``--asr`` with a real (tiny, random-weight) CTranslate2 Whisper folder made offline: the decoded audio is
    transcribed by faster-whisper and val/cer (per utterance and averaged) counts in val/quality."""
    from tests.support.tiny_whisper import make_tiny_whisper

    folder = make_tiny_whisper(tmp_path / "faster-whisper-tiny")
    r = run_cli(
        *gpt_args(gpt_init, synth_v2, tmp_path / "run", held_out),
        "--eval-sovits",
        sovits_files["init"],
        "--asr",
        str(folder),
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (row,) = [x for x in rows if x["split"] == "val"]
    cers = {k: v for k, v in row.items() if k.startswith("utt/") and k.endswith("/cer")}
    assert set(cers) == {f"utt/{n.removesuffix('.wav')}/cer" for n in HELD_OUT}, sorted(row)
    assert all(math.isfinite(v) and v >= 0 for v in cers.values())
    assert row["cer"] == pytest.approx(sum(cers.values()) / 2)
    assert row["quality"] == pytest.approx(row["len_error"] + row["repeat_rate"] + 1 - row["eos_rate"] + row["cer"])
    assert "spk_sim" not in row  # no --sv-model


def test_tune_passes_the_options_to_its_trials(tmp_path, monkeypatch):
    """``tune`` takes --eval-sovits / --asr / --sv-model as ``train`` does (flags and YAML), made absolute for Ray
    workers that run elsewhere; every trial's config is the base config with its lr_scale and warmup replaced."""
    import dataclasses

    from gsv_ray.tune.search import load_tune_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tune.yaml").write_text(
        "init: GPT_weights_v2/me-e15.ckpt\ndata: logs/me\nmax_steps: 100\n"
        "eval_sovits: SoVITS_weights_v2/me_e8_s200.pth\nasr: faster-whisper-large-v3\n"
    )
    cfg, _ = load_tune_config(tmp_path / "tune.yaml", train={"sv_model": "sv/pretrained_eres2netv2w24s4ep4.ckpt"})
    assert cfg.eval_sovits == str(tmp_path / "SoVITS_weights_v2/me_e8_s200.pth")
    assert cfg.asr == str(tmp_path / "faster-whisper-large-v3")
    assert cfg.sv_model == str(tmp_path / "sv/pretrained_eres2netv2w24s4ep4.ckpt")
    trial = dataclasses.replace(cfg, lr_scale=0.5, warmup_steps=5)  # what trial_function builds
    assert (trial.eval_sovits, trial.asr, trial.sv_model) == (cfg.eval_sovits, cfg.asr, cfg.sv_model)

    r = run_cli("tune", "--help", in_process=True)
    assert r.returncode == 0 and "--eval-sovits" in r.stdout and "--asr" in r.stdout
    (tmp_path / "asr-only.yaml").write_text(
        "init: GPT_weights_v2/me-e15.ckpt\ndata: logs/me\nmax_steps: 100\nasr: faster-whisper-large-v3\n"
    )
    r = run_cli("tune", "--config", "asr-only.yaml", "-o", str(tmp_path / "search"), in_process=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--asr" in r.stderr, r.stderr


def test_eval_options_on_a_sovits_run_are_refused(sovits_files, tmp_path):
    from gsv_ray.errors import ConfigError

    cfg = load_config(
        None,
        **sovits_files,
        data=str(tmp_path),
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        eval_sovits=sovits_files["init"],
    )
    with pytest.raises(ConfigError, match="--eval-sovits scores a GPT's generated tokens, and this is a sovits run"):
        cfg.resolved("sovits", "cpu")
