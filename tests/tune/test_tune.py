"""`gsv-ray tune`: trials from one shared rebuild, every trial fully in W&B, ASHA, resume, demo."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from gsv_ray.io import read
from gsv_ray.rebuild import rebuild
from gsv_ray.track import read_metrics
from gsv_ray.track import wandb_file as wr
from tests.support.cli import run_cli_in_process

RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.01"}


def _env(tmp_path, cache=None, **extra):
    """The commands' environment: the test's own cache unless ``cache`` (the module's, where the test
    counts no cache entries: the rebuild of the demo inputs is made once, then reused)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        RAY_ENV,
        GSV_RAY_CACHE=str(cache or tmp_path / "cache"),
        GSV_RAY_SCRATCH=str(tmp_path / "scratch"),
        WANDB_API_KEY="",
        **extra,
    )
    return env


@pytest.fixture(scope="module")
def demo_inputs(tmp_path_factory):
    from gsv_ray.demo import make_demo_inputs

    return {**make_demo_inputs(tmp_path_factory.mktemp("demo")), "cache": tmp_path_factory.mktemp("cache")}


def _in_process(tmp_path, args):
    """``tune`` as :func:`_tune` gives its command, run in this process (``tests/support/cli.py``) with the
    environment the subprocess would get: for calls refused or answered before any Ray or trial starts."""
    assert args[:3] == [sys.executable, "-m", "gsv_ray"], args[:3]
    return run_cli_in_process(*args[3:], env=_env(tmp_path), replace_env=True)


def _tune(tmp_path, inputs, *extra, out="run"):
    args = [
        sys.executable,
        "-m",
        "gsv_ray",
        "tune",
        "--init",
        str(inputs["init"]),
        "--base-d",
        str(inputs["base_d"]),
        "--data",
        str(inputs["data"]),
        "-o",
        str(tmp_path / out),
        *extra,
    ]
    return args


