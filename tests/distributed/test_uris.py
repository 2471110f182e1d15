"""--init / --data / --storage as file:// URIs and through a real S3 server on loopback, end to end
(the CLI starts its own local Ray, as a user's command does): through S3 with 2 Ray Train workers,
as file:// URIs with one worker (its own Tune actor; file:// storage under Ray Train is the
two-node test's, tests/distributed/test_multinode.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gsv_ray.io import read
from tests.distributed.conftest import RAY_ENV
from tests.support.cli import run_cli_in_process
from tests.support.s3server import loopback_s3


@pytest.fixture(scope="module")
def s3():
    yield from loopback_s3()


def _cli(args, tmp_path, extra_env=None, *, refused=False, workers=2):
    """``train --workers N`` on ``args``: a real process with its own local Ray, or (``refused``: a run
    refused before any Ray starts) the command in this process (tests/support/cli.py)."""
    env = {
        **os.environ,
        **RAY_ENV,
        "GSV_RAY_CACHE": str(tmp_path / "cache"),
        "GSV_RAY_SCRATCH": str(tmp_path / "scratch"),
        **(extra_env or {}),
    }
    command = [
        "train",
        *args,
        "--max-steps",
        "4",
        "--batch-size",
        "2",
        "--save-every",
        "2",
        "--val-every",
        "1000",
        "--wandb-mode",
        "disabled",
        "--workers",
        str(workers),
    ]
    if refused:
        return run_cli_in_process(*command, env=env, replace_env=True)
    return subprocess.run(
        [sys.executable, "-m", "gsv_ray", *command], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_file_uris(fixtures_dir, synth, tmp_path):
    out, store = tmp_path / "out", tmp_path / "store"
    r = _cli(
        [
            "--init",
            (fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt").as_uri(),
            "--data",
            Path(synth).as_uri(),
            "--storage",
            store.as_uri(),
            "-o",
            str(out),
        ],
        tmp_path,
        workers=1,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (export,) = (out / "GPT_weights_v2").iterdir()
    assert read(export).kind == "gpt-export"
    # checkpoints live in the storage path (a one-worker run's are its Tune trial's, found by their step)
    from pyarrow.fs import LocalFileSystem

    from gsv_ray.distributed.worker import checkpoint_folders

    steps = [step for run in store.glob("*/run") for step, _ in checkpoint_folders(LocalFileSystem(), str(run))]
    assert 4 in steps, sorted(str(p.relative_to(store)) for p in store.rglob("*"))[:40]


@pytest.mark.slow
def test_s3_uris(s3, fixtures_dir, synth, tmp_path):
    fs = s3["fs"]
    with fs.open_output_stream("voices/in/gsvfix-e1.ckpt") as f:
        f.write((fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt").read_bytes())
    for p in Path(synth).rglob("*"):
        if p.is_file():
            with fs.open_output_stream(f"voices/data/exp/{p.relative_to(synth).as_posix()}") as f:
                f.write(p.read_bytes())
    env = {
        k: os.environ[k]
        for k in (
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            "AWS_EC2_METADATA_DISABLED",
            "NO_PROXY",
        )
    }
    out = tmp_path / "out"
    r = _cli(
        [
            "--init",
            "s3://voices/in/gsvfix-e1.ckpt",
            "--data",
            "s3://voices/data/exp",
            "--storage",
            "s3://voices/runs",
            "-o",
            str(out),
        ],
        tmp_path,
        env,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (export,) = (out / "GPT_weights_v2").iterdir()
    assert read(export).version == "v2"
    from pyarrow.fs import FileSelector

    stored = [i.path for i in fs.get_file_info(FileSelector("voices/runs", recursive=True))]
    assert any(p.endswith("step_00000004/model.safetensors") for p in stored), stored[:10]
    # bad storage: a bucket that does not exist is one line before any training
    bad = _cli(
        [
            "--init",
            "s3://voices/in/gsvfix-e1.ckpt",
            "--data",
            "s3://voices/data/exp",
            "--storage",
            "s3://no-such-bucket/runs",
            "-o",
            str(tmp_path / "bad"),
        ],
        tmp_path,
        env,
        refused=True,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["no cluster at --address", "more GPUs than exist", "storage not writable"])
def test_ray_bad_input_is_one_line_before_training(case, fixtures_dir, synth, tmp_path):
    import socket

    args = [
        "--init",
        str(fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt"),
        "--data",
        str(synth),
        "-o",
        str(tmp_path / "o"),
    ]
    if case == "no cluster at --address":
        with socket.socket() as s:  # a free port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args += ["--address", f"127.0.0.1:{port}"]
        needle = "no Ray cluster"
    elif case == "more GPUs than exist":
        args += ["--gpus-per-worker", "1"]
        needle = "GPUs"
    else:
        ro = tmp_path / "ro"
        ro.write_text("a file, not a folder")
        args += ["--storage", str(ro / "sub")]
        needle = "storage"
    r = _cli(args, tmp_path, refused=True)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gsv-ray: error:") and needle in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not list((tmp_path / "o").glob("*_weights*"))


@pytest.mark.slow
def test_more_workers_than_cpus_is_refused_before_ray_starts(fixtures_dir, synth, tmp_path):
    """Issue 24.5: ``--workers`` x ``--cpus-per-worker`` beyond this machine's CPUs on our own local
    Ray is one line, exit 2, at once (it trained oversubscribed, or ran 455 s into Ray's OOM text)."""
    import time

    workers = (os.cpu_count() or 1) + 1
    env = {**os.environ, **RAY_ENV, "GSV_RAY_CACHE": str(tmp_path / "cache"), "GSV_RAY_SCRATCH": str(tmp_path / "s")}
    env.pop("RAY_ADDRESS", None)
    t0 = time.monotonic()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gsv_ray",
            "train",
            "--init",
            str(fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt"),
            "--data",
            str(synth),
            "-o",
            str(tmp_path / "o"),
            "--max-steps",
            "2",
            "--wandb-mode",
            "disabled",
            "--workers",
            str(workers),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    took = time.monotonic() - t0
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--workers {workers}" in lines[0] and f"--workers {workers - 1}" in lines[0], lines
    assert "rebuilt" not in r.stdout and not (tmp_path / "o").exists()  # refused before anything ran
    assert took < 30, took


#: credentials a user put in the storage URI (pyarrow accepts ``s3://KEY:SECRET@bucket/path``)
LEAK_KEY, LEAK_SECRET = "AKIALEAKCHECK7Q", "sEcReTleakCHECK9zZ"


def _files_holding(roots, needle: bytes) -> list[str]:
    """Every file under ``roots`` whose bytes contain ``needle`` (binary W&B/pickle files included)."""
    hits = []
    for root in roots:
        for p in Path(root).rglob("*"):
            try:
                if p.is_file() and not p.is_symlink() and needle in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                pass
    return hits


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "tune"])
def test_storage_credentials_in_uri_are_never_printed_or_stored(command, s3, fixtures_dir, synth, tmp_path):
    """Issue 24.1: keys given inside ``--storage s3://KEY:SECRET@bucket/...`` appear in no output, log,
    run record, W&B file (binary ones too), temp or home file, nor in Ray's state on the storage;
    the run uses them (no keys in the environment) and a train --resume without them says, in one
    line, to give them again."""
    import tempfile

    from pyarrow.fs import FileSelector

    home, out, prefix = tmp_path / "home", tmp_path / "out", f"voices/leak-{command}"
    home.mkdir()
    args = [
        "--init",
        str(fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt"),
        "--data",
        str(synth),
        "--storage",
        f"s3://{LEAK_KEY}:{LEAK_SECRET}@{prefix}",
        "-o",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--wandb-mode",
        "offline",
    ]
    args += (
        ["--workers", "1", "--save-every", "2", "--val-every", "1000"]
        if command == "train"
        else [
            "--num-samples",
            "1",
            "--val-every",
            "2",
            "--warmup-choices",
            "0",
            "--scheduler",
            "fifo",
            "--name",
            "leak",
            "--metric",
            "val_loss",
            "--no-refit",
        ]
    )
    with tempfile.TemporaryDirectory(prefix="gsvleak-", dir="/tmp") as tmpdir:  # short: Ray's socket paths
        env = {
            **os.environ,
            **RAY_ENV,
            "GSV_RAY_CACHE": str(tmp_path / "cache"),
            "WANDB_API_KEY": "",
            "GSV_RAY_SCRATCH": str(tmp_path / "scratch"),
            "HOME": str(home),
            "TMPDIR": tmpdir,
            "AWS_ACCESS_KEY_ID": "",
            "AWS_SECRET_ACCESS_KEY": "",
        }
        r = subprocess.run(
            [sys.executable, "-m", "gsv_ray", command, *args], env=env, capture_output=True, text=True, timeout=600
        )
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))  # W&B's binary run file was written
        fs = s3["fs"]
        stored = [i.path for i in fs.get_file_info(FileSelector(prefix, recursive=True)) if i.type.name == "File"]
        assert stored
        leaks = {}
        for needle in (LEAK_SECRET, LEAK_KEY):
            found = ["stdout/stderr"] if needle in r.stdout + r.stderr else []
            found += _files_holding([tmp_path, tmpdir], needle.encode())  # -o, logs, W&B, cache, scratch, HOME, TMPDIR
            found += [f"s3://{p}" for p in stored if needle.encode() in fs.open_input_stream(p).read()]
            if found:
                leaks[needle] = found
        assert leaks == {}
        assert f"s3://***@{prefix}" in r.stdout  # shown masked
        if command == "train":  # a --resume without the keys (to train on: the run finished): one line
            resumed = [*args[: args.index("--storage")], *args[args.index("-o") :], "--resume"]  # saying to give them
            resumed[resumed.index("--max-steps") + 1] = "4"
            again = run_cli_in_process("train", *resumed, env=env, replace_env=True)  # refused before Ray
            assert again.returncode == 2, again.stdout[-2000:] + again.stderr[-2000:]
            assert len(again.stderr.strip().splitlines()) == 1 and "--storage" in again.stderr, again.stderr


