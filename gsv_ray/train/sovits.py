"""SoVITS (stage 2, v1/v2/v2Pro/v2ProPlus): the GAN step as upstream's ``s2_train.py`` takes it.

D is updated first on the detached generator output, then G with the least-squares adversarial
loss, feature matching, mel L1 x c_mel, KL x c_kl (+ the quantizer commitment, 0 when frozen).
AdamW with upstream's betas/eps; the text side (``enc_p.text_embedding``, ``enc_p.encoder_text``,
``enc_p.mrte``) at ``text_low_lr_rate`` times the peak, as upstream groups it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from gsv_ray.data.experiment import Experiment
from gsv_ray.data.sovits import SoVITSBucketSampler, SoVITSDataset, collate_sovits
from gsv_ray.io.writers import write_sovits_export
from gsv_ray.models.audio import AudioFrontend
from gsv_ray.models.sovits.commons import slice_segments
from gsv_ray.models.sovits.losses import discriminator_loss, generator_total_loss, kl_loss, mel_l1_loss
from gsv_ray.rebuild import Rebuilt, build_models
from gsv_ray.train.common import prepare, read_metrics
from gsv_ray.train.config import TrainConfig

TEXT_SIDE = ("enc_p.text_embedding.", "enc_p.encoder_text.", "enc_p.mrte.")


def export_dir_name(version: str) -> str:
    """Upstream's folder per version: ``SoVITS_weights`` (v1), ``SoVITS_weights_<ver>`` otherwise."""
    return "SoVITS_weights" if version == "v1" else f"SoVITS_weights_{version}"


class SoVITSRecipe:
    stage = "sovits"

    def __init__(self, rebuilt: Rebuilt, cfg: TrainConfig, accelerator: Accelerator, experiment: Experiment):
        self.cfg, self.accelerator, self.version = cfg, accelerator, rebuilt.version
        self.s2: dict[str, Any] = rebuilt.config["s2"]
        models = build_models(rebuilt.config, dropout=cfg.dropout)
        g, d = models["generator"], models["discriminator"]
        g.load_state_dict(rebuilt.generator, strict=True)
        d.load_state_dict(rebuilt.discriminator, strict=True)
        self.segment_frames = g.config.segment_frames
        self.hop = int(self.s2["data"]["hop_length"])
        self.c_mel = float(self.s2["train"].get("c_mel", 45))
        self.c_kl = float(self.s2["train"].get("c_kl", 1.0))
        self.inter_channels = int(self.s2["model"]["inter_channels"])
        train = self.s2["train"]
        betas, eps = tuple(train.get("betas", (0.8, 0.99))), float(train.get("eps", 1e-9))
        peak, low = cfg.peak_lr("sovits"), float(train.get("text_low_lr_rate", 0.4))
        if g.freeze_quantizer:  # upstream keeps ssl_proj in the optimizer, but it never gets a gradient
            g.ssl_proj.requires_grad_(False)
        named = [(n, p) for n, p in g.named_parameters() if p.requires_grad]
        text = [p for n, p in named if n.startswith(TEXT_SIDE)]
        rest = [p for n, p in named if not n.startswith(TEXT_SIDE)]
        opt_g = torch.optim.AdamW([{"params": rest, "lr": peak, "name": "generator"},
                                   {"params": text, "lr": peak * low, "name": "generator_text"}],
                                  lr=peak, betas=betas, eps=eps)
        opt_d = torch.optim.AdamW([{"params": list(d.parameters()), "lr": peak, "name": "discriminator"}],
                                  lr=peak, betas=betas, eps=eps)
        (self.g, self.d), (self.opt_g, self.opt_d) = prepare(accelerator, [g, d], [opt_g, opt_d])
        self.frontend = AudioFrontend.from_data_config(self.s2["data"]).to(accelerator.device)
        self.experiment = experiment

    # -- wiring for the loop -------------------------------------------------------------------
    @property
    def models(self) -> tuple[torch.nn.Module, ...]:
        return (self.g, self.d)

    @property
    def optimizers(self) -> tuple[torch.optim.Optimizer, ...]:
        return (self.opt_g, self.opt_d)

    def dataset(self, names: list[str]) -> SoVITSDataset:
        return SoVITSDataset(self.experiment, names)

    def sampler(self, ds: SoVITSDataset, *, shuffle: bool, seed: int) -> SoVITSBucketSampler:
        return SoVITSBucketSampler(ds.lengths, self.cfg.batch_size, num_replicas=self.accelerator.num_processes,
                                   rank=self.accelerator.process_index, shuffle=shuffle, seed=seed)

    collate = staticmethod(collate_sovits)
    train_collate = staticmethod(collate_sovits)  # padding never reaches the losses (masked)

    # -- one step ------------------------------------------------------------------------------
    def train_step(self, batch, step: int = 0) -> dict[str, float]:
        acc = self.accelerator
        self.g.train()
        self.d.train()
        eps, slice_u = utterance_noise(batch, self.inter_channels, seed=self.cfg.seed, step=step)
        out = self.g(batch.ssl, batch.spec, batch.spec_lengths, batch.text, batch.text_lengths, batch.sv_emb,
                     eps=eps, slice_u=slice_u)
        z, z_p, m_p, logs_p, m_q, logs_q = out.stats
        y_hat = out.y_hat.float()
        y_mel = slice_segments(self.frontend.spec_to_mel(batch.spec), out.ids_slice, self.segment_frames)
        y_hat_mel = self.frontend.mel(y_hat.squeeze(1))
        y = slice_segments(batch.wav, out.ids_slice * self.hop, self.segment_frames * self.hop)

        y_d_r, y_d_g, _, _ = self.d(y, y_hat.detach())
        loss_d, _, _ = discriminator_loss([t.float() for t in y_d_r], [t.float() for t in y_d_g])
        self.opt_d.zero_grad(set_to_none=True)
        acc.backward(loss_d)
        grad_d = acc.clip_grad_norm_(self.d.parameters(), float("inf")) if acc.sync_gradients else None
        self.opt_d.step()

        y_d_r, y_d_g, fmap_r, fmap_g = self.d(y, y_hat)
        losses = generator_total_loss(
            [t.float() for t in y_d_g], [[f.float() for f in fm] for fm in fmap_r], [[f.float() for f in fm] for fm in fmap_g],
            y_mel, y_hat_mel, z_p.float(), logs_q.float(), m_p.float(), logs_p.float(), out.z_mask,
            kl_ssl=out.kl_ssl, c_mel=self.c_mel, c_kl=self.c_kl)
        self.opt_g.zero_grad(set_to_none=True)
        acc.backward(losses.total)
        grad_g = acc.clip_grad_norm_(self.g.parameters(), float("inf")) if acc.sync_gradients else None
        self.opt_g.step()
        named = {"loss": losses.total, "loss_disc": loss_d, "loss_gen": losses.gen, "loss_fm": losses.fm,
                 "loss_mel": losses.mel, "loss_kl": losses.kl}
        if grad_g is not None:
            named.update(grad_norm=grad_g, grad_norm_d=grad_d)
        return read_metrics(named)

    # -- validation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, batches: list, seed: int) -> dict[str, float]:
        """mel L1 x c_mel + KL on held-out batches, with fixed noise (comparable across steps)."""
        g = self.accelerator.unwrap_model(self.g).eval()
        return sovits_eval_losses(g, batches, self.frontend, self.c_mel, self.c_kl, seed)

    @torch.no_grad()
    def audio_samples(self, items: list, seed: int) -> list[tuple[str, torch.Tensor, int]]:
        """Each fixed validation utterance re-synthesised from its own tokens, text and reference."""
        g = self.accelerator.unwrap_model(self.g).eval()
        out = []
        for i, it in enumerate(items):
            dev = self.accelerator.device
            codes = g.extract_latent(it.ssl.float().to(dev)).transpose(0, 1)  # ssl is [1, 768, T]
            refer = it.spec[None].to(dev)
            sv = it.sv_emb.to(dev) if it.sv_emb is not None else None        # [1, 20480]
            wav = g.decode(codes, it.text[None].to(dev), refer, noise_scale=0.5, sv_emb=sv,
                           noise=_noise_like(g, codes, dev, seed + i))[0, 0]
            out.append((Path(it.name).stem, wav.float().cpu(), int(self.s2["data"]["sampling_rate"])))
        return out

    # -- export --------------------------------------------------------------------------------
    def export(self, out_dir: Path, *, name: str, epoch: int, step: int, protect=()) -> Path:
        g = self.accelerator.unwrap_model(self.g)
        cfg = dict(self.s2, name=name, version=self.version, save_weight_dir=export_dir_name(self.version))
        path = Path(out_dir) / export_dir_name(self.version) / f"{name}_e{epoch}_s{step}.pth"
        return write_sovits_export(path, g.state_dict(), config=cfg, info=f"{epoch}epoch_{step}iteration",
                                   version=self.version, overwrite=True, protect=protect)