@pytest.mark.slow
def test_tune_three_trials_asha_fully_tracked(demo_inputs, tmp_path):
    """Every trial's W&B run is complete whatever its fate: ASHA's stop is graceful (the trial reads
    the decision after its report and ends like a finished one), so a trial stopped early has the
    same config keys, per-step loss and LR, validation rows, audio, its export as an artifact and a
    real runtime. (Before: stopped trials were replayed from metrics.jsonl without peak_lr,
    lr_groups, the model config, audio or artifact, and a 0-1 s runtime.)"""
    r = subprocess.run(
        _tune(
            tmp_path,
            demo_inputs,
            "--max-steps",
            "6",
            "--val-every",
            "2",
            "--batch-size",
            "4",
            "--num-samples",
            "3",
            "--warmup-choices",
            "0",
            "3",
            "--lr-scale-range",
            "0.05",
            "1",
            "--max-concurrent",
            "1",
            "--name",
            "t3",
            "--grace-steps",
            "2",
            "--search-seed",
            "7",
            "--metric",
            "val_loss",
            "--no-refit",
        ),
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "run"
    assert len(list((tmp_path / "cache" / "rebuild").iterdir())) == 1  # one rebuild for every trial
    res = json.loads((out / "results.json").read_text())
    trials = res["trials"]
    assert len(trials) == 3 and not res["interrupted"]
    fates = {t["status"] for t in trials}
    assert fates == {"completed", "early-stopped"}, trials  # the seed samples settings ASHA tells apart
    # fates: a trial short of its budget here was stopped by ASHA, which wrote it down
    from gsv_ray.tune.asha import stopped_trials

    short = {t["trial_id"] for t in trials if t["steps"] < 6}
    assert {t["trial_id"] for t in trials if t["status"] == "early-stopped"} == short
    assert stopped_trials(out / ".gsv-early-stopped") == short
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    runs = {}
    for f in wr.find_run_files(out / "wandb"):
        recs = wr.read_records(f)
        runs[wr.run_info(recs).id] = recs
    keys = None
    for t in trials:  # every trial: one offline run with its settings, per-step loss and LR, the rebuild table
        recs = runs[t["trial_id"]]
        info, cfg = wr.run_info(recs), wr.run_config(recs)
        assert (info.group, info.job_type) == ("t3", "trial")
        assert cfg["lr_scale"] == pytest.approx(t["lr_scale"]) and cfg["warmup_steps"] == t["warmup_steps"]
        keys = keys or set(cfg)
        assert set(cfg) == keys and {"peak_lr", "lr_groups", "inputs", "model", "world_size", "total_steps"} <= keys
        assert cfg["decay"] is not None and cfg["total_steps"] == 6
        history = wr.history_rows(recs)
        rows = [h for h in history if "train/loss" in h]
        assert [h["_step"] for h in rows] == list(range(1, t["steps"] + 1))
        peak, w = 1e-4 * t["lr_scale"], t["warmup_steps"]
        want = [peak * (0.1 + 0.9 * (s - 1) / w) if s - 1 < w else None for s in range(1, len(rows) + 1)]
        for h, lr in zip(rows, want):
            assert "train/lr/generator" in h
            if lr is not None:
                assert h["train/lr/generator"] == pytest.approx(lr, rel=1e-9)
        assert [h["_step"] for h in history if "val/loss" in h] == list(range(2, t["steps"] + 1, 2))
        assert any(k.startswith("val/audio/") for h in history for k in h)
        assert any(h.get("rebuild/table", {}).get("_type") == "table-file" for h in history)
        assert wr.artifacts(recs), t["trial_id"]  # its export
        for a in wr.artifacts(recs):  # every file `wandb sync` will upload is still there (not in a node's scratch)
            assert all(Path(c.local_path).is_file() for c in a.manifest.contents), a.name
        summary = wr.summary(recs)
        assert summary["fate"] == t["status"]
        assert summary["_runtime"] >= 1.0, summary  # the run really ran (a replay took 0-1 s)
    (summary,) = [recs for recs in runs.values() if wr.run_info(recs).job_type == "tune-summary"]
    assert any(h.get("tune/results", {}).get("_type") == "table-file" for h in wr.history_rows(summary))
    assert wr.overlapping_writers(out / "wandb") == []  # one writer at a time for every run

    (best,) = list((out / "best").rglob("*.pth"))  # --no-refit: the winning trial's own export, at the top
    assert best.parent.parent == out / "best" and not (out / "refit").exists()
    assert res["refit"]["status"] == "skipped" and res["best_files"] == {"trial": [str(best)]}
    f = read(best)
    assert (f.kind, f.version) == ("sovits-export", "v2")
    back = rebuild(best, task="infer")
    assert back.report.counts()["generator"]["loaded"] == len(f.state_dict)
    assert "best weights:" in r.stdout and str(best) in r.stdout.replace("\n  ", " ")

    # the same command again, without --resume: refused in one line, nothing of the first search touched
    before = {p: p.stat().st_mtime_ns for p in [out / "results.json", out / "summary.png", best]}
    again = _in_process(
        tmp_path,
        _tune(
            tmp_path,
            demo_inputs,
            "--max-steps",
            "6",
            "--val-every",
            "2",
            "--batch-size",
            "4",
            "--num-samples",
            "3",
            "--warmup-choices",
            "0",
            "3",
            "--name",
            "t3",
            "--metric",
            "val_loss",
        ),
    )
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr[-2000:]
    assert "already exists" in again.stderr and "--resume" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in before} == before
    # with --resume: the search finished, so nothing is rewritten and no second summary run is opened
    runs_before = sorted((out / "wandb").glob("offline-run-*"))
    done = _in_process(
        tmp_path,
        _tune(
            tmp_path,
            demo_inputs,
            "--max-steps",
            "6",
            "--val-every",
            "2",
            "--batch-size",
            "4",
            "--num-samples",
            "3",
            "--warmup-choices",
            "0",
            "3",
            "--name",
            "t3",
            "--resume",
            "--metric",
            "val_loss",
        ),
    )
    assert done.returncode == 0 and "nothing to resume" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    assert str(best) in done.stdout.replace("\n", "")
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert sorted((out / "wandb").glob("offline-run-*")) == runs_before
    other = _in_process(
        tmp_path,
        _tune(
            tmp_path, demo_inputs, "--max-steps", "6", "--val-every", "2", "--warmup-choices", "0", "--name", "another"
        ),
    )  # a new name into the same -o would still replace best/ and results.json
    assert other.returncode == 2 and "already holds a tune run" in other.stderr, other.stderr[-2000:]


def _trial_checkpoints(experiment: Path) -> dict[str, list[int]]:
    """{trial id: steps of its complete checkpoints} in a search's storage folder (a one-worker trial
    keeps them in its Tune trial folder, named by Tune)."""
    from pyarrow.fs import LocalFileSystem

    from gsv_ray.distributed.worker import checkpoint_folders
    from gsv_ray.train.state import problem

    trials = [d for d in experiment.iterdir() if d.is_dir()] if experiment.is_dir() else []
    return {
        d.name: [step for step, name in checkpoint_folders(LocalFileSystem(), str(d)) if problem(d / name) is None]
        for d in trials
    }


