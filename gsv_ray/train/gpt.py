"""GPT (stage 1): teacher-forced cross-entropy of the text-to-semantic decoder.

The loss is upstream's (cross-entropy summed over every target position, top-3 accuracy with EOS
ignored). The optimizer is AdamW, not upstream's ScaledAdam: ScaledAdam scales each update by the
parameter's RMS, which is tuned for training from scratch at lr 0.01; for continuing from trained
weights at a reduced LR, plain AdamW (betas 0.9/0.95, as upstream's ScaledAdam) behaves predictably,
is what Accelerate/FSDP and every tool downstream understand, and keeps the LR schedule meaningful.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from gsv_ray.data.experiment import Experiment
from gsv_ray.data.gpt import GPTBucketSampler, GPTDataset, collate_gpt
from gsv_ray.io.writers import write_gpt_export
from gsv_ray.models.gpt import to_upstream_keys
from gsv_ray.rebuild import Rebuilt, build_models
from gsv_ray.train.common import prepare, read_metrics
from gsv_ray.train.config import TrainConfig


def export_dir_name(version: str) -> str:
    """``GPT_weights`` for v1, ``GPT_weights_<ver>`` otherwise (upstream's folders)."""
    return "GPT_weights" if version == "v1" else f"GPT_weights_{version}"


class GPTRecipe:
    stage = "gpt"

    def __init__(self, rebuilt: Rebuilt, cfg: TrainConfig, accelerator: Accelerator, experiment: Experiment):
        self.cfg, self.accelerator, self.version = cfg, accelerator, rebuilt.version
        self.s1: dict[str, Any] = rebuilt.config["s1"]
        model = build_models(rebuilt.config, dropout=cfg.dropout)["gpt"]
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

    def dataset(self, names: list[str]) -> GPTDataset:
        return GPTDataset(self.experiment, names)

    def sampler(self, ds: GPTDataset, *, shuffle: bool, seed: int) -> GPTBucketSampler:
        return GPTBucketSampler(ds.durations, self.cfg.batch_size, num_replicas=self.accelerator.num_processes,
                                rank=self.accelerator.process_index, shuffle=shuffle, seed=seed)

    collate = staticmethod(collate_gpt)

    def train_collate(self, items: list) -> Any:
        """Under DDP, pad to the global batch's longest phones/semantic (one max all-reduce): the
        summed loss then equals one process training the whole global batch."""
        if self.accelerator.num_processes == 1:
            return collate_gpt(items)
        longest = torch.tensor([max(len(it.phoneme_ids) for it in items), max(len(it.semantic_ids) for it in items)],
                               device=self.accelerator.device)
        torch.distributed.all_reduce(longest, op=torch.distributed.ReduceOp.MAX)
        return collate_gpt(items, pad_to=(int(longest[0]), int(longest[1])))

    def train_step(self, batch, step: int = 0) -> dict[str, float]:
        self.model.train()
        out = self.model(*batch.model_inputs())
        self.opt.zero_grad(set_to_none=True)
        # upstream's loss is a sum over the batch; DDP averages gradients over processes, so scale
        # by their number: the update then equals one process training the whole global batch
        self.accelerator.backward(out.loss * self.accelerator.num_processes)
        grad = (self.accelerator.clip_grad_norm_(self.model.parameters(), float("inf"))
                if self.accelerator.sync_gradients else None)
        self.opt.step()
        named = {"loss": out.loss, "top3_acc": out.acc}
        if grad is not None:
            named["grad_norm"] = grad
        metrics = read_metrics(named)
        metrics["loss_per_token"] = metrics["loss"] / out.targets.numel()
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