def _noise_like(g, codes, device, seed: int) -> torch.Tensor:
    """Decode noise from a private generator: sampling audio must not move the training RNG."""
    frames = codes.shape[-1] * (2 if g.config.semantic_frame_rate == "25hz" else 1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(1, g.config.inter_channels, frames, generator=gen).to(device)


def utterance_noise(batch, channels: int, *, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior's noise and the training window's position, drawn per utterance from a
    generator keyed by (seed, step, utterance name): the same values whichever process or batch
    an utterance lands in, so N workers train exactly like one process with the global batch."""
    eps = torch.zeros(batch.spec.shape[0], channels, batch.spec.shape[-1])
    u = torch.empty(batch.spec.shape[0])
    for i, (name, length) in enumerate(zip(batch.names, batch.spec_lengths.tolist())):
        key = int.from_bytes(hashlib.blake2b(f"{seed}|{step}|{name}".encode(), digest_size=8).digest(), "little")
        gen = torch.Generator().manual_seed(key)
        eps[i, :, :length] = torch.randn(channels, length, generator=gen)
        u[i] = torch.rand(1, generator=gen)
    return eps.to(batch.spec.device), u.to(batch.spec.device)


def sovits_eval_losses(g, batches, frontend, c_mel: float, c_kl: float, seed: int) -> dict[str, float]:
    mel_sum = kl_sum = 0.0
    for i, b in enumerate(batches):
        gen = torch.Generator().manual_seed(seed + i)  # the same noise for every evaluation
        eps = torch.randn(b.spec.shape[0], g.config.inter_channels, b.spec.shape[-1], generator=gen).to(b.spec.device)
        slice_u = torch.rand(b.spec.shape[0], generator=gen).to(b.spec.device)
        out = g(b.ssl, b.spec, b.spec_lengths, b.text, b.text_lengths, b.sv_emb, eps=eps, slice_u=slice_u)
        z, z_p, m_p, logs_p, m_q, logs_q = out.stats
        y_mel = slice_segments(frontend.spec_to_mel(b.spec), out.ids_slice, g.config.segment_frames)
        mel_sum += float(mel_l1_loss(y_mel, frontend.mel(out.y_hat.float().squeeze(1))))
        kl_sum += float(kl_loss(z_p.float(), logs_q.float(), m_p.float(), logs_p.float(), out.z_mask))
    n = max(1, len(batches))
    return {"mel_l1": mel_sum / n, "kl": kl_sum / n, "loss": (c_mel * mel_sum + c_kl * kl_sum) / n}
