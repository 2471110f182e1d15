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
import math
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator

from gsv_ray.audio import read_wav_pcm16
from gsv_ray.data.cfm import (
    CFM_BOUNDARIES,
    WAV_RATE,
    CFMBatch,
    CFMDataset,
    CFMItem,
    CFMPadding,
    collate_cfm,
    normalise_mel,
    resample,
)
from gsv_ray.data.experiment import Experiment, spec_frames
from gsv_ray.data.loader import MicroBatch, StepPlan
from gsv_ray.data.sovits import SoVITSBucketSampler
from gsv_ray.errors import GsvError
from gsv_ray.io.writers import write_sovits_export
from gsv_ray.models.dropout import utterance_dropout
from gsv_ray.models.sovits.cfm import CFMDraws
from gsv_ray.models.sovits.v3 import MEL_NORM, NEVER_TRAINED, lora_export_state_dict
from gsv_ray.models.sovits.vocoder import V4_VOCODER_RATE, load_v4_vocoder
from gsv_ray.models.sv import SpeakerEncoder, spk_sim
from gsv_ray.rebuild import Rebuilt, build_models
from gsv_ray.train.common import dropout_generators, item_keys, keyed_generator, prepare, read_metrics, sync_context
from gsv_ray.train.config import TrainConfig
from gsv_ray.train.precision import Precision
from gsv_ray.train.quality import eval_pairs, log_mel_dist, mrstft_dist, sovits_quality
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
    return g(
        batch.ssl,
        batch.spec,
        batch.mel,
        batch.spec_lengths,
        batch.text,
        batch.text_lengths,
        batch.mel_lengths,
        prompt_u=prompt_u,
        draws=draws,
    )


#: Upstream's CFM chunking at inference (``get_tts_wav``): ``(Tref, Tchunk)`` -- the reference prompt
#: keeps at most its last ``Tref`` mel frames, and each CFM call sees ``Tchunk`` frames in all.
CFM_CHUNKS = {"v3": (468, 934), "v4": (500, 1000)}


def uncollate_cfm(batch: CFMBatch) -> list[CFMItem]:
    """The items of a collated batch, unpadded (on the batch's device)."""
    rows = zip(
        batch.ssl_lengths.tolist(),
        batch.spec_lengths.tolist(),
        batch.mel_lengths.tolist(),
        batch.text_lengths.tolist(),
        batch.names,
        batch.keys,
    )
    return [
        CFMItem(
            batch.ssl[i : i + 1, :, :n_ssl],
            batch.spec[i, :, :n_spec],
            batch.mel[i, :, :n_mel],
            batch.text[i, :n_text],
            name,
            key,
        )
        for i, (n_ssl, n_spec, n_mel, n_text, name, key) in enumerate(rows)
    ]


def cfm_synthesise(
    g, item: CFMItem, reference: CFMItem, *, version: str, steps: int, generator: torch.Generator
) -> torch.Tensor:
    """``item``'s normalised mel ``[100, T]`` as GPT-SoVITS v3/v4 infers it (``get_tts_wav``): the
    condition of ``reference``'s tokens and phones, then ``item``'s (both with ``reference``'s ``ge``),
    ``reference``'s mel as the prompt, :data:`CFM_CHUNKS` chunking, ``steps`` Euler steps from noise
    drawn from ``generator``; only the frames after the prompt (they align with ``item``'s own mel).
    Differs from upstream in one place: the reference's tokens come from its stored HuBERT features,
    without the 0.3 s of silence upstream appends (cut off again by the ``T_min`` crop below)."""
    dev = item.ssl.device
    ge = g.reference_embedding(reference.spec[None].float())
    fea_ref = g.decode_encp(reference.ssl.float(), reference.text[None], ge)
    fea_todo = g.decode_encp(item.ssl.float(), item.text[None], ge)
    t_min = min(reference.mel.size(-1), fea_ref.size(-1))
    prompt, fea_ref = reference.mel[None, :, :t_min].float(), fea_ref[:, :, :t_min]
    t_ref, t_chunk = CFM_CHUNKS[version]
    if t_min > t_ref:
        prompt, fea_ref, t_min = prompt[:, :, -t_ref:], fea_ref[:, :, -t_ref:], t_ref
    out = []
    for start in range(0, fea_todo.size(-1), t_chunk - t_min):
        piece = fea_todo[:, :, start : start + t_chunk - t_min]
        fea = torch.cat([fea_ref, piece], 2).transpose(1, 2)
        noise = torch.randn(1, prompt.size(1), fea.size(1), generator=generator).to(dev)
        mel = g.flow.inference(fea, torch.tensor([fea.size(1)], device=dev), prompt, steps, noise=noise)
        mel = mel[:, :, prompt.size(-1) :]
        prompt, fea_ref = mel[:, :, -t_min:], piece[:, :, -t_min:]
        out.append(mel)
    return torch.cat(out, 2)[0]


