"""How a run owns its ``-o`` and how a stopped run goes on (issue 24, items 2, 3, 4 and 11), as a user
meets it: the real CLI (a subprocess where a process holds -o, is killed or interrupted, or runs Ray;
in-process where its output and exit status are the point), real files, signals sent from outside by PID."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gsv_ray.track import read_metrics
from tests.support.cli import run_cli_in_process


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(GSV_RAY_CACHE=str(tmp_path / "cache"), WANDB_API_KEY="", **extra)
    return env


def _run(args, tmp_path, timeout=300, in_process=True, **env):
    if in_process:
        return run_cli_in_process(*args, env=_env(tmp_path, **env), replace_env=True)
    return subprocess.run(
        [sys.executable, "-m", "gsv_ray", *args],
        capture_output=True,
        text=True,
        env=_env(tmp_path, **env),
        timeout=timeout,
    )


def _start(args, tmp_path):
    return subprocess.Popen(
        [sys.executable, "-m", "gsv_ray", *args],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(cond, what: str, timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _train_steps(run: Path) -> list[int]:
    p = run / "metrics.jsonl"
    return [r["step"] for r in read_metrics(p) if r["split"] == "train"] if p.is_file() else []


def _one_error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gsv-ray: error:"), r.stderr
    return lines[0]


def _gpt(gpt_init, synth_v2, run, *extra):
    return [
        "train",
        "--init",
        gpt_init,
        "--data",
        str(synth_v2),
        "-o",
        str(run),
        "--val-every",
        "1000",
        "--wandb-mode",
        "disabled",
        *extra,
    ]


# -- item 2: one run per -o -------------------------------------------------------------------------


@pytest.mark.slow
def test_second_run_on_a_busy_output_is_refused_naming_the_holder(gpt_init, synth_v2, tmp_path):
    run = tmp_path / "run"
    args = _gpt(gpt_init, synth_v2, run, "--max-steps", "40", "--save-every", "5", "--warmup-steps", "0")
    first = _start(args, tmp_path)
    try:
        _wait_for(lambda: len(_train_steps(run)) >= 6 or first.poll() is not None, "the first run's steps")
        assert first.poll() is None, "the first run ended before the second started"
        for extra in ([], ["--lr-scale", "0.5", "--resume"]):
            r = _run(args + extra, tmp_path)
            line = _one_error_line(r)
            assert r.returncode == 2 and f"PID {first.pid}" in line and str(run) in line, line
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        first.kill()
    assert _train_steps(run) == list(range(1, 41))  # every step once: the second run wrote nothing
    assert len(list(run.glob("GPT_weights_v2/*.ckpt"))) == 1


@pytest.mark.slow
def test_tune_on_an_output_a_run_owns_is_refused(gpt_init, synth_v2, tmp_path):
    run = tmp_path / "run"
    train = _start(
        _gpt(gpt_init, synth_v2, run, "--max-steps", "400", "--save-every", "1000", "--warmup-steps", "0"), tmp_path
    )
    try:
        _wait_for(lambda: len(_train_steps(run)) >= 1 or train.poll() is not None, "the run's first step")
        for extra in ([], ["--resume"]):
            r = _run(
                [
                    "tune",
                    "--init",
                    gpt_init,
                    "--data",
                    str(synth_v2),
                    "-o",
                    str(run),
                    "--max-steps",
                    "4",
                    "--name",
                    "t",
                    *extra,
                ],
                tmp_path,
            )  # refused before any Ray starts: in this process
            line = _one_error_line(r)
            assert r.returncode == 2 and f"PID {train.pid}" in line, line
        assert train.poll() is None
    finally:
        train.kill()
        train.wait()
    assert not (run / "ray").exists() and not (run / "results.json").exists()


@pytest.mark.slow
def test_sigkilled_holder_before_its_first_checkpoint_then_resume_starts_over(gpt_init, synth_v2, tmp_path):
    run = tmp_path / "run"
    args = _gpt(gpt_init, synth_v2, run, "--max-steps", "400", "--save-every", "1000", "--warmup-steps", "0")
    first = _start(args, tmp_path)
    _wait_for(lambda: len(_train_steps(run)) >= 3, "the first run's steps")
    os.kill(first.pid, signal.SIGKILL)  # from outside: the kernel drops its lock
    first.wait()
    assert not list((run / "checkpoints").glob("step_*"))
    short = list(args)
    short[short.index("--max-steps") + 1] = "6"  # same settings, shorter: --max-steps may change on resume
    r = _run(short + ["--resume"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "no checkpoint yet" in " ".join(r.stdout.split()) and "step 0" in r.stdout
    assert _train_steps(run) == [1, 2, 3, 4, 5, 6]  # the lost partial run's rows dropped, not mixed


@pytest.mark.slow
def test_resume_of_a_finished_run_changes_nothing(gpt_init, synth_v2, tmp_path):
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
        "4",
        "--save-every",
        "2",
        "--warmup-steps",
        "0",
        "--val-every",
        "1000",
    ]
    assert _run(args, tmp_path).returncode == 0
    (export,) = run.glob("GPT_weights_v2/*.ckpt")

    def files():  # what the run wrote (its log and the owner's lock file are any command's)
        return {p: p.stat().st_mtime_ns for p in run.rglob("*") if "logs" not in p.parts and p.name != ".gsv-run.lock"}

    before = files()
    wandb_runs = sorted(run.glob("wandb/offline-run-*"))
    r = _run(args + ["--resume"], tmp_path)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "finished at step 4" in text and str(export) in text and "nothing to resume" in text, text
    assert files() == before
    assert sorted(run.glob("wandb/offline-run-*")) == wandb_runs
    # a longer run continues it
    r = _run(args[:8] + ["6"] + args[9:] + ["--resume"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert _train_steps(run) == [1, 2, 3, 4, 5, 6]


# -- item 3: --name and -o stay where they belong --------------------------------------------------


@pytest.mark.parametrize("name", ["../../../x/escaped", "a/b", "..", "a\\b", "bad\x01name", "n" * 300])
def test_name_must_be_a_plain_file_name(name, gpt_init, synth_v2, tmp_path):
    r = _run(_gpt(gpt_init, synth_v2, tmp_path / "o" / "run", "--max-steps", "2", "--name", name), tmp_path)
    line = _one_error_line(r)
    assert r.returncode == 2 and "--name" in line, line
    assert not (tmp_path / "o").exists() and not (tmp_path / "x").exists()


def test_tune_name_must_be_a_plain_file_name(gpt_init, synth_v2, tmp_path):
    r = _run(
        [
            "tune",
            "--init",
            gpt_init,
            "--data",
            str(synth_v2),
            "-o",
            str(tmp_path / "t"),
            "--max-steps",
            "4",
            "--name",
            "../t2",
        ],
        tmp_path,
        in_process=False,
    )
    assert r.returncode == 2 and "--name" in _one_error_line(r)
    assert not (tmp_path / "t").exists() and not (tmp_path / "t2").exists()


def test_filesystem_root_is_no_output():
    # in-process: on a build without the check, the CLI writes a run into / (seen: issue 24)
    from gsv_ray.errors import ConfigError
    from gsv_ray.train.rundir import own_output_dir

    with pytest.raises(ConfigError, match="-o is the filesystem root"):
        own_output_dir("/")
    assert not Path("/.gsv-run.lock").exists()


@pytest.mark.parametrize("where", ["home", "populated"])
def test_output_that_is_no_place_for_a_run_is_refused(where, gpt_init, synth_v2, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".profile").write_text("")
    out = {"home": str(home), "populated": str(tmp_path / "papers")}[where]
    if where == "populated":
        (tmp_path / "papers").mkdir()
        (tmp_path / "papers" / "thesis.tex").write_text("mine")
    before = sorted(p.name for p in Path(out).iterdir())
    r = _run(_gpt(gpt_init, synth_v2, out, "--max-steps", "2"), tmp_path, HOME=str(home))
    line = _one_error_line(r)
    assert r.returncode == 2 and "-o" in line, line
    assert sorted(p.name for p in Path(out).iterdir()) == before  # nothing written there


# -- item 4: a way forward from every stop --------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_before_the_first_checkpoint_names_a_command_that_works(gpt_init, synth_v2, tmp_path):
    run = tmp_path / "run"
    args = _gpt(gpt_init, synth_v2, run, "--max-steps", "20", "--save-every", "1000", "--warmup-steps", "0")
    p = _start(args, tmp_path)
    _wait_for(lambda: len(_train_steps(run)) >= 2 or p.poll() is not None, "steps")
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert not list((run / "checkpoints").glob("step_*"))
    assert "the same command with --resume" in err, err
    r = _run(args + ["--resume"], tmp_path)  # what the message says
    assert r.returncode == 0, r.stderr
    assert _train_steps(run) == list(range(1, 21))


@pytest.mark.slow
def test_divergence_names_a_command_that_does_not_diverge_again(gpt_init, synth_v2, tmp_path):
    run = tmp_path / "run"
    args = _gpt(
        gpt_init,
        synth_v2,
        run,
        "--max-steps",
        "4",
        "--lr-scale",
        "1e30",
        "--warmup-steps",
        "0",
        "--save-every",
        "1000",
        "--val-fraction",
        "0",
    )
    r = _run(args, tmp_path)
    line = _one_error_line(r)
    assert r.returncode == 2 and "diverged" in line
    m = re.search(r"the same command with --lr-scale (\S+) and -o (\S+?)[.;,]? ", line + " ")
    assert m, line
    lr, new_out = m.group(1), m.group(2)
    again = list(args)
    again[again.index("--lr-scale") + 1] = lr
    again[again.index("-o") + 1] = new_out
    r = _run(again, tmp_path)
    assert r.returncode == 0, r.stderr
    assert list(Path(new_out).glob("GPT_weights_v2/*.ckpt"))


@pytest.mark.slow
def test_divergence_on_ray_names_the_real_output(gpt_init, synth_v2, tmp_path):
    """On Ray the loop runs in a worker's scratch copy of -o: the advice still names a new -o beside
    the user's, never the scratch folder."""
    run = tmp_path / "run"
    args = _gpt(
        gpt_init,
        synth_v2,
        run,
        "--max-steps",
        "4",
        "--lr-scale",
        "1e30",
        "--warmup-steps",
        "0",
        "--save-every",
        "1000",
        "--val-fraction",
        "0",
        "--workers",
        "1",
    )
    r = _run(args, tmp_path, RAY_AUTH_MODE="disabled")  # its own local Ray, in this process
    line = r.stderr.strip().splitlines()[-1]  # after the line naming Ray's log
    assert r.returncode == 2 and line.startswith("gsv-ray: error:") and "diverged" in line, r.stderr
    m = re.search(r"the same command with --lr-scale (\S+) and -o (\S+?)[.;,]? ", line + " ")
    assert m, line
    assert Path(m.group(2)) == run.resolve().with_name("run-2"), line


