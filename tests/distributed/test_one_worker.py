"""`train --workers 1`: one Ray actor trains (no Ray Train controller, helper actors or worker
group: on 2 cores they made every step ~10 % slower, bench_ray_overhead.py), with the same numbers
as local mode, Ray's restarts from the newest checkpoint, Ctrl-C + --resume, and one-line causes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gsv_ray.distributed.launch import RayOptions, train_on_ray
from gsv_ray.train import train
from tests.distributed.conftest import RAY_ENV
from tests.distributed.test_ray_train import _cfg, _files, _final_state, assert_same_gpt_exports
from tests.support.cli import run_cli_in_process
from tests.support.procs import ray_processes
from tests.support.threads import torch_threads

pytestmark = pytest.mark.slow  # real Ray Train runs

#: process titles of Ray Train's controller, its helper actors and its workers
TRAIN_TITLES = (
    "ray::TrainController",
    "ray::RayTrainWorker",
    "ray::PlacementGroupCleaner",
    "ray::SynchronizationActor",
    "ray::PreemptionWatcher",
)


def test_one_worker_equals_local_mode(ray_local, fixtures_dir, synth, tmp_path):
    """The same weights as local mode (one process, the same batch), and the same files in -o."""
    one = train(
        _cfg("sovits", fixtures_dir, synth, tmp_path / "local", batch_size=2), progress=False, say=lambda s: None
    )
    ray_run = train_on_ray(
        _cfg("sovits", fixtures_dir, synth, tmp_path / "ray", batch_size=2), RayOptions(workers=1), say=lambda s: None
    )
    a, b = _final_state(one.last_checkpoint), _final_state(ray_run.last_checkpoint)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-5 * max(1.0, max(float(t.abs().max()) for t in a.values())), worst
    assert [p.name for p in ray_run.exports] == [p.name for p in one.exports]
    assert ray_run.steps == 4 and (tmp_path / "ray" / "metrics.jsonl").is_file()
    # its checkpoints are one Tune trial's: --resume with Ray Train workers is refused in one line
    from gsv_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="started with --workers 1 and continues only so") as e:
        train_on_ray(
            _cfg("sovits", fixtures_dir, synth, tmp_path / "ray", batch_size=2),
            RayOptions(workers=2, resume=True),
            say=lambda s: None,
        )
    assert "\n" not in str(e.value) and e.value.exit_code == 2


def test_one_worker_failure_is_reported_with_its_cause(ray_local, inject_fault, fixtures_dir, synth, tmp_path):
    from gsv_ray.errors import InfraError

    inject_fault(tmp_path / "run", kind="raise", step=2, rank=0)
    with pytest.raises(InfraError) as e:
        train_on_ray(
            _cfg("gpt", fixtures_dir, synth, tmp_path / "run", batch_size=2, max_steps=4),
            RayOptions(workers=1),
            say=lambda s: None,
        )
    line = str(e.value)
    assert "\n" not in line and "on rank 0" in line and "RuntimeError: injected failure at step 2" in line, line
    assert e.value.exit_code == 1 and e.value.__cause__ is not None


def _newest_step(out: Path) -> int:
    import pyarrow.fs as pafs

    from gsv_ray.distributed.worker import checkpoint_folders

    fs = pafs.LocalFileSystem()
    steps = [s for run in (out / "ray").glob("gsv-*/run") for s, _ in checkpoint_folders(fs, str(run))]
    return max(steps, default=0)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds Ray's processes through /proc (Linux)")
def test_one_worker_survives_sigkill_ctrl_c_and_an_emptied_state_file_like_local_mode(
    ray_local, fixtures_dir, synth, tmp_path
):
    """`train --workers 1 --max-failures 1`: SIGKILL the training actor from outside after step 20
    (Ray restarts it; it continues from the newest checkpoint on storage), then Ctrl-C 20 steps on
    (exit 130, the resume hint, no node scratch left). The same command with --resume continues and is
    SIGKILLed in turn, its Tune state file (`tuner.pkl`) then emptied on disk as a kill while Tune writes
    it in place leaves it (seen in CI: the next `--resume` failed with "EOFError: Ran out of input").
    `--resume` once more (in this process, on the module's Ray) finishes: every step once in
    metrics.jsonl, GPT exports bit-identical to local mode's, and no Ray Train process ever ran."""
    from gsv_ray.track import read_metrics

    def args(out, *extra):
        return [
            sys.executable,
            "-m",
            "gsv_ray",
            "train",
            *sum(([f"--{k.replace('_', '-')}", v] for k, v in _files("gpt", fixtures_dir).items()), []),
            "--data",
            str(synth),
            "-o",
            str(out),
            "--max-steps",
            "200",
            "--batch-size",
            "2",
            "--save-every",
            "10",
            "--val-every",
            "1000",
            "--wandb-mode",
            "disabled",
            "--seed",
            "3",
            "--num-workers",
            "0",
            *extra,
        ]

    # one torch thread in both modes (Ray gives its 1-CPU worker OMP_NUM_THREADS=1): the same sums
    env = {**os.environ, **RAY_ENV, "GSV_RAY_SCRATCH": str(tmp_path / "scratch"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ray"
    seen: dict[int, str] = {}

    def wait_for(step: int, p, log: Path) -> None:
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None and _newest_step(out) < step:
            seen.update(ray_processes(p.pid))
            time.sleep(0.05)
        assert _newest_step(out) >= step, log.read_text()[-3000:]

    log = tmp_path / "ray.log"
    with log.open("w") as f:
        p = subprocess.Popen(
            args(out, "--workers", "1", "--max-failures", "1"),
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(20, p, log)
        killed_at = _newest_step(out)
        trainers = [pid for pid, t in ray_processes(p.pid).items() if t.startswith("ray::ImplicitFunc")]
        assert len(trainers) == 1, ray_processes(p.pid)
        os.kill(trainers[0], signal.SIGKILL)
        wait_for(killed_at + 20, p, log)
        os.killpg(p.pid, signal.SIGINT)
        assert p.wait(timeout=300) == 130, log.read_text()[-3000:]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    text = log.read_text()
    assert "the same command with --resume continues" in text, text[-3000:]
    restarts = [line for line in text.splitlines() if "restart: continuing from checkpoint_" in line]
    assert restarts, text[-3000:]  # the killed actor's successor continued from storage
    assert not (tmp_path / "scratch").exists()  # the run's node scratch went with it (and the emptied root)
    stopped_at = _newest_step(out)
    log = tmp_path / "resumed.log"
    with log.open("w") as f:
        p = subprocess.Popen(
            args(out, "--workers", "1", "--resume"), env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for(stopped_at + 10, p, log)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
    deadline = time.time() + 60  # Ray's actors outlive their driver briefly (and may checkpoint meanwhile)
    while time.time() < deadline and ray_processes(p.pid):
        time.sleep(0.2)
    assert "restart: continuing from checkpoint_" in log.read_text(), log.read_text()[-3000:]
    (state,) = (out / "ray").rglob("tuner.pkl")
    state.write_bytes(b"")
    again = run_cli_in_process(*args(out, "--workers", "1", "--resume")[3:], env=env, replace_env=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "restart: continuing from checkpoint_" in again.stdout + again.stderr
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"] == list(range(1, 201))
    assert not any(t.startswith(TRAIN_TITLES) for t in seen.values()), sorted(set(seen.values()))
    assert any(t.startswith("ray::ImplicitFunc") for t in seen.values())
    with torch_threads(1):  # as OMP_NUM_THREADS=1 gives a new process (and Ray its 1-CPU worker)
        # local mode needs no process of its own: the command in this one
        local = run_cli_in_process(*args(tmp_path / "local")[3:], env={"GSV_RAY_SCRATCH": str(tmp_path / "scratch")})
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    assert_same_gpt_exports(tmp_path / "local", out)


def test_more_workers_than_the_cluster_has_is_refused_before_the_run(ray_local, fixtures_dir, synth, tmp_path):
    """Issue 24.5, on a Ray we did not start (a joined cluster: here the module's): its CPUs are
    counted before the run starts, and the line names the --workers that fits."""
    from gsv_ray.errors import ConfigError

    cpus = int(ray_local.cluster_resources()["CPU"])
    with pytest.raises(ConfigError, match=f"the cluster has {cpus}. Fix: use --workers {cpus} or less") as e:
        train_on_ray(
            _cfg("gpt", fixtures_dir, synth, tmp_path / "o", batch_size=2),
            RayOptions(workers=cpus + 1),
            say=lambda s: None,
        )
    assert "\n" not in str(e.value) and e.value.exit_code == 2
    assert not (tmp_path / "o" / "ray_run.json").exists()  # nothing of a run started
