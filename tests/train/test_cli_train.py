"""`gsv-ray train` as a user runs it: YAML + flags, W&B offline run read back, a killed run
resumes from its last complete checkpoint, and bad input is refused before training starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from safetensors.torch import load_file

from gsv_ray.io import read
from gsv_ray.track import read_metrics
from gsv_ray.track import wandb_file as wr
from tests.support.cli import run_cli_in_process


def _env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(GSV_RAY_CACHE=str(tmp_path / "cache"), WANDB_API_KEY="")
    return env


def _run(args, tmp_path, timeout=600, in_process=False):
    if in_process:  # where the output and exit status are the point (tests/support/cli.py)
        return run_cli_in_process(*args, env=_env(tmp_path), replace_env=True)
    return subprocess.run(
        [sys.executable, "-m", "gsv_ray", *args], capture_output=True, text=True, env=_env(tmp_path), timeout=timeout
    )


@pytest.mark.slow
def test_sovits_cli_run_is_fully_tracked(sovits_files, synth_v2, tmp_path):
    run = tmp_path / "runs" / "myvoice"
    (tmp_path / "run.yaml").write_text(
        yaml.safe_dump(
            {
                "init": sovits_files["init"],
                "base-d": sovits_files["base_d"],
                "data": str(synth_v2),
                "max_steps": 4,
                "warmup_steps": 3,
                "warmup_start": 0.25,
                "lr_scale": 0.5,
                "batch_size": 2,  # flags win below
                "val_every": 2,
                "save_every": 2,
                "audio_samples": 1,
                "val_fraction": 0.1,
            }
        )
    )  # validation is asked for
    r = _run(
        [
            "train",
            "--config",
            str(tmp_path / "run.yaml"),
            "--base",
            sovits_files["base_g"],
            "--batch-size",
            "4",
            "-o",
            str(run),
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert (
        "rebuilt ready for train (sovits v2)" in r.stdout and "exported" in r.stdout and "global batch = 4" in r.stdout
    )

    rows = read_metrics(run / "metrics.jsonl")
    train_rows = [x for x in rows if x["split"] == "train"]
    assert [x["step"] for x in train_rows] == [1, 2, 3, 4]
    peak = 1e-4 * 0.5
    assert [x["lr/generator"] for x in train_rows] == pytest.approx([peak * 0.25, peak * 0.5, peak * 0.75, peak])
    assert [x["step"] for x in rows if x["split"] == "val"] == [2, 4]
    # the input pipeline's wait per step, in seconds and as a share of the step
    assert all(0 <= x["data_wait"] <= x["step_time"] and 0 <= x["data_wait_share"] <= 1 for x in train_rows)
    assert "loader worker(s)" in r.stdout and any(s.startswith("time: rebuild") for s in r.stdout.splitlines())

    records = wr.read_records(wr.find_run_file(run / "wandb"))
    cfg = wr.run_config(records)
    assert (cfg["lr_scale"], cfg["warmup_steps"], cfg["batch_size"]) == (0.5, 3, 4)
    assert cfg["peak_lr"] == pytest.approx(peak) and cfg["lr_groups"]["generator_text"] == pytest.approx(peak * 0.4)
    assert cfg["rebuild/generator/filled_from_base"] == 103 and cfg["rebuild/discriminator/filled_from_base"] == 111
    assert cfg["inputs"]["init"]["sha256"] == read(sovits_files["init"]).sha256() and cfg["version"] == "v2"
    hist = wr.history_rows(records)
    steps = [h for h in hist if "train/loss" in h]
    assert [h["_step"] for h in steps] == [1, 2, 3, 4]
    assert [h["train/data_wait"] for h in steps] == pytest.approx([x["data_wait"] for x in train_rows])
    assert [h["train/lr/generator"] for h in steps] == pytest.approx([x["lr/generator"] for x in train_rows])
    assert any(h.get("rebuild/table", {}).get("_type") == "table-file" for h in hist)
    audio = [k for h in hist for k, v in h.items() if isinstance(v, dict) and v.get("_type") == "audio-file"]
    assert audio and all(k.startswith("val/audio/") for k in audio)
    assert "model" in [a.type for a in wr.artifacts(records)]
    (export,) = (run / "SoVITS_weights_v2").iterdir()
    # 14 train utterances x7 per epoch (upstream's epoch): 4 steps are part of one epoch, continuing the
    # init file's counters (gsvfix_e1_s2.pth: "1epoch_2iteration"): e1 + 1, s2 + 4
    words = " ".join(r.stdout.split())  # prose is wrapped to 80 columns
    assert "data: 14 train utterances x7 per epoch, as upstream (98 items); 2 val of 16 usable" in words
    assert export.name == "myvoice_e2_s6.pth" and read(export).version == "v2"


@pytest.mark.slow
def test_killed_run_resumes_from_last_complete_checkpoint(gpt_init, synth_v2, tmp_path):
    run = tmp_path / "run"
    args = [
        "train",
        "--init",
        gpt_init,
        "--data",
        str(synth_v2),
        "-o",
        str(run),
        "--max-steps",
        "400",
        "--save-every",
        "1",
        "--keep-last",
        "3",
        "--val-every",
        "1000",
        "--wandb-mode",
        "disabled",
    ]
    p = subprocess.Popen(
        [sys.executable, "-m", "gsv_ray", *args],
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list((run / "checkpoints").glob("step_*"))) < 3:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = sorted((run / "checkpoints").glob("step_*"))
    assert done, "no checkpoint was written before the kill"
    for c in done:  # every checkpoint under a final name is complete
        assert {"model.safetensors", "optimizer.pt", "rng_0.json", "state.json", "manifest.json"} <= {
            f.name for f in c.iterdir()
        }
        load_file(str(c / "model.safetensors"))
    last = int(done[-1].name.split("_")[1])
    r = _run(args[:8] + ["40" if last < 40 else str(last + 2)] + args[9:] + ["--resume", "latest"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"resumed from {done[-1]}" in " ".join(r.stdout.split())  # lines wrapped at 80 columns
    rows = read_metrics(run / "metrics.jsonl")
    steps = [x["step"] for x in rows if x["split"] == "train"]
    assert steps == sorted(set(steps))  # no step logged twice after the resume

    # the first command again, without --resume: refused in one line, the run left as it was (but
    # for the owner's lock file, where each command that takes -o writes its PID)
    def files():
        return {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != ".gsv-run.lock"}

    before = files()
    r = _run(args, tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "already holds a run" in r.stderr and "--resume" in r.stderr
    assert files() == before


BAD = {
    "data folder without 2-name2text.txt": ("nodata", ["2-name2text.txt"]),
    "GPT file with --stage sovits": ("stage", ["GPT", "SoVITS"]),
    "LR scale <= 0": ("lr", ["lr-scale"]),
    "v2-only phones with a v1 model": ("symbols", ["v1"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_before_training(case, gpt_init, synth_v2, fixtures_dir, tmp_path):
    kind, needles = BAD[case]
    data, init, extra = str(synth_v2), gpt_init, []
    if kind == "nodata":
        (tmp_path / "empty").mkdir()
        data = str(tmp_path / "empty")
    elif kind == "stage":
        extra = ["--stage", "sovits"]
    elif kind == "lr":
        extra = ["--lr-scale", "0"]
    elif kind == "symbols":
        init = str(fixtures_dir / "SoVITS_weights/gsvfix_e1_s2.pth")  # a v1 model; synth_v2 uses v2 phones
        from gsv_ray.data.synthetic import make_synthetic_experiment

        data = str(make_synthetic_experiment(tmp_path / "korean", version="v2", num_utterances=4))
        lines = (tmp_path / "korean/2-name2text.txt").read_text().splitlines()
        name, phones, w2p, text = lines[0].split("\t")
        lines[0] = "\t".join([name, "ㄱ ㅏ " + phones, w2p, text])
        (tmp_path / "korean/2-name2text.txt").write_text("\n".join(lines) + "\n")
    r = _run(
        ["train", "--init", init, "--data", data, "-o", str(tmp_path / "out"), "--max-steps", "3", *extra],
        tmp_path,
        in_process=True,
    )
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gsv-ray: error:"), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.slow
def test_run_config_records_this_runs_init_path(gpt_init, synth_v2, tmp_path):
    """Issue 24.11: two copies of one file (same sha256, one rebuild cache entry): each run records
    the init path it was given, not the path of the run that first filled the cache."""
    import json
    import shutil

    paths = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        paths.append(str(shutil.copy(gpt_init, tmp_path / name / "voice.ckpt")))
    for i, path in enumerate(paths):
        r = _run(
            [
                "train",
                "--init",
                path,
                "--data",
                str(synth_v2),
                "-o",
                str(tmp_path / f"run{i}"),
                "--max-steps",
                "1",
                "--batch-size",
                "2",
                "--val-every",
                "1000",
                "--wandb-mode",
                "disabled",
            ],
            tmp_path,
            in_process=True,
        )
        assert r.returncode == 0, r.stderr
        inputs = json.loads((tmp_path / f"run{i}" / "run_config.json").read_text())["inputs"]
        assert inputs["init"]["path"] == path, (i, inputs["init"])
    assert len(list((tmp_path / "cache" / "rebuild").iterdir())) == 1  # the second run reused the first's rebuild