def test_demo_interruption_names_demo(tmp_path):
    from gsv_ray.cli import interrupted_hint

    assert "gsv-ray demo" in interrupted_hint("demo") and "--resume" not in interrupted_hint("demo")
    assert "--resume" in interrupted_hint("train")


# -- item 11: a resume continues the same run, or says why not ------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "option, value, recorded", [("--lr-scale", "0.5", "0.1"), ("--batch-size", "2", "4"), ("--init", None, None)]
)
def test_resume_with_other_trajectory_settings_is_refused(option, value, recorded, gpt_init, synth_v2, tmp_path):
    run = tmp_path / "run"
    args = _gpt(gpt_init, synth_v2, run, "--max-steps", "2", "--save-every", "1", "--warmup-steps", "0")
    assert _run(args, tmp_path).returncode == 0
    if option == "--init":  # another model of the same kind: the file's content differs, not only its path
        import torch

        other = tmp_path / "other-e1.ckpt"
        ck = torch.load(gpt_init, map_location="cpu", weights_only=False)
        first = next(k for k, v in ck["weight"].items() if v.is_floating_point())
        ck["weight"][first] = ck["weight"][first] + 1
        torch.save(ck, other)
        value = str(other)
    again = list(args)
    if option in again:
        again[again.index(option) + 1] = value
    else:
        again += [option, value]
    again[again.index("--max-steps") + 1] = "3"
    r = _run(again + ["--resume"], tmp_path)
    line = _one_error_line(r)
    assert r.returncode == 2 and option in line and "new -o" in line, line
    if recorded:
        assert recorded in line
    assert "size mismatch" not in line
    assert _train_steps(run) == [1, 2]