#: The normalised mel of silence: the log floor, ``log(1e-5)``, normalised as the CFM's target.
SILENT_MEL = float(normalise_mel(torch.tensor(math.log(1e-5))))


def finite_mel(normalised: torch.Tensor) -> torch.Tensor:
    """A generated normalised mel with non-finite values as silence (:data:`SILENT_MEL`): a broken
    model ranks as badly as it sounds (a NaN would drop out of a ranking instead)."""
    return torch.nan_to_num(normalised.float(), SILENT_MEL, SILENT_MEL, SILENT_MEL)


def log_mel(normalised: torch.Tensor) -> torch.Tensor:
    """A normalised CFM mel back to natural-log mel (the inverse of ``normalise_mel``)."""
    lo, hi = MEL_NORM
    return (normalised.float() + 1) / 2 * (hi - lo) + lo


def cfm_inference_metrics(
    g,
    items: list[CFMItem],
    *,
    seed: int,
    version: str,
    steps: int,
    vocoder=None,
    real_wav: Callable[[str], torch.Tensor] | None = None,
    speaker: SpeakerEncoder | None = None,
) -> dict[str, float]:
    """Each held-out utterance on the inference path (:func:`cfm_synthesise`, the reference from
    :func:`~gsv_ray.train.quality.eval_pairs`, noise keyed by (seed, name)) against its real mel:

    * ``mel_dist`` -- :func:`~gsv_ray.train.quality.log_mel_dist` of the generated and the real
      natural-log mel (the CFM's own 100-band mel: v3 24 kHz / hop 256, v4 32 kHz / hop 320), over
      the generated frames (the real mel's length when shorter);
    * with ``vocoder`` (v4) and ``real_wav(name)`` (the 32 kHz recording ``[N]``): the vocoded 48 kHz
      audio resampled to 32 kHz against it, ``mrstft_dist``, and with ``speaker`` ``spk_sim``.

    Per utterance (``utt/<stem>/...``) and averaged; ``quality`` =
    :func:`~gsv_ray.train.quality.sovits_quality` of the averages. One utterance per CFM call, as
    upstream infers: the DiT attends over the whole padded sequence, so a batch would change the result."""
    if not items:
        return {}
    out: dict[str, float] = {}
    sums: dict[str, list[float]] = {"mel_dist": [], "mrstft_dist": [], "spk_sim": []}
    for it, ref in zip(items, [items[j] for j in eval_pairs([it.name for it in items])], strict=True):
        gen = keyed_generator(seed, "eval", it.name)
        mel = finite_mel(cfm_synthesise(g, it, ref, version=version, steps=steps, generator=gen))
        got = {"mel_dist": log_mel_dist(log_mel(mel), log_mel(it.mel))}
        if vocoder is not None and real_wav is not None:
            voc = torch.nan_to_num(vocoder.to(mel.device)(mel[None])[0].float().cpu(), 0.0, 0.0, 0.0)
            wav = resample(voc, V4_VOCODER_RATE, WAV_RATE)[0]
            real = real_wav(it.name)
            got["mrstft_dist"] = mrstft_dist(wav, real)
            if speaker is not None:
                got["spk_sim"] = spk_sim(speaker.embed(wav, WAV_RATE), speaker.embed(real, WAV_RATE))
        stem = Path(it.name).stem
        for k, v in got.items():
            out[f"utt/{stem}/{k}"] = v
            sums[k].append(v)
    means = {k: sum(v) / len(v) for k, v in sums.items() if v}
    return {**means, "quality": sovits_quality(means["mel_dist"], means.get("spk_sim")), **out}


