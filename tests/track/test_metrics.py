"""The local metrics.jsonl: parses, ascending steps, survives a kill mid-run."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gsv_ray.track import MetricsWriter, read_metrics, series

REPO = Path(__file__).resolve().parents[2]


def test_lines_parse_and_steps_ascend(tmp_path):
    with MetricsWriter(tmp_path) as m:
        for step in range(5):
            m.log(step, {"loss": torch.tensor(1.0 / (step + 1)), "lr": np.float64(1e-4), "grad_norm": 2.0})
            if step % 2 == 0:
                m.log(step, {"loss": 0.5}, split="val")
    path = tmp_path / "metrics.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 8
    rows = [json.loads(x) for x in lines]
    assert all(set(r) >= {"step", "split", "time"} for r in rows)
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps)
    assert [r["split"] for r in rows[:3]] == ["train", "val", "train"]
    assert all(isinstance(r["loss"], float) for r in rows) and rows[0]["lr"] == 1e-4
    assert list(rows[0])[:2] == ["step", "split"] and list(rows[0])[-1] == "time"
    assert read_metrics(path, split="val") == [r for r in rows if r["split"] == "val"]
    assert series(tmp_path, "loss") == [(s, pytest.approx(1.0 / (s + 1), rel=1e-6)) for s in range(5)]


def test_reserved_names_and_nan(tmp_path):
    m = MetricsWriter(tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match="reserved"):
        m.log(0, {"time": 1.0})
    m.log(1, {"loss": float("nan"), "x": float("inf")})
    m.close()
    (r,) = read_metrics(tmp_path / "m.jsonl")
    assert math.isnan(r["loss"]) and r["x"] == math.inf


def test_reopen_appends_and_drop_after(tmp_path):
    with MetricsWriter(tmp_path) as m:
        for s in range(10):
            m.log(s, {"loss": float(s)})
    with MetricsWriter(tmp_path) as m:  # plain reopen appends
        m.log(10, {"loss": 10.0})
    assert [r["step"] for r in read_metrics(tmp_path)] == list(range(11))
    with MetricsWriter(tmp_path, drop_after=6) as m:  # resumed from the step-6 checkpoint
        m.log(7, {"loss": 7.5})
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(8)) and rows[-1]["loss"] == 7.5


CHILD = r"""
import sys
from gsv_ray.track import MetricsWriter
m = MetricsWriter(sys.argv[1])
step = 0
while True:
    m.log(step, {"loss": 1.0 / (step + 1), "pad_" + "x" * 50: float(step)})
    step += 1
    if step == 50:
        print("ready", flush=True)
"""


def test_killed_writer_leaves_only_complete_lines(tmp_path):
    p = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(0.2)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        p.stdout.close()
    path = tmp_path / "metrics.jsonl"
    rows = read_metrics(path)
    assert len(rows) >= 50
    assert [r["step"] for r in rows] == list(range(len(rows)))
    raw = path.read_bytes()
    assert raw.endswith(b"\n")  # killed between two os.write calls: each line is one write


def test_torn_last_line_is_skipped_then_cut(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(path) as m:
        m.log(0, {"loss": 1.0})
        m.log(1, {"loss": 0.5})
    with open(path, "ab") as f:  # what a crash inside a write would leave
        f.write(b'{"step": 2, "split": "train", "lo')
    assert [r["step"] for r in read_metrics(path)] == [0, 1]
    with MetricsWriter(path) as m:  # reopening cuts the torn tail before appending
        m.log(2, {"loss": 0.25})
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2]
    assert all(json.loads(x) for x in path.read_text().splitlines())


def test_malformed_middle_line_raises(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "split": "train", "time": 1}\nnot json\n{"step": 1, "split": "train", "time": 2}\n')
    with pytest.raises(ValueError, match=":2: not a JSON line"):
        read_metrics(path)
