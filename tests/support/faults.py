"""Fault injection for the Ray tests, kept out of the package.

Ray runs :func:`install` in every worker process it starts (``runtime_env``'s documented
``worker_process_setup_hook``, set by the ``ray_local`` fixture). It wraps ``RayCheckpoints.save``
so that a worker fails once, right after the checkpoint of a given step, when the test has asked for
it: :func:`inject` writes ``{output_dir: {kind, step, rank}}`` (the run is recognised by its
checkpoint storage, under ``-o``) into the file named by ``GSV_TEST_FAULTS``. ``kind`` "raise"
raises (a Python exception in the worker); "exit" ends the process at once (``os._exit``). A marker
file makes the failure happen once: the restarted worker goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

ENV = "GSV_TEST_FAULTS"


def _marker(faults_file: str | os.PathLike[str], out: str, step: int, rank: int) -> Path:
    return Path(f"{faults_file}.{hashlib.sha256(out.encode()).hexdigest()[:12]}.{step}.{rank}.done")


def inject(
    faults_file: str | os.PathLike[str], output_dir: str | os.PathLike[str], *, kind: str, step: int, rank: int = 0
) -> Path:
    """Make the run writing to ``output_dir`` fail once after its step-``step`` checkpoint on ``rank``.
    Returns the file that exists once the failure has happened."""
    p = Path(faults_file)
    out = str(Path(output_dir).resolve())
    faults = json.loads(p.read_text()) if p.exists() else {}
    faults[out] = {"kind": kind, "step": int(step), "rank": int(rank)}
    p.write_text(json.dumps(faults))
    return _marker(faults_file, out, step, rank)


def install() -> None:
    faults_file = os.environ.get(ENV)
    if not faults_file:
        return
    from gsv_ray.distributed import worker

    save = worker.RayCheckpoints.save

    def save_then_fail(self, accelerator, step, **kwargs):
        path = save(self, accelerator, step, **kwargs)
        try:
            faults = json.loads(Path(faults_file).read_text())
        except (OSError, ValueError):
            return path
        # the worker trains in node scratch; its run's checkpoints go to storage under the -o it was given
        # (the default --storage is -o/ray)
        out = next((o for o in faults if f"{o}/" in self.run_uri), None)
        fault = faults[out] if out else None
        if fault and fault["step"] == step and fault["rank"] == self.rank:
            marker = _marker(faults_file, out, step, self.rank)
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return path  # failed once already: the restarted worker goes on
            if fault["kind"] == "exit":
                os._exit(1)
            raise RuntimeError(f"injected failure at step {step}")
        return path

    worker.RayCheckpoints.save = save_then_fail