class CFMRecipe:
    stage = "sovits"

    def __init__(
        self, rebuilt: Rebuilt, cfg: TrainConfig, accelerator: Accelerator, experiment: Experiment, precision: Precision
    ):
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
        opt = torch.optim.AdamW(
            [{"params": params, "lr": peak, "name": "generator"}],
            lr=peak,
            betas=settings.train.betas,
            eps=settings.train.eps,
            weight_decay=WEIGHT_DECAY,
        )
        (self.g,), (self.opt,) = prepare(accelerator, [g], [opt])
        self.experiment = experiment
        self.mel_channels = settings.model.mel_channels
        self.make_batch = functools.partial(cfm_micro_batch, version=self.version)
        self.vocoder = None
        if cfg.vocoder is not None:
            if self.version != "v4":
                raise GsvError(
                    f"{self.version}'s vocoder (BigVGAN) is not supported; --vocoder takes the v4 vocoder",
                    path=cfg.vocoder,
                    fix="drop --vocoder (validation logs mel images)",
                )
            self.vocoder = load_v4_vocoder(cfg.vocoder).eval()
        self.speaker = SpeakerEncoder.load(cfg.sv_model).to(accelerator.device) if cfg.sv_model else None
        #: said once at the start of a run
        self.notes = (
            ()
            if self.vocoder is not None
            else (
                f"{self.version}: validation samples are mel images (W&B val/mel: the target below, the model's mel "
                "above); pass --vocoder (v4) for audio",
            )
            + (
                (
                    f"{self.version}: validation scores mels (val/mel_dist); val/mrstft_dist and val/spk_sim need the "
                    "audio: pass --vocoder (v4)",
                )
                if cfg.sv_model
                else ()
            )
        )

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
        sampler = SoVITSBucketSampler(
            ds.lengths, self.cfg.batch_size * acc.num_processes * n, CFM_BOUNDARIES, shuffle=True, seed=seed
        )
        frames = [spec_frames(u.num_samples, ds.hop_length) for u in ds.utterances]
        phones = [len(u.phone_ids) for u in ds.utterances]
        return StepPlan(
            sampler,
            world=acc.num_processes,
            rank=acc.process_index,
            accum=n,
            context=lambda idx: CFMPadding(max(frames[i] for i in idx), max(phones[i] for i in idx)),
        )

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
        comparable number across steps), fp32, and the inference path's metrics
        (:func:`cfm_inference_metrics`, ``--cfm-eval-steps`` steps) on the first
        ``--cfm-eval-utterances`` of them; ``quality`` is their composite, not the loss."""
        g = self.accelerator.unwrap_model(self.g).eval()
        losses = [float(cfm_loss(g, b, seed=seed, step=f"val{i}", shortcut=False)) for i, b in enumerate(batches)]
        loss = sum(losses) / max(1, len(losses))
        items = [it for b in batches for it in uncollate_cfm(b)][: self.cfg.cfm_eval_utterances]
        return {
            "loss": loss,
            "quality": loss,
            **cfm_inference_metrics(  # quality: the loss when none is scored
                g,
                items,
                seed=seed,
                version=self.version,
                steps=self.cfg.cfm_eval_steps,
                vocoder=self.vocoder,
                real_wav=self._real_wav,
                speaker=self.speaker,
            ),
        }

    def _real_wav(self, name: str) -> torch.Tensor:
        """The held-out utterance's 32 kHz recording ``[N]`` (the vocoded audio's reference)."""
        (u,) = self.experiment.subset([name])
        return read_wav_pcm16(u.wav_path)[0].float()

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
            mel = g.flow.inference(
                mu[:, :, :n].transpose(1, 2), b.mel_lengths.clamp(max=n), prompt, 4, noise=noise.to(mu.device)
            )
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
        return write_sovits_export(
            path,
            lora_export_state_dict(g),
            config=cfg,
            info=f"{epoch}epoch_{step}iteration",
            version=self.version,
            lora_rank=rank,
            overwrite=True,
            protect=protect,
        )
