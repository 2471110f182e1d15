"""What each Ray Train worker runs: the local training loop, unchanged, fed the shared rebuild.

Per worker: refuse (audit hook) any attempt to open the job's input weight files — the rebuild is
shared, so a worker opening ``old.pth`` would be a bug that costs memory and time on every worker;
materialise the shared weights; restore from ``ray.train.get_checkpoint()`` when Ray restarted us;
train; report at every checkpoint (all ranks, same steps; rank 0 attaches the checkpoint); finally
report the run's outputs (exports, metrics.jsonl, W&B files) so the driver can place them in -o.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any


def forbid_opening(paths: list[str]) -> None:
    """Install an audit hook that raises when this process opens any of ``paths``."""
    forbidden = {os.path.realpath(p) for p in paths if p}
    if not forbidden:
        return

    def hook(event: str, args: tuple) -> None:
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            target = os.fsdecode(args[0])
            if os.path.realpath(target) in forbidden:
                raise PermissionError(f"gsv-ray worker must not open input weights {target}: the rebuild is shared")

    sys.addaudithook(hook)


def _scratch(run_name: str) -> Path:
    """A node-local run directory, the same path for every worker of this run on this node: all
    ranks then save their Accelerate state (incl. their RNG states) into one checkpoint folder."""
    root = Path(os.environ.get("GSV_RAY_SCRATCH", Path(tempfile.gettempdir()) / "gsv-ray-scratch"))
    return root / run_name


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    from ray.train import Checkpoint

    from gsv_ray.distributed.shared import materialise
    from gsv_ray.train.config import TrainConfig
    from gsv_ray.train.loop import train
    from gsv_ray.train.tracking import Tracking

    import logging

    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file is noise here
    forbid_opening(config["forbidden_paths"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    rebuilt = materialise(config["rebuild"])
    run_dir = _scratch(config["run_name"])
    fault = config.get("fault") or {}

    cfg = TrainConfig(**{**config["train"], "output_dir": str(run_dir / "run"), "resume": None})
    from gsv_ray.cache import default_cache_root

    cfg = cfg.localised(default_cache_root())  # a data URI: fetched once per node (a lock serialises workers)
    if cfg.num_workers is None:  # loader workers from the CPUs Ray gave this worker
        from gsv_ray.data.loader import default_loader_workers

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        cfg = dataclasses.replace(cfg, num_workers=default_loader_workers(cpus))
    restored = ray.train.get_checkpoint()
    if restored is not None:
        local = run_dir / f"restore-{rank}"
        shutil.rmtree(local, ignore_errors=True)
        restored.to_directory(str(local))
        state = local / "state" if (local / "state").is_dir() else local
        cfg.resume = str(state)

    def on_checkpoint(step: int, path: Path, metrics: dict[str, float]) -> None:
        report = {"step": step, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
        if rank == 0:  # the run's outputs so far travel with the checkpoint: a trial stopped early keeps them
            _snapshot_outputs(Path(cfg.output_dir), path / "outputs")
        ray.train.report(report, checkpoint=Checkpoint.from_directory(str(path)) if rank == 0 else None,
                         checkpoint_dir_name=f"step_{step:08d}")
        if fault.get("step") == step and fault.get("rank", 0) == rank and not _already_failed(run_dir, fault):
            _mark_failed(run_dir, fault)
            if fault["kind"] == "exit":
                os._exit(1)
            raise RuntimeError(f"injected failure at step {step}")

    tracking = None
    if rank == 0:
        tracking = Tracking(cfg.output_dir, project=cfg.wandb_project, mode=cfg.wandb_mode,
                            name=config.get("wandb_name") or cfg.run_name,
                            group=config.get("group"), job_type=config.get("job_type"),
                            run_id=config.get("wandb_run_id"))
    try:
        result = train(cfg, rebuilt=rebuilt, tracking=tracking, on_checkpoint=on_checkpoint, progress=False,
                       experiment=config.get("experiment"),  # scanned once on the driver (None: data is a URI)
                       say=(lambda s: print(f"[rank 0/{world}] {s}", flush=True)) if rank == 0 else (lambda s: None))
    finally:
        if tracking is not None:
            tracking.finish()
    last_val = {f"val/{k}": v for k, v in (result.val_history[-1] if result.val_history else {}).items() if k != "step"}
    final = {"step": result.steps, "epochs": result.epochs, "done": 1, **last_val}  # a Tune search requires its metric in every report
    if rank == 0:  # the run's outputs, next to the last state, so the driver can place them in -o
        out = run_dir / "final"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        shutil.copytree(cfg.output_dir, out / "run", ignore=shutil.ignore_patterns("checkpoints", "latest-run"), symlinks=True)
        if result.last_checkpoint is not None and result.last_checkpoint.is_dir():
            shutil.copytree(result.last_checkpoint, out / "state")
        ray.train.report(final, checkpoint=Checkpoint.from_directory(str(out)), checkpoint_dir_name="final")
    else:
        ray.train.report(final)


def _snapshot_outputs(run_dir: Path, dest: Path) -> None:
    """metrics.jsonl and the W&B files written so far (small), next to a checkpoint's state."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    if (run_dir / "metrics.jsonl").is_file():
        shutil.copy2(run_dir / "metrics.jsonl", dest / "metrics.jsonl")
    if (run_dir / "wandb").is_dir():
        shutil.copytree(run_dir / "wandb", dest / "wandb", ignore=shutil.ignore_patterns("latest-run"), symlinks=True)


def _marker(run_dir: Path, fault: dict) -> Path:
    return run_dir / f".fault-{fault['kind']}-{fault['step']}-{fault.get('rank', 0)}"


def _already_failed(run_dir: Path, fault: dict) -> bool:
    return _marker(run_dir, fault).exists()


def _mark_failed(run_dir: Path, fault: dict) -> None:
    _marker(run_dir, fault).parent.mkdir(parents=True, exist_ok=True)
    _marker(run_dir, fault).touch()
