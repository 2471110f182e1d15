"""SoVITS v3/v4: the flow-matching step as upstream's ``s2_train_v3_lora.py`` takes it.

The CFM loss only (no discriminator); AdamW over what trains: the LoRA adapters, ``bridge`` and
``wns1`` (upstream's optimiser also holds ``ref_enc`` and ``linear_mel``, which never get a gradient,
so AdamW never moves them: we freeze them instead, same numbers, no DDP unused-parameter search);
one group, upstream's betas and eps and weight decay 0.01 (torch's default), at upstream's 1e-4 x
``lr_scale`` with our warmup and the exponential decay per epoch. Exports carry upstream's key set.

Random draws: upstream draws the prompt lengths, CFM times, noise and shortcut coin per process per
micro-batch. We draw them, and the dropout masks, per item from generators keyed by (seed, step,
the item's draw key: its utterance name, ``name#k`` for copy k of a repeated set) — and the shortcut
coin per step — so N processes with accumulation compute exactly the loss one process computes on
the whole global batch (and validation uses fixed draws).
"""

from __future__ import annotations

import functools

from pathlib import Path

import torch
from accelerate import Accelerator

from gsv_ray.data.cfm import CFM_BOUNDARIES, CFMDataset, CFMPadding, collate_cfm
from gsv_ray.data.experiment import Experiment, spec_frames
from gsv_ray.data.loader import MicroBatch, StepPlan
from gsv_ray.errors import GsvError
from gsv_ray.data.sovits import SoVITSBucketSampler
from gsv_ray.io.writers import write_sovits_export
from gsv_ray.models.dropout import utterance_dropout
from gsv_ray.models.sovits.cfm import CFMDraws
from gsv_ray.models.sovits.v3 import NEVER_TRAINED, lora_export_state_dict
from gsv_ray.models.sovits.vocoder import V4_VOCODER_RATE, load_v4_vocoder
from gsv_ray.rebuild import Rebuilt, build_models
from gsv_ray.train.common import dropout_generators, item_keys, keyed_generator, prepare, read_metrics, sync_context
from gsv_ray.train.config import TrainConfig
from gsv_ray.train.precision import Precision
from gsv_ray.train.sovits import export_dir_name

#: Upstream's v3/v4 AdamW uses torch's default weight decay.
WEIGHT_DECAY = 0.01


def cfm_micro_batch(items: list, mb: MicroBatch, version: str):
    """A loader item: the micro-batch collated as upstream does, padded like its global batch."""
    return collate_cfm(items, version, pad_to=mb.context)


def batch_draws(batch, *, seed: int, step: int | str, shortcut: bool = True) -> tuple[torch.Tensor, CFMDraws]:
    """``(prompt_u, CFMDraws)`` for a batch, each utterance's drawn from its own keyed generator (the
    same values whichever process or micro-batch it lands in; the padded width is the global
    batch's). ``shortcut=False``: never the shortcut branch (validation: one comparable loss)."""
    b, mel_channels, frames = batch.mel.shape
    prompt_u, t, base = torch.empty(b), torch.empty(b), torch.empty(b, dtype=torch.long)
    x0 = torch.empty(b, mel_channels, frames)
    for i, key in enumerate(item_keys(batch)):  # name, or name#k for copy k of a repeated set: copies draw apart
        gen = keyed_generator(seed, step, key)
        prompt_u[i] = torch.rand(1, generator=gen)
        t[i] = torch.rand(1, generator=gen)
        base[i] = torch.randint(2, 8, (1,), generator=gen)
        x0[i] = torch.randn(mel_channels, frames, generator=gen)
    coin = float(torch.rand(1, generator=keyed_generator(seed, step, "shortcut"))) if shortcut else 1.0  # one per step
    dev = batch.mel.device
    return prompt_u.to(dev), CFMDraws(t=t.to(dev), x0=x0.to(dev), shortcut_u=coin, base=base.to(dev))


