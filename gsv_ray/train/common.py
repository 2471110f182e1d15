"""Small pieces both stage recipes share."""

from __future__ import annotations

import contextlib
import hashlib

import torch


def keyed_generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded from ``parts`` (e.g. seed, step, utterance name): draws that depend on
    what they are for, not on which process or batch makes them."""
    key = int.from_bytes(hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest(), "little")
    return torch.Generator().manual_seed(key)


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


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """Parameters of ``module`` take no gradient inside the block (inputs still do): the generator's
    adversarial loss reaches G through D without leaving gradients in D."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p in params:
            p.requires_grad_(True)


def rng_state(device: torch.device) -> tuple:
    """The global RNG state(s) a forward pass draws from (CPU, and the CUDA device's)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def set_rng_state(state: tuple, device: torch.device) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def sync_context(accelerator, model, last: bool):
    """DDP gradient sync only on the last micro-batch of a step (``no_sync`` before it)."""
    return contextlib.nullcontext() if last else accelerator.no_sync(model)
