"""The driver -> worker contract (issue #27 item 2): one frozen, documented ``WorkerJob``; that it
crosses Ray (``with_parameters``, ``TorchTrainer``'s ``train_loop_config``) is what the real-Ray tests
in this folder run. Here: what holds without Ray."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import pickle
from pathlib import Path

import pytest

from gsv_ray.distributed.job import WorkerJob
from gsv_ray.train.config import TrainConfig


def test_worker_job_is_frozen_documented_and_pickles(tmp_path):
    job = WorkerJob(
        train=TrainConfig(init="old.pth", data=str(tmp_path), output_dir=str(tmp_path / "out")),
        rebuild=None,
        run_name="gsv-x",
        run_uri=str(tmp_path / "ray" / "gsv-x"),
        storage_fs=None,
        output_dir_shown=str(tmp_path / "out"),
        forbidden_paths=("old.pth",),
        wandb_run_id="abc",
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.run_name = "other"  # type: ignore[misc]
    back = pickle.loads(pickle.dumps(job))
    assert back == job and isinstance(back.train, TrainConfig)
    body = next(
        n
        for n in ast.parse(Path(inspect.getsourcefile(WorkerJob)).read_text()).body
        if isinstance(n, ast.ClassDef) and n.name == "WorkerJob"
    ).body
    documented = {
        a.target.id
        for a, doc in zip(body, body[1:])
        if isinstance(a, ast.AnnAssign) and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
    }
    assert documented == {f.name for f in dataclasses.fields(WorkerJob)}  # a short docstring per field