@pytest.mark.slow
def test_same_init_content_at_another_path_resumes(gpt_init, synth_v2, tmp_path):
    import shutil

    run = tmp_path / "run"
    args = _gpt(gpt_init, synth_v2, run, "--max-steps", "2", "--save-every", "1", "--warmup-steps", "0")
    assert _run(args, tmp_path).returncode == 0
    moved = tmp_path / "moved-e1.ckpt"
    shutil.copyfile(gpt_init, moved)
    again = list(args)
    again[again.index("--init") + 1] = str(moved)
    again[again.index("--max-steps") + 1] = "3"
    r = _run(again + ["--resume"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert _train_steps(run) == [1, 2, 3]


def test_warmup_longer_than_the_run_is_refused(gpt_init, synth_v2, tmp_path):
    r = _run(_gpt(gpt_init, synth_v2, tmp_path / "run", "--max-steps", "3", "--warmup-steps", "50"), tmp_path)
    line = _one_error_line(r)
    assert r.returncode == 2 and "--warmup-steps" in line and "--max-steps" in line
    assert not (tmp_path / "run").exists()


def test_demo_with_two_steps_has_a_valid_search(tmp_path):
    from gsv_ray.demo import DemoOptions, demo_config

    cfg, opts = demo_config(DemoOptions(dir=str(tmp_path), max_steps=2))
    opts.validate(cfg.max_steps)  # raised naming --warmup-choices, a flag demo does not have
    assert all(w < 2 for w in opts.warmups(2))


def test_train_help_says_what_resume_does(tmp_path):
    r = _run(["train", "--help"], tmp_path)
    text = " ".join(r.stdout.split())
    assert "not with --workers" not in text and "latest" in text