def test_resume_takes_the_recorded_storage_unless_its_credentials_were_masked(tmp_path):
    """``--resume`` without ``--storage``: the storage ``ray_run.json`` records (keys never are);
    a masked one is one line asking for them; the default ``-o/ray`` is not recorded (it moves with -o)."""
    import json

    from gsv_ray.distributed.launch import RayOptions, _recorded_run, _recorded_storage, run_storage
    from gsv_ray.errors import ConfigError

    out, opts = tmp_path / "o", RayOptions(workers=1, resume=True)
    out.mkdir()
    for kept, want in (("s3://b/p", "s3://b/p"), (None, str(out.resolve() / "ray"))):
        (out / "ray_run.json").write_text(json.dumps({"name": "gsv-x", "layout": "actor", "storage": kept}))
        assert run_storage(opts, out, _recorded_run(out)) == want
    assert (
        run_storage(RayOptions(workers=1, resume=True, storage="s3://K:S@b/q"), out, _recorded_run(out))
        == "s3://K:S@b/q"
    )
    assert _recorded_storage("s3://K:S@b/q", out) == "s3://***@b/q" and _recorded_storage(str(out / "ray"), out) is None
    (out / "ray_run.json").write_text(json.dumps({"name": "gsv-x", "layout": "actor", "storage": "s3://***@b/q"}))
    with pytest.raises(ConfigError, match="pass --storage again") as e:
        run_storage(opts, out, _recorded_run(out))
    assert "\n" not in str(e.value)
