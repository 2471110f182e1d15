"""Small pieces both stage recipes share."""

from __future__ import annotations

import contextlib
import hashlib

import torch


def keyed_seed(*parts: object) -> int:
    """A 64-bit seed from ``parts`` (e.g. seed, step, utterance key)."""
    return int.from_bytes(hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


def keyed_generator(*parts: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator (on ``device``) seeded from ``parts`` (e.g. seed, step, utterance key): draws that
    depend on what they are for, not on which process or batch makes them."""
    return torch.Generator(device=device).manual_seed(keyed_seed(*parts))


def item_keys(batch) -> list[str]:
    """What keys a batch item's random draws (noise, windows, dropout masks): its draw key, the
    utterance's name, or ``name#k`` for copy k of a repeated set (copies draw apart)."""
    return list(batch.keys)


def dropout_generators(batch, *, seed: int, step: int | str, device: torch.device) -> list[torch.Generator]:
    """One fresh generator per item for one forward pass's dropout masks (``utterance_dropout``), on
    the model's device, keyed by (seed, step, item key): a recomputed pass given fresh ones draws
    the same masks, and an item gets them whichever process or micro-batch it lands in."""
    return [keyed_generator(seed, step, key, "dropout", device=device) for key in item_keys(batch)]


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
    return list(prepared[: len(models)]), list(prepared[len(models) :])


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


def sync_context(accelerator, model, last: bool):
    """DDP gradient sync only on the last micro-batch of a step (``no_sync`` before it)."""
    return contextlib.nullcontext() if last else accelerator.no_sync(model)
