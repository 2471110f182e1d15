"""GPT (stage 1): teacher-forced cross-entropy of the text-to-semantic decoder.

The loss is upstream's (cross-entropy summed over every target position, top-3 accuracy with EOS
ignored). The optimizer is AdamW, not upstream's ScaledAdam: ScaledAdam scales each update by the
parameter's RMS, which is tuned for training from scratch at lr 0.01; for continuing from trained
weights at a reduced LR, plain AdamW (betas 0.9/0.95, as upstream's ScaledAdam) behaves predictably,
is what Accelerate/FSDP and every tool downstream understand, and keeps the LR schedule meaningful.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator

from gsv_ray.data.experiment import Experiment
from gsv_ray.data.gpt import GPTBucketSampler, GPTDataset, collate_gpt
from gsv_ray.data.loader import MicroBatch, StepPlan
from gsv_ray.io.writers import write_gpt_export
from gsv_ray.models.gpt import to_upstream_keys
from gsv_ray.rebuild import Rebuilt, build_models
from gsv_ray.train.common import prepare, read_metrics, sync_context
from gsv_ray.train.config import TrainConfig
from gsv_ray.train.precision import Precision


def export_dir_name(version: str) -> str:
    """``GPT_weights`` for v1, ``GPT_weights_<ver>`` otherwise (upstream's folders)."""
    return "GPT_weights" if version == "v1" else f"GPT_weights_{version}"


def gpt_micro_batch(items: list, mb: MicroBatch):
    """A loader item: upstream's collate, padded to the step's global lengths."""
    return collate_gpt(items, pad_to=mb.context)


class GPTRecipe:
    stage = "gpt"

    def __init__(self, rebuilt: Rebuilt, cfg: TrainConfig, accelerator: Accelerator, experiment: Experiment,
                 precision: Precision):
        self.cfg, self.accelerator, self.version, self.precision = cfg, accelerator, rebuilt.version, precision
        assert rebuilt.resolved.gpt is not None, "a GPT rebuild"
        self.s1 = rebuilt.resolved.gpt.s1  # embedded in the exports as upstream wrote it
        model = build_models(rebuilt.resolved, dropout=cfg.dropout)["gpt"]
        model.load_state_dict(rebuilt.gpt, strict=True)
        peak = cfg.peak_lr("gpt")
        opt = torch.optim.AdamW([{"params": list(model.parameters()), "lr": peak, "name": "gpt"}], lr=peak,
                                betas=(0.9, 0.95), eps=1e-8)
        (self.model,), (self.opt,) = prepare(accelerator, [model], [opt])
        self.experiment = experiment

    @property
    def models(self) -> tuple[torch.nn.Module, ...]:
        return (self.model,)

    @property
    def optimizers(self) -> tuple[torch.optim.Optimizer, ...]:
        return (self.opt,)

    def dataset(self, names: list[str], *, min_items: int | None = None) -> GPTDataset:
        """``min_items``: repeat a smaller set as upstream (the training set; see :class:`GPTDataset`)."""
        return GPTDataset(self.experiment, names, min_items=min_items)

    def plan(self, ds: GPTDataset, *, seed: int) -> StepPlan:
        """Global batches of ``batch_size x processes x grad_accum``; every micro-batch of a step is
        padded to its global batch's longest phones/semantic (known from the metadata, no all-reduce):
        upstream's summed loss counts padded targets, so this makes the step's loss exactly that of
        one process training the whole global batch."""
        acc, n = self.accelerator, self.cfg.grad_accum
        sampler = GPTBucketSampler(ds.durations, self.cfg.batch_size * acc.num_processes * n, shuffle=True, seed=seed)
        phones = [len(u.phone_ids) for u in ds.utterances]
        semantic = [len(u.semantic_ids or ()) for u in ds.utterances]
        return StepPlan(sampler, world=acc.num_processes, rank=acc.process_index, accum=n,
                        context=lambda idx: (max(phones[i] for i in idx), max(semantic[i] for i in idx)))

    collate = staticmethod(collate_gpt)
    make_batch = staticmethod(gpt_micro_batch)

    def train_step(self, batches: list, step: int = 0) -> dict[str, float]:
        """Upstream's loss is a sum over the batch: the micro-batches' sums add up to the global
        batch's, and DDP's gradient mean is undone by scaling with the process count."""
        acc, prec, world, n = self.accelerator, self.precision, self.accelerator.num_processes, len(batches)
        self.model.train()
        loss = acc3 = 0.0
        targets = 0
        for i, (batch, mb) in enumerate(batches):
            with sync_context(acc, self.model, i == n - 1):
                with prec.autocast():
                    out = self.model(*batch.model_inputs())
                prec.backward(out.loss * world)
            loss = loss + out.loss.detach().float()
            acc3 = acc3 + out.acc.detach().float() * (world * mb.share)
            targets += out.targets.numel()
        grad = prec.step(self.opt, self.model.parameters())
        prec.update()
        metrics = read_metrics({"loss": loss, "top3_acc": acc3, "grad_norm": grad})
        metrics["loss_per_token"] = metrics["loss"] / targets
        return metrics

    @torch.no_grad()
    def evaluate(self, batches: list, seed: int) -> dict[str, float]:
        model = self.accelerator.unwrap_model(self.model).eval()
        return gpt_eval_losses(model, batches)

    def audio_samples(self, items: list, seed: int) -> list:
        return []  # the GPT makes tokens, not audio

    def export(self, out_dir: Path, *, name: str, epoch: int, step: int, protect=()) -> Path:
        model = self.accelerator.unwrap_model(self.model)
        path = Path(out_dir) / export_dir_name(self.version) / f"{name}-e{epoch}.ckpt"
        return write_gpt_export(path, to_upstream_keys(model.state_dict()), config=self.s1, info=f"GPT-e{epoch}",
                                overwrite=True, protect=protect)


def gpt_eval_losses(model, batches) -> dict[str, float]:
    """Cross-entropy per target token (upstream's summed loss / positions) and top-3 accuracy."""
    ce = acc = 0.0
    tokens = 0
    for b in batches:
        out = model(*b.model_inputs())
        ce += float(out.loss)
        tokens += int(out.targets.numel())
        acc += float(out.acc)
    return {"loss": ce / max(1, tokens), "top3_acc": acc / max(1, len(batches))}