@pytest.mark.slow
def test_interrupted_tune_resumes_every_trial(demo_inputs, tmp_path):
    """Ctrl-C once one trial has finished (its outputs placed in -o/trials/<id>/, moved out of storage)
    and the next has its first checkpoint; the third has not started. results.json then shows what each
    trial had checkpointed. `--resume` continues the interrupted trial from its newest complete
    checkpoint, runs the third, and keeps the finished trial's export and metrics (before: its folder
    was emptied, and the winner's weights in best/ could be none): every step once in every trial."""
    args = _tune(
        tmp_path,
        demo_inputs,
        "--max-steps",
        "6",
        "--val-every",
        "2",
        "--batch-size",
        "4",
        "--num-samples",
        "3",
        "--warmup-choices",
        "0",
        "--scheduler",
        "fifo",
        "--max-concurrent",
        "1",
        "--name",
        "ti",
        "--wandb-mode",
        "disabled",
        "--metric",
        "val_loss",
        "--no-refit",
    )
    p = subprocess.Popen(
        args, env=_env(tmp_path, demo_inputs["cache"]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    storage = tmp_path / "run" / "ray" / "ti"

    def with_checkpoints() -> dict[str, list[int]]:
        return {trial_id: steps for trial_id, steps in _trial_checkpoints(storage).items() if steps}

    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and len(with_checkpoints()) < 2:
        time.sleep(0.05)  # the first trial finished (one at a time), the second has its first checkpoint
    p.send_signal(signal.SIGINT)
    first, _ = p.communicate(timeout=300)
    assert p.returncode == 130 and "interrupted" in first.lower(), first[-3000:]
    assert not list((tmp_path / "scratch").glob("ti-*")), "the trials' node scratch outlived the run"
    interrupted_at = time.time()
    saved = {trial_id: max(steps) for trial_id, steps in with_checkpoints().items()}
    assert len(saved) == 2, first[-3000:]
    # results.json after Ctrl-C shows what each trial had checkpointed: its steps and validations
    res = {t["trial_id"]: t for t in json.loads((tmp_path / "run" / "results.json").read_text())["trials"]}
    for trial_id, step in saved.items():
        t = res[trial_id]
        assert t["steps"] >= step and t["best_value"] is not None and len(t["val_history"]) >= step // 2, t
    assert sorted(res[t]["status"] for t in saved) == ["completed", "interrupted"], res  # one done, one mid-run
    r = subprocess.run(
        args + ["--resume"], env=_env(tmp_path, demo_inputs["cache"]), capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(res["trials"]) == 3 and all(t["status"] == "completed" for t in res["trials"]), res["trials"]
    for t in res["trials"]:  # none ran twice from scratch: every step appears once in each trial's metrics
        trial = tmp_path / "run" / "trials" / t["trial_id"]
        assert list(trial.glob("SoVITS_weights_v2/*.pth")), (t["trial_id"], sorted(p.name for p in trial.iterdir()))
        rows = [row for row in read_metrics(trial / "metrics.jsonl") if row["split"] == "train"]
        assert [row["step"] for row in rows] == list(range(1, 7)), (t["trial_id"], rows)
        # and each continued from its newest complete checkpoint: steps up to it are the first run's
        done = saved.get(t["trial_id"], 0)
        assert all(row["time"] < interrupted_at for row in rows if row["step"] <= done), (t["trial_id"], done)
    assert list((tmp_path / "run" / "best").rglob("*.pth"))


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    """As README.md runs it: a relative --dir (Ray workers run in other directories). The console is
    for people: at most 40 lines, none wider than 80 columns, no traceback, ending with the best
    settings, the best export and the command that uploads the W&B runs; Ray's and W&B's own output
    is in the run's log file."""
    home = tmp_path / "home"
    home.mkdir()
    tmp = Path(tempfile.mkdtemp(prefix="gsv-t-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    env = _env(tmp_path, HOME=str(home), TMPDIR=str(tmp))
    env.pop("GSV_RAY_SCRATCH")  # the default: a per-user folder in the temp dir
    try:
        r = subprocess.run(
            [sys.executable, "-m", "gsv_ray", "demo", "--dir", "d", "--max-steps", "6", "--num-samples", "2"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        # nothing of ours outside the demo folder (-o and the storage in it), the cache and W&B's
        # folders; the temp dir keeps only Ray's own session logs
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "d", "home"]
        assert sorted(p.name for p in tmp.iterdir()) in (["ray"], []), list(tmp.iterdir())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    outside = [p for p in home.rglob("*") if p.is_file() and not {"wandb", "matplotlib"} & set(p.parts)]  # their caches
    assert outside == [], outside
    lines = (r.stdout + r.stderr).rstrip("\n").splitlines()
    assert len(lines) <= 40, "\n".join(lines)
    # prose at most 80 columns; a longer line is one path or one command, whole
    wide = [
        line
        for line in lines
        if len(line) > 80 and not (" " not in line.strip() or line.strip().startswith("wandb sync "))
    ]
    assert wide == [], "\n".join(wide)
    assert "Traceback" not in r.stdout + r.stderr
    (best,) = (tmp_path / "d/runs/demo/best").glob("SoVITS_weights_v2/*.pth")  # the refit's
    (trial,) = (tmp_path / "d/runs/demo/best/trial").glob("SoVITS_weights_v2/*.pth")  # the winning trial's own
    assert lines[-4].startswith("best: lr_scale ")
    assert lines[-3] == f"winning trial: {trial.relative_to(tmp_path)}"
    assert lines[-2] == f"best weights (refit): {best.relative_to(tmp_path)}"
    assert lines[-1] == "W&B: 4 offline runs; upload: wandb sync d/runs/demo/wandb/offline-run-*"
    assert (tmp_path / "d/runs/demo/results.json").is_file()
    assert read(best).kind == "sovits-export"
    log = (tmp_path / "d/runs/demo/logs/gsv-ray.log").read_text()
    assert "Configuration for experiment" in log and "[rank 0/1]" in log  # Tune's chatter and the trials' lines
    # one local Ray for the search and its refit (before: a second one started for the refit): the Ray
    # session folders the search's and the refit's artifact lines name
    sessions = set(re.findall(r"/ray/(session_[0-9_-]+)/artifacts/[0-9_-]+/(demo|gsv-[0-9a-f-]+)/", log))
    assert {run.startswith("gsv-") for _, run in sessions} == {False, True}, sessions  # the search's; the refit's
    assert len({session for session, _ in sessions}) == 1, sessions
    _padding_stays_sparse(tmp_path / "d/runs/demo", home)


def _padding_stays_sparse(run: Path, home: Path) -> None:
    """Disk use (docs/design/benchmarks.md, "Demo disk use"): each trial's v2 export and the best/ copy keep the zero
    padding a hole (86 MB files, a few MB on disk) with the bytes the trial logged (its W&B
    artifact's md5), which names the export in -o, so W&B staged no copy in its data folder."""
    import base64
    import hashlib

    exports = sorted(run.glob("trials/*/SoVITS_weights_v2/*.pth")) + sorted(run.glob("best/SoVITS_weights_v2/*.pth"))
    assert len(exports) >= 2
    for p in exports:
        st = p.stat()
        assert st.st_blocks * 512 < st.st_size // 4, (p, st.st_blocks * 512, st.st_size)
    for p in run.glob("trials/*/SoVITS_weights_v2/*.pth"):
        folder = next((run / "wandb").glob(f"offline-run-*-{p.parts[-3]}"))  # the trial's run (id = trial id)
        (art,) = [a for a in wr.artifacts(wr.read_records(wr.find_run_file(folder))) if a.type == "model"]
        (entry,) = art.manifest.contents
        assert Path(entry.local_path).resolve() == p.resolve()
        assert entry.digest == base64.b64encode(hashlib.md5(p.read_bytes()).digest()).decode()
    staged = [p for p in home.rglob("artifacts/staging/*") if p.stat().st_size > 1 << 20]
    assert staged == [], staged


@pytest.mark.slow
def test_trials_of_two_workers_train_on_ray_train(demo_inputs, tmp_path):
    """`--workers-per-trial 2`: each trial is a Ray Train run (a worker group under the trial) with
        its step checkpoints in its own Train run folder; the outputs are as a one-worker trial's. Two such
    trials side by side fit in the CPUs the search counts for them (before, each trial's Tune function
    also held its workers' CPUs: both waited for workers forever)."""
    r = subprocess.run(
        _tune(
            tmp_path,
            demo_inputs,
            "--max-steps",
            "4",
            "--val-every",
            "2",
            "--batch-size",
            "2",
            "--num-samples",
            "2",
            "--warmup-choices",
            "0",
            "--scheduler",
            "fifo",
            "--workers-per-trial",
            "2",
            "--name",
            "tw",
            "--metric",
            "val_loss",
            "--no-refit",
        ),
        env=_env(tmp_path, demo_inputs["cache"]),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "run"
    trials = json.loads((out / "results.json").read_text())["trials"]
    assert [t["status"] for t in trials] == ["completed", "completed"], trials
    for t in trials:
        train_run = out / "ray" / f"tw-{t['trial_id']}"  # the trial's Ray Train run
        assert sorted(p.name for p in train_run.glob("step_*")) == ["step_00000002", "step_00000004"]
        assert list((out / "trials" / t["trial_id"]).glob("SoVITS_weights_v2/*.pth")), t
        rows = read_metrics(out / "trials" / t["trial_id"] / "metrics.jsonl")
        assert [row["step"] for row in rows if row["split"] == "train"] == [1, 2, 3, 4]
    runs = [wr.run_config(wr.read_records(f)) for f in wr.find_run_files(out / "wandb")]
    assert sorted(c.get("world_size") for c in runs if "lr_scale" in c) == [2, 2]


@pytest.mark.parametrize(
    "given, cluster, want",
    [
        ({}, {"CPU": 6.0}, 2),  # two trials: 2 x (1 + 2 workers); Tune alone started six functions
        ({}, {"CPU": 8.0, "GPU": 2.0}, 1),  # with --gpus-per-worker 1: one trial's two GPUs
        ({"max_concurrent": 1}, {"CPU": 6.0}, 1),  # the user's choice stands
        ({"workers_per_trial": 1}, {"CPU": 6.0}, None),  # a one-worker trial reserves all it uses: Tune's count
    ],
)
def test_trials_of_ray_train_runs_start_only_as_many_as_fit_with_their_workers(given, cluster, want):
    """A trial whose workers are a Ray Train run reserves one CPU for its function in Tune (its workers
    ask for their own), so Tune alone would start a trial per CPU, whose workers then wait forever."""
    from gsv_ray.tune.search import TuneOptions, max_concurrent

    kw = {"workers_per_trial": 2, **given}
    if cluster.get("GPU"):
        kw["gpus_per_worker"] = 1.0
    assert max_concurrent(TuneOptions(**kw), cluster) == want


BAD = {
    "empty lr range": (["--lr-scale-range", "1", "0.5"], "LO < HI"),
    "negative warmup": (["--warmup-choices", "-5"], "warmup"),
    "resume of an unknown run": (["--resume", "--name", "nope"], "no tune run named"),
    # our own local Ray's CPUs are known before it starts: refused at once (before: after starting Ray)
    "more concurrency than fits": (["--max-concurrent", "64"], "--max-concurrent 64 trials need"),
    # trials are compared by validation loss: nothing held out was a Tune traceback after training
    "nothing held out": (["--val-fraction", "0"], "--val-fraction 0"),
    # the search's objective: a logged validation metric needs its direction; a name that is none is refused
    "a metric without its mode": (["--metric", "val/mel_l1"], "--metric val/mel_l1 needs --mode"),
    "not a validation metric": (["--metric", "loss"], "--metric loss is not a validation metric"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_tune_bad_input(case, demo_inputs, tmp_path):
    """Refused in one line before any Ray starts (a local Ray leaves its session folder in the user's
    RAY_TMPDIR) or any trial runs."""
    extra, needle = BAD[case]
    args = _tune(tmp_path, demo_inputs, "--max-steps", "6", "--warmup-choices", "0", "2", *extra)
    tmp = Path(tempfile.mkdtemp(prefix="gsv-t-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    try:
        r = run_cli_in_process(*args[3:], env=_env(tmp_path, RAY_TMPDIR=str(tmp)), replace_env=True)
        started = list(tmp.iterdir())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gsv-ray: error:") and needle in lines[0], r.stderr[-2000:]
    assert started == [] and not (tmp_path / "run" / "trials").exists()


@pytest.mark.slow
def test_v4_demo_every_trial_tracked(tmp_path):
    """`gsv-ray demo --version v4`: a search over a narrow v4 model from a LoRA export + its base;
    every trial trains the CFM with LoRA and has its W&B run (config, per-step LR, validation, mel
    images, its export as an artifact), and the best export is a v4 LoRA file."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gsv_ray",
            "demo",
            "--version",
            "v4",
            "--dir",
            str(tmp_path / "d"),
            "--max-steps",
            "4",
            "--num-samples",
            "2",
        ],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    words = " ".join(r.stdout.split())  # prose is wrapped to 80 columns
    assert words.startswith(f"gsv-ray demo in {tmp_path / 'd'}: a synthetic voice and a small v4 base + LoRA")
    out = tmp_path / "d" / "runs" / "demo-v4"
    trials = json.loads((out / "results.json").read_text())["trials"]
    assert len(trials) == 2 and {t["status"] for t in trials} <= {"completed", "early-stopped"}
    runs = {wr.run_info(recs).id: recs for recs in map(wr.read_records, wr.find_run_files(out / "wandb"))}
    for t in trials:  # ASHA (the demo's scheduler) may stop some after step 2: their runs are as complete
        recs = runs[t["trial_id"]]
        cfg, history = wr.run_config(recs), wr.history_rows(recs)
        assert cfg["version"] == "v4" and cfg["lr_scale"] == pytest.approx(t["lr_scale"])
        assert [h["_step"] for h in history if "train/lr/generator" in h] == list(range(1, t["steps"] + 1))
        assert [h["_step"] for h in history if "val/loss" in h] == list(range(2, t["steps"] + 1, 2))
        assert any(k.startswith("val/mel/") for h in history for k in h)
        assert wr.artifacts(recs), t["trial_id"]
    (best,) = list((out / "best").glob("SoVITS_weights_v4/*.pth"))  # the refit's (the trial's: best/trial/)
    f = read(best)
    assert (f.kind, f.version, f.lora_rank) == ("sovits-lora-export", "v4", 4) and best.name.endswith("_l4.pth")


@pytest.mark.parametrize(
    "given, held_out", [({}, 0.1), ({"val_fraction": 0.25}, 0.25), ({"val_names": "names.txt"}, 0.0)]
)
def test_tune_holds_out_a_default_set_where_train_holds_out_none(given, held_out, tmp_path):
    """`train` trains on every utterance by default; `tune` compares trials on held-out utterances, so
    without --val-fraction / --val-names it holds out 10 % (an explicit choice is kept as given)."""
    from gsv_ray.train import load_config
    from gsv_ray.tune.search import load_tune_config

    base = {"init": "a.pth", "data": str(tmp_path), "output_dir": str(tmp_path / "o"), "max_steps": 8}
    assert load_config(None, **base).val_fraction == 0.0
    cfg, _ = load_tune_config(None, train={**base, **given})
    assert cfg.val_fraction == held_out and (cfg.val_names is not None) == ("val_names" in given)


def _metric_best(run: Path, trial_id: str, key: str) -> tuple[int, float]:
    """(step, value) of a trial's lowest validation ``key``, read from its metrics.jsonl."""
    rows = [r for r in read_metrics(run / "trials" / trial_id / "metrics.jsonl") if r["split"] == "val"]
    return min(((int(r["step"]), float(r[key])) for r in rows), key=lambda sv: sv[1])


@pytest.mark.slow
def test_metric_ranks_the_search_ctrl_c_at_the_refit_stops_it_and_resume_runs_only_the_refit(demo_inputs, tmp_path):
    """Commands in one -o, as a user would run them.

    1. A --metric the recipe never logs: the search stops at the first validation with one line naming
       what the trials do report (not Tune's traceback after every trial), and leaves nothing that would
       refuse the corrected command in the same -o (the search, its record).
    2. `--metric val/mel_l1 --mode min` ranks the trials (results.json, best/) by mel L1, not val/loss.
       Ctrl-C (SIGINT from outside) the moment the refit is announced: the trials are over and the
       refit's Ray run is starting. Tune leaves its SIGINT handler installed after a search that was not
       interrupted, so this Ctrl-C used to be swallowed and the whole refit ran (exit 0). Now it stops the
       command as Ctrl-C does anywhere else: exit 130, the refit pending, the winning trial's weights in
       best/trial/.
    3. A `--resume` with another --metric is refused in one line; `--resume` runs only the refit (no trial
       again): the winner's settings on every utterance for its best step, in -o/refit.
    (The default objective, val/quality without --metric: test_a_trial_whose_generation_never_ends_...)"""
    args = _tune(
        tmp_path,
        demo_inputs,
        "--max-steps",
        "4",
        "--val-every",
        "2",
        "--batch-size",
        "4",
        "--num-samples",
        "2",
        "--warmup-choices",
        "0",
        "--scheduler",
        "fifo",
        "--max-concurrent",
        "2",
        "--name",
        "tr",
    )
    out = tmp_path / "run"
    r = subprocess.run(
        args + ["--metric", "val/nope", "--mode", "max"],
        env=_env(tmp_path, demo_inputs["cache"]),
        capture_output=True,
        text=True,
        timeout=600,
    )
    errors = [line for line in r.stderr.splitlines() if line.startswith("gsv-ray: error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stdout[-3000:] + r.stderr[-3000:]  # (and where the log is)
    assert "--metric val/nope: the trials report no such metric" in errors[0] and "val/mel_l1" in errors[0]
    assert "Traceback" not in r.stdout + r.stderr
    assert not (out / "ray" / "tr").exists() and not (out / "search.json").exists()
    assert not [n for n in ("results.json", "best", "trials", "refit") if (out / n).exists()]

    ranked = args + ["--metric", "val/mel_l1", "--mode", "min"]
    p = subprocess.Popen(
        ranked, env=_env(tmp_path, demo_inputs["cache"]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = []
    try:
        for line in p.stdout:
            seen.append(line)
            if line.startswith("refit: "):
                p.send_signal(signal.SIGINT)
                break
        rest, _ = p.communicate(timeout=300)
    finally:
        p.kill()
    text = "".join(seen) + rest
    assert any(s.startswith("refit: ") for s in seen), text[-3000:]
    assert p.returncode == 130, text[-3000:]
    assert "interrupted" in rest and "--resume" in rest, rest[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert (res["metric"], res["mode"], res["refit"]["status"]) == ("val/mel_l1", "min", "pending"), res
    mel = {t["trial_id"]: _metric_best(out, t["trial_id"], "mel_l1") for t in res["trials"]}
    winner = min(mel, key=lambda t: mel[t][1])
    assert res["best_trial_id"] == winner and res["best"]["best_step"] == mel[winner][0]
    assert res["best"]["best_value"] == pytest.approx(mel[winner][1])
    (trial_export,) = (out / "trials" / winner).glob("SoVITS_weights_v2/*.pth")
    (kept,) = (out / "best").rglob("*.pth")  # the winning trial's, in best/trial/ until the refit ends
    assert kept.relative_to(out / "best").parts[0] == "trial" and kept.samefile(trial_export)
    assert not (out / "finished.json").exists() and not (out / "refit" / "finished.json").exists()
    trial_files = {f: f.stat().st_mtime_ns for f in (out / "trials").rglob("*") if f.is_file()}

    other = _in_process(tmp_path, args + ["--resume", "--metric", "val_loss"])
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stdout[-2000:] + other.stderr[-2000:]
    assert "--metric val_loss" in other.stderr and "--metric val/mel_l1 --mode min" in other.stderr

    r = subprocess.run(
        ranked + ["--resume"], env=_env(tmp_path, demo_inputs["cache"]), capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resuming tune run" not in r.stdout  # the search is not restored: only the refit is left
    assert {f: f.stat().st_mtime_ns for f in trial_files} == trial_files
    res = json.loads((out / "results.json").read_text())
    steps = mel[winner][0]
    assert res["refit"]["status"] == "completed" and res["refit"]["steps"] == steps
    cfg = json.loads((out / "refit" / "config.json").read_text())
    assert (cfg["val_fraction"], cfg["val_names"], cfg["max_steps"]) == (0.0, None, steps)
    assert (cfg["lr_scale"], cfg["warmup_steps"]) == (
        pytest.approx(res["best"]["lr_scale"]),
        res["best"]["warmup_steps"],
    )
    rows = read_metrics(out / "refit" / "metrics.jsonl")
    assert [row["step"] for row in rows if row["split"] == "train"] == list(range(1, steps + 1))
    assert not [row for row in rows if row["split"] == "val"]
    words = " ".join(r.stdout.split())
    import re

    log = " ".join((out / "logs" / "gsv-ray.log").read_text().split())  # the refit's lines: in the log
    used = re.search(r"(\d+) train utterances \S+ per epoch, as upstream \(\d+ items\); 0 val of (\d+) usable", log)
    assert used and used.group(1) == used.group(2), log[-3000:]  # every utterance, the held-out ones too
    (refit_export,) = (out / "refit").glob("SoVITS_weights_v2/*.pth")
    best = out / "best" / refit_export.relative_to(out / "refit")
    assert best.samefile(refit_export) and (
        out / "best" / "trial" / trial_export.relative_to(out / "trials" / winner)
    ).samefile(trial_export)
    assert res["best_files"] == {
        "trial": [str(out / "best" / "trial" / trial_export.relative_to(out / "trials" / winner))],
        "refit": [str(best)],
    }
    assert f"best weights (refit): {best}" in words and "winning trial: " in words
    runs = {wr.run_info(recs).job_type: recs for recs in map(wr.read_records, wr.find_run_files(out / "wandb"))}
    assert wr.run_info(runs["refit"]).group == "tr" and wr.run_config(runs["refit"])["val_fraction"] == 0.0
    summary = wr.summary(runs["tune-summary"])
    assert summary["refit/status"] == "completed" and summary["best/refit_files"] == [str(best)]
    assert summary["best/metric"] == "val/mel_l1" and summary["best/trial_id"] == winner
    _listening_table(out, res, runs["tune-summary"], Path(demo_inputs["data"]), tmp_path / "chromium")
    done = _in_process(tmp_path, ranked + ["--resume"])
    assert done.returncode == 0 and "nothing to resume" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]


def _listening_table(out: Path, res: dict, summary_run, data: Path, profile: Path) -> None:
    """-o/listen.html: a row per rendered held-out utterance with its text, its real recording and every
    trial's rendering at the trial's best step (the same samples as -o/trials/<id>/samples/step_<best>/),
    all as files beside the page that a real headless chromium plays; the same table (wandb.Audio
    cells) in the W&B summary run."""
    import functools
    import shutil
    import threading
    from http.server import ThreadingHTTPServer

    from gsv_ray.audio import read_wav_pcm16
    from tests.tune.test_listen import _browser_dom, _QuietHandler, _unplayable

    rendered = {
        t["trial_id"]: sorted((out / "trials" / t["trial_id"] / "samples" / f"step_{t['best_step']:08d}").glob("*.wav"))
        for t in res["trials"]
    }
    names = {p.stem for files in rendered.values() for p in files}
    assert names
    for name in names:  # the real recording (as samples) beside the page, and each trial's rendering
        (folder,) = [d for d in (out / "listen").iterdir() if d.name.startswith(name)]

        def same(a: Path, b: Path) -> bool:  # re-encoded as 16-bit PCM beside the page: within one step
            x, y = read_wav_pcm16(a), read_wav_pcm16(b)
            return x.shape == y.shape and float((x - y).abs().max()) <= 1 / 32768

        assert same(folder / "real.wav", data / "5-wav32k" / f"{name}.wav")
        for tid, files in rendered.items():
            assert same(folder / f"{tid}.wav", next(p for p in files if p.stem == name))
    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(out)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        dom = _browser_dom(
            shutil.which("chromium") or "chromium", f"http://127.0.0.1:{srv.server_address[1]}/listen.html", profile
        )
    finally:
        srv.shutdown()
        srv.server_close()
    assert len([t for t, _ in dom.tags if t == "audio"]) == len(names) * (1 + len(rendered))
    assert _unplayable(dom, out) == {}
    row = next(h for h in wr.history_rows(summary_run) if "tune/listen" in h)
    assert row["tune/listen"]["_type"] == "table-file" and row["tune/listen"]["nrows"] == len(names)


@pytest.mark.slow
def test_a_trial_whose_generation_never_ends_is_ranked_last_by_quality(fixtures_dir, tmp_path):
    """A GPT search where one trial fails the way users hear: its LR (2e-4 x upstream's) is too low to
    learn in 8 steps when to stop, so at every validation it generates past the cap (eos_rate 0, over
    twice the real length) while the other ends. `quality` ranks it last everywhere the search
    reports a ranking: the printed table, results.json, the W&B summary run and best/."""
    from gsv_ray.data.synthetic import make_synthetic_experiment

    data = make_synthetic_experiment(tmp_path / "exp", version="v2", num_utterances=16)
    init = fixtures_dir / "GPT_weights_v2" / "gsvfix-e1.ckpt"
    args = [
        sys.executable,
        "-m",
        "gsv_ray",
        "tune",
        "--init",
        str(init),
        "--data",
        str(data),
        "-o",
        str(tmp_path / "run"),
        "--max-steps",
        "8",
        "--val-every",
        "4",
        "--batch-size",
        "4",
        "--optimizer",
        "adamw",
        "--num-samples",
        "2",
        "--warmup-choices",
        "2",
        "--lr-scale-range",
        "0.0001",
        "2",
        "--search-seed",
        "79",
        "--scheduler",
        "fifo",
        "--max-concurrent",
        "2",
        "--name",
        "endless",
        "--no-refit",
    ]
    r = subprocess.run(args, env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "run"
    res = json.loads((out / "results.json").read_text())
    assert res["metric"] == "val/quality"
    # the seed samples one LR far below the other (Tune's seeded random search; if Ray changes its
    # sampling, pick another --search-seed that gives one lr_scale < 1e-3 and one > 0.4)
    scales = sorted((t["lr_scale"], t["trial_id"]) for t in res["trials"])
    assert scales[0][0] < 1e-3 and scales[1][0] > 0.4, scales
    endless = scales[0][1]
    for t in res["trials"]:  # what a listener would hear, from the trial's own validation rows
        rows = [row for row in read_metrics(out / "trials" / t["trial_id"] / "metrics.jsonl") if row["split"] == "val"]
        assert [row["step"] for row in rows] == [4, 8]
        if t["trial_id"] == endless:
            assert all(row["eos_rate"] == 0.0 and row["len_ratio"] > 2 for row in rows), rows
        else:
            assert rows[0]["eos_rate"] == 1.0, rows
    value = {t["trial_id"]: t["best_value"] for t in res["trials"]}
    assert max(value, key=value.get) == endless and res["best_trial_id"] != endless
    assert value[endless] > min(value.values()) + 1.0, value  # not a near tie: len_error + (1 - eos_rate) apart
    table = [
        line.split()[0 if line.split()[0] != "★" else 1]
        for line in r.stdout.splitlines()
        if "_0000" in line and line.split()[-1] == "completed"
    ]
    assert table[-1] == endless and len(table) == 2, r.stdout[-3000:]  # the printed table: best first, it last

    runs = {wr.run_info(recs).job_type: recs for recs in map(wr.read_records, wr.find_run_files(out / "wandb"))}
    summary = wr.summary(runs["tune-summary"])
    assert summary["best/trial_id"] == res["best_trial_id"] != endless, summary
    (table_file,) = (out / "wandb").glob("offline-run-*/files/media/table/tune/results_*.table.json")
    w = json.loads(table_file.read_text())
    col = w["columns"].index("best_value")
    assert {row[0]: row[col] for row in w["data"]} == pytest.approx(value)
    (best,) = (out / "best").rglob("*.ckpt")
    assert best.samefile(next((out / "trials" / res["best_trial_id"]).glob("GPT_weights_v2/*.ckpt")))
