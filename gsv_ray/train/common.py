"""Small pieces both stage recipes share."""

from __future__ import annotations

import torch


def read_metrics(named: dict[str, torch.Tensor]) -> dict[str, float]:
    """All step metrics with a single device sync (one ``tolist`` instead of a ``float`` each)."""
    values = torch.stack([torch.as_tensor(v).detach().float().reshape(()) for v in named.values()]).tolist()
    return dict(zip(named, values))


def prepare(accelerator, models: list, optimizers: list) -> tuple[list, list]:
    """``accelerator.prepare`` for models and optimizers, minus a useless wrapper: under Ray Train a
    single worker still has a process group, and Accelerate would wrap the model in DDP (an
    all-reduce per step for nothing). With one process the models get device placement and mixed
    precision only (Accelerate's ``evaluation_mode`` path, which leaves gradients alone)."""
    if accelerator.num_processes == 1:
        models = [accelerator.prepare_model(m, evaluation_mode=True) for m in models]
        optimizers = [accelerator.prepare_optimizer(o) for o in optimizers]
        return models, optimizers
    prepared = accelerator.prepare(*models, *optimizers)
    return list(prepared[:len(models)]), list(prepared[len(models):])