def cfm_loss(g, batch, *, seed: int, step: int | str, shortcut: bool = True) -> torch.Tensor:
    """The CFM loss of ``batch`` with its keyed draws (``shortcut=False``: the plain flow-matching loss)."""
    prompt_u, draws = batch_draws(batch, seed=seed, step=step, shortcut=shortcut)
    return g(batch.ssl, batch.spec, batch.mel, batch.spec_lengths, batch.text, batch.text_lengths, batch.mel_lengths,
             prompt_u=prompt_u, draws=draws)


class CFMRecipe:
    stage = "sovits"

    def __init__(self, rebuilt: Rebuilt, cfg: TrainConfig, accelerator: Accelerator, experiment: Experiment,
                 precision: Precision):
        settings = rebuilt.resolved.sovits_v3
        assert settings is not None, "a v3/v4 rebuild for training"
        self.settings, self.cfg, self.accelerator, self.precision = settings, cfg, accelerator, precision
        self.version = rebuilt.version
        g = build_models(rebuilt.resolved, dropout=cfg.dropout)["generator"]
        g.load_state_dict(rebuilt.generator, strict=True)
        for n, p in g.named_parameters():
            if n.startswith(NEVER_TRAINED):  # no gradient ever reaches them (see NEVER_TRAINED)
                p.requires_grad_(False)
        params = [p for p in g.parameters() if p.requires_grad]
        peak = cfg.peak_lr("sovits")
        opt = torch.optim.AdamW([{"params": params, "lr": peak, "name": "generator"}], lr=peak,
                                betas=settings.train.betas, eps=settings.train.eps, weight_decay=WEIGHT_DECAY)
        (self.g,), (self.opt,) = prepare(accelerator, [g], [opt])
        self.experiment = experiment
        self.mel_channels = settings.model.mel_channels
        self.make_batch = functools.partial(cfm_micro_batch, version=self.version)
        self.vocoder = None
        if cfg.vocoder is not None:
            if self.version != "v4":
                raise GsvError(f"{self.version}'s vocoder (BigVGAN) is not supported; --vocoder takes the v4 "
                               "vocoder", path=cfg.vocoder, fix="drop --vocoder (validation logs mel images)")
            self.vocoder = load_v4_vocoder(cfg.vocoder).eval()
        #: said once at the start of a run
        self.notes = () if self.vocoder is not None else (
            f"{self.version}: validation samples are mel images (W&B val/mel: the target below, the model's mel "
            "above); pass --vocoder (v4) for audio",)

    @property
    def models(self) -> tuple[torch.nn.Module, ...]:
        return (self.g,)

    @property
    def optimizers(self) -> tuple[torch.optim.Optimizer, ...]:
        return (self.opt,)

    def dataset(self, names: list[str], *, min_items: int | None = None) -> CFMDataset:
        """``min_items``: repeat a smaller set as upstream (the training set; see :class:`SoVITSDataset`)."""
        return CFMDataset(self.experiment, names, spec=self.settings.spec, min_items=min_items)

    def plan(self, ds: CFMDataset, *, seed: int) -> StepPlan:
        acc, n = self.accelerator, self.cfg.grad_accum
        sampler = SoVITSBucketSampler(ds.lengths, self.cfg.batch_size * acc.num_processes * n, CFM_BOUNDARIES,
                                      shuffle=True, seed=seed)
        frames = [spec_frames(u.num_samples, ds.hop_length) for u in ds.utterances]
        phones = [len(u.phone_ids) for u in ds.utterances]
        return StepPlan(sampler, world=acc.num_processes, rank=acc.process_index, accum=n,
                        context=lambda idx: CFMPadding(max(frames[i] for i in idx), max(phones[i] for i in idx)))

    def collate(self, items: list):
        return collate_cfm(items, self.version)

    def train_step(self, batches: list, step: int = 0) -> dict[str, float]:
        """Upstream's loss is a mean over the batch's items: each micro-batch's is weighted by its
        share of the global batch (times the process count DDP's gradient mean divides by)."""
        acc, prec, world, n = self.accelerator, self.precision, self.accelerator.num_processes, len(batches)
        self.g.train()
        total = torch.zeros((), device=acc.device)
        for i, (batch, mb) in enumerate(batches):
            with sync_context(acc, self.g, i == n - 1):
                masks = dropout_generators(batch, seed=self.cfg.seed, step=step, device=acc.device)
                with utterance_dropout(self.g, masks), prec.autocast():  # dropout keyed per utterance too
                    loss = cfm_loss(self.g, batch, seed=self.cfg.seed, step=step)
                prec.backward(loss.float() * (world * mb.share))
            total = total + loss.detach().float() * (world * mb.share)
        grad = prec.step(self.opt, [p for p in self.g.parameters() if p.requires_grad])
        prec.update()
        return read_metrics({"loss": total, "grad_norm": grad})

    @torch.no_grad()
    def evaluate(self, batches: list, seed: int) -> dict[str, float]:
        """The CFM loss on held-out batches with fixed draws and never the shortcut branch (one
        comparable number across steps), fp32. ``quality`` is that loss for now: the CFM's inference
        path (32 sampling steps from a reference prompt, mel metrics) is not evaluated yet."""
        g = self.accelerator.unwrap_model(self.g).eval()
        losses = [float(cfm_loss(g, b, seed=seed, step=f"val{i}", shortcut=False)) for i, b in enumerate(batches)]
        loss = sum(losses) / max(1, len(losses))
        return {"loss": loss, "quality": loss}

    @torch.no_grad()
    def audio_samples(self, items: list, seed: int) -> list:
        """Each fixed validation utterance's mel as the model makes it (4 Euler steps from fixed noise,
        its first third given as the prompt, as upstream's inference): audio through the v4 vocoder
        when given, else images (the vocoder is not part of the SoVITS file)."""
        g = self.accelerator.unwrap_model(self.g).eval()
        out = []
        for it in items:
            b = collate_cfm([it], self.version).to(self.accelerator.device)
            mu = g.features(b.ssl, b.spec, b.spec_lengths, b.text, b.text_lengths, b.mel_lengths)
            n = min(int(b.mel_lengths[0]), mu.size(-1))
            prompt = b.mel[:, :, : n // 3]
            noise = torch.randn(1, self.mel_channels, n, generator=keyed_generator(seed, "sample", it.name))
            mel = g.flow.inference(mu[:, :, :n].transpose(1, 2), b.mel_lengths.clamp(max=n), prompt, 4,
                                   noise=noise.to(mu.device))
            mel[:, :, : prompt.size(-1)] = prompt  # shown as heard: the prompt, then what the model made
            name = Path(it.name).stem
            if self.vocoder is not None:
                wav = self.vocoder.to(mel.device)(mel.float())[0, 0]
                out.append((name, wav.cpu(), V4_VOCODER_RATE))
            else:
                out.append((name, torch.cat([b.mel[0, :, :n], mel[0]], dim=0).float().cpu()))
        return out

    def export(self, out_dir: Path, *, name: str, epoch: int, step: int, protect=()) -> Path:
        """Upstream's LoRA export: fp16, everything but frozen parameters, ``lora_rank``, tag 03/04."""
        g = self.accelerator.unwrap_model(self.g)
        rank = self.settings.lora_rank
        cfg = dict(self.settings.s2, name=name, version=self.version, save_weight_dir=export_dir_name(self.version))
        cfg["train"] = dict(cfg.get("train") or {}, lora_rank=str(rank))  # upstream's WebUI writes it as a string
        path = Path(out_dir) / export_dir_name(self.version) / f"{name}_e{epoch}_s{step}_l{rank}.pth"
        return write_sovits_export(path, lora_export_state_dict(g), config=cfg, info=f"{epoch}epoch_{step}iteration",
                                   version=self.version, lora_rank=rank, overwrite=True, protect=protect)

