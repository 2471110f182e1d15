"""The command line a person meets: no abbreviation traps, help for every option with its default,
search defaults that fit any --max-steps and stay at or below upstream's LR, a summary at the end of a
run, and no traceback when the reader of our output goes away."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gsv_ray.cli import build_parser
from tests.conftest import run_cli


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_abbreviations_are_not_options(fixtures_dir):
    """`--lr 1e-5` used to be taken as `--lr-scale 1e-5` (a peak LR of 1e-9, silently)."""
    r = run_cli("train", "--init", str(fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt"), "--lr", "1e-5", in_process=True)
    assert r.returncode == 2 and "unrecognized arguments: --lr 1e-5" in r.stderr
    for name, sub in _subparsers(build_parser()).items():
        assert sub.allow_abbrev is False, name


def test_every_option_has_help_and_every_command_a_description():
    for name, sub in _subparsers(build_parser()).items():
        assert sub.description, f"{name} --help has no description"
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings[0]} has no help"
    tune = " ".join(run_cli("tune", "--help", in_process=True).stdout.split())
    assert "(default 8)" in tune and "default 0.02 1" in tune and "of --max-steps" in tune


def test_search_defaults_fit_short_runs_and_stay_at_or_below_upstream_lr():
    from gsv_ray.tune.search import TuneOptions

    opts = TuneOptions()
    assert opts.warmups(4) == [0] and opts.warmups(400) == [0, 20, 80]
    opts.validate(4)  # `tune --max-steps 4` used to fail on the 0/50/200 default
    with pytest.raises(Exception, match="shorter than --max-steps"):
        TuneOptions(warmup_choices=[0, 10]).validate(4)  # an explicit list that does not fit still fails
    assert opts.lr_scale_range[1] <= 1.0


def test_demo_searches_at_or_below_upstream_lr(tmp_path):
    from gsv_ray.demo import DemoOptions, demo_config

    _, opts = demo_config(DemoOptions(dir=str(tmp_path)))
    assert opts.lr_scale_range[1] <= 1.0


@pytest.mark.slow
def test_no_traceback_when_the_reader_goes_away(fixtures_dir, tmp_path):
    """`gsv-ray rebuild --json | head -1`: the pipe closes early; no BrokenPipeError traceback."""
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gsv_ray",
            "rebuild",
            str(fixtures_dir / "SoVITS_weights_v2/gsvfix_e1_s2.pth"),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**__import__("os").environ, "GSV_RAY_CACHE": str(tmp_path / "cache")},
    )
    p.stdout.readline()
    p.stdout.close()  # what `head -1` does
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.slow
def test_train_ends_with_a_summary(fixtures_dir, tmp_path):
    """With a long -o (a 60-character path and more): prose wrapped at 80 columns, every path and
    the ``wandb sync`` command whole on one line, and that command runs as printed."""
    import shlex

    from gsv_ray.data.synthetic import make_synthetic_experiment

    data = make_synthetic_experiment(tmp_path / "exp", version="v2", num_utterances=8)
    run = tmp_path / "a long output folder, with spaces" / "run"
    assert len(str(run)) >= 60
    r = run_cli(
        "train",
        "--init",
        str(fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt"),
        "--data",
        str(data),
        "-o",
        str(run),
        "--max-steps",
        "4",
        "--val-every",
        "2",
        "--val-fraction",
        "0.25",  # a best val loss
        "--wandb-mode",
        "offline",
        env={"GSV_RAY_CACHE": str(tmp_path / "cache"), "WANDB_API_KEY": ""},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    text = r.stdout.strip()
    (sync,) = [line.strip() for line in text.splitlines() if "wandb sync" in line]
    assert sync.startswith("wandb sync "), text  # the command on a line of its own (too long to follow its prose)
    prose = [line for line in text.splitlines() if line.strip() != sync and str(run) not in line]
    assert prose and all(len(line) <= 80 for line in prose), prose  # wrapped for people
    flat = " ".join(text.split())  # wrapped lines joined back
    done = flat.index("done: 4 steps")
    assert "at the end, best" in flat[done:]
    assert flat.index(f"exported: {run}") > done
    (offline,) = (run / "wandb").glob("offline-run-*")
    assert shlex.split(sync) == ["wandb", "sync", str(offline)]  # copied into a shell, it names the run
    exe = Path(sys.executable).parent / "wandb"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    dry = subprocess.run(
        f"{shlex.quote(str(exe))} {sync.removeprefix('wandb ')} --dry-run",
        shell=True,
        env={**env, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dry.returncode == 0, dry.stdout + dry.stderr


def test_exit_status_says_who_fixes_it_and_debug_shows_the_traceback(tmp_path):
    """Bad input and options exit 2 with one line; ``--debug`` adds the full traceback before it."""
    missing = tmp_path / "nope.pth"
    plain = run_cli("inspect", str(missing), in_process=True)
    assert plain.returncode == 2 and plain.stderr.count("\n") == 1 and str(missing) in plain.stderr
    debug = run_cli("--debug", "inspect", str(missing), in_process=True)
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip()
    bad = run_cli(
        "train",
        "--init",
        str(missing),
        "--data",
        str(tmp_path),
        "-o",
        str(tmp_path / "o"),
        "--max-steps",
        "2",
        "--lr-scale",
        "-1",
        in_process=True,
    )
    assert bad.returncode == 2 and "--lr-scale must be > 0" in bad.stderr and bad.stderr.count("\n") == 1


def test_resume_means_one_thing(tmp_path):
    """``--resume`` continues a run from its newest checkpoint; with --workers it takes no folder (it
    used to accept one and silently ignore it)."""
    r = run_cli(
        "train",
        "--init",
        str(tmp_path / "x.pth"),
        "--data",
        str(tmp_path),
        "-o",
        str(tmp_path / "o"),
        "--max-steps",
        "2",
        "--workers",
        "2",
        "--resume",
        str(tmp_path / "elsewhere"),
        in_process=True,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "takes no folder" in r.stderr, r.stderr


def test_rebuild_task_choices_are_the_library_tasks():
    from gsv_ray.cli import REBUILD_TASKS
    from gsv_ray.rebuild import TASKS

    assert tuple(REBUILD_TASKS) == tuple(TASKS)
