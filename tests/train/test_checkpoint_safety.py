"""What `--resume` reads back never runs code, and a damaged newest checkpoint falls back to the newest
complete one (the real CLI, in-process: its output and exit status; real files damaged on disk)."""

from __future__ import annotations

import json
import os
import pickle

import pytest

from gsv_ray.manifest import sha256_file as _sha256
from gsv_ray.track import read_metrics
from tests.support.cli import run_cli_in_process

pytestmark = pytest.mark.slow  # each trains a run and resumes it


class _Payload:
    """Unpickling this runs a shell command (what a crafted checkpoint file would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(GSV_RAY_CACHE=str(tmp_path / "cache"), WANDB_API_KEY="")
    return env


def _train(gpt_init, data, run, tmp_path, *extra):
    return run_cli_in_process(
        "train",
        "--init",
        gpt_init,
        "--data",
        str(data),
        "-o",
        str(run),
        "--batch-size",
        "2",
        "--save-every",
        "2",
        "--keep-last",
        "3",
        "--val-fraction",
        "0",
        "--wandb-mode",
        "disabled",
        "--num-workers",
        "0",
        *extra,
        env=_env(tmp_path),
        replace_env=True,
    )


@pytest.fixture
def two_checkpoints(gpt_init, synth_v2, tmp_path):
    run = tmp_path / "run"
    r = _train(gpt_init, synth_v2, run, tmp_path, "--max-steps", "4")
    assert r.returncode == 0, r.stderr
    return run


def _rewrite(ckpt, name, data: bytes):
    """Replace a file AND fix the manifest, as someone with write access to the storage could."""
    (ckpt / name).write_bytes(data)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"][name] = {"size": len(data), "sha256": _sha256(ckpt / name)}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def test_crafted_pickles_in_a_checkpoint_never_run(two_checkpoints, gpt_init, synth_v2, tmp_path):
    newest = two_checkpoints / "checkpoints" / "step_00000004"
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker), protocol=2)
    # the files Accelerate's load_state unpickled with weights_only=False: ignored now
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "scheduler.bin", "optimizer.bin"):
        (newest / name).write_bytes(payload)
    r = _train(gpt_init, synth_v2, two_checkpoints, tmp_path, "--max-steps", "6", "--resume", "latest")
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout and "step_00000004" in r.stdout and not marker.exists()
    # a payload in a file we do read, with the manifest forged to match: refused, never run
    newest = two_checkpoints / "checkpoints" / "step_00000006"
    _rewrite(newest, "optimizer.pt", payload)
    r = _train(gpt_init, synth_v2, two_checkpoints, tmp_path, "--max-steps", "8", "--resume", "latest")
    assert r.returncode == 2 and not marker.exists()
    (line,) = r.stderr.strip().splitlines()
    assert "optimizer.pt" in line and "step_00000006" in line and "Traceback" not in r.stderr


@pytest.mark.parametrize("damage", ["truncate model", "empty state", "delete rng", "corrupt optimizer"])
def test_damaged_newest_checkpoint_falls_back(damage, two_checkpoints, gpt_init, synth_v2, tmp_path):
    newest = two_checkpoints / "checkpoints" / "step_00000004"
    if damage == "truncate model":
        f = newest / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "empty state":
        (newest / "state.json").write_bytes(b"")
    elif damage == "delete rng":
        (newest / "rng_0.json").unlink()
    else:  # same size, different bytes
        f = newest / "optimizer.pt"
        data = bytearray(f.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 4096] = os.urandom(4096)[: len(data) - len(data) // 2]
        f.write_bytes(bytes(data))
    r = _train(gpt_init, synth_v2, two_checkpoints, tmp_path, "--max-steps", "6", "--resume", "latest")
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())  # lines are wrapped at 80 columns for people
    assert "warning: skipped" in out and "step_00000004" in out
    assert "resumed from" in out and "step_00000002 (step 2," in out
    steps = [x["step"] for x in read_metrics(two_checkpoints / "metrics.jsonl") if x["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]  # rows after the checkpoint used were replaced, none duplicated


def test_a_damaged_checkpoint_named_explicitly_is_one_line(two_checkpoints, gpt_init, synth_v2, tmp_path):
    newest = two_checkpoints / "checkpoints" / "step_00000004"
    (newest / "state.json").write_bytes(b"")
    r = _train(gpt_init, synth_v2, two_checkpoints, tmp_path, "--max-steps", "6", "--resume", str(newest))
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "state.json" in line and str(newest) in line
