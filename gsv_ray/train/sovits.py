"""SoVITS (stage 2, v1/v2/v2Pro/v2ProPlus): the GAN step as upstream's ``s2_train.py`` takes it.

D is updated first on the detached generator output, then G with the least-squares adversarial
loss, feature matching, mel L1 x c_mel, KL x c_kl (+ the quantizer commitment, 0 when frozen).
AdamW with upstream's betas/eps; the text side (``enc_p.text_embedding``, ``enc_p.encoder_text``,
``enc_p.mrte``) at ``text_low_lr_rate`` times the peak, as upstream groups it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from accelerate import Accelerator

from gsv_ray.audio import AudioFrontend
from gsv_ray.data.experiment import Experiment, spec_frames
from gsv_ray.data.loader import MicroBatch, StepPlan
from gsv_ray.data.sovits import SoVITSBucketSampler, SoVITSDataset, SoVITSItem, SoVITSPadding, collate_sovits
from gsv_ray.errors import ConfigError
from gsv_ray.io.writers import write_sovits_export
from gsv_ray.models.dropout import utterance_dropout
from gsv_ray.models.sovits.commons import slice_segments
from gsv_ray.models.sovits.losses import discriminator_loss, generator_total_loss, kl_loss, mel_l1_loss
from gsv_ray.models.sv import SpeakerEncoder, spk_sim
from gsv_ray.rebuild import Rebuilt, build_models
from gsv_ray.train.common import (
    dropout_generators,
    frozen,
    item_keys,
    keyed_generator,
    keyed_seed,
    prepare,
    read_metrics,
    sync_context,
)
from gsv_ray.train.config import TrainConfig
from gsv_ray.train.precision import Precision
from gsv_ray.train.quality import eval_pairs, mel_dist, mrstft_dist, sovits_quality

TEXT_SIDE = ("enc_p.text_embedding.", "enc_p.encoder_text.", "enc_p.mrte.")


def check_codebook(resolved, cfg: TrainConfig, processes: int) -> None:
    """Refuse, in one line, what would train the EMA codebook other than once per global batch.

    With ``freeze_quantizer: false`` every training forward updates the codebook (upstream's EMA):
    with accumulation once per micro-batch and again in G's recomputed pass (4 updates instead of
    1 at accum 2); with several processes each updates its own copy and DDP keeps rank 0's. Neither
    is one process's update on the global batch, so it is refused before anything is written."""
    settings = resolved.sovits or resolved.sovits_v3
    if settings is None or settings.model.freeze_quantizer or (cfg.grad_accum == 1 and processes == 1):
        return
    how = " and ".join(
        w
        for w in (
            f"--grad-accum {cfg.grad_accum}" if cfg.grad_accum > 1 else "",
            f"{processes} processes" if processes > 1 else "",
        )
        if w
    )
    raise ConfigError(
        f"its model config has freeze_quantizer: false (the codebook trains by moving averages in every "
        f"forward), which with {how} is not one update per global batch",
        path=cfg.init,
        fix="train it with --grad-accum 1 on one worker (raise --batch-size instead), or from a file "
        "whose config has freeze_quantizer: true",
    )


def export_dir_name(version: str) -> str:
    """Upstream's folder per version: ``SoVITS_weights`` (v1), ``SoVITS_weights_<ver>`` otherwise."""
    return "SoVITS_weights" if version == "v1" else f"SoVITS_weights_{version}"


class SoVITSStep(NamedTuple):
    """What a micro-batch needs from its step's global batch."""

    frames: int  # spectrogram frames of the whole global batch (KL normaliser)
    padding: SoVITSPadding  # the global batch's padded lengths


def sovits_micro_batch(items: list, mb: MicroBatch):
    """A loader item: the micro-batch collated as upstream's collate does, padded like its global batch."""
    return collate_sovits(items, pad_to=mb.context.padding)


class SoVITSRecipe:
    stage = "sovits"

    def __init__(
        self, rebuilt: Rebuilt, cfg: TrainConfig, accelerator: Accelerator, experiment: Experiment, precision: Precision
    ):
        self.cfg, self.accelerator, self.version, self.precision = cfg, accelerator, rebuilt.version, precision
        settings = rebuilt.resolved.sovits
        assert settings is not None, "a VITS-family SoVITS rebuild"
        self.settings = settings
        models = build_models(rebuilt.resolved, dropout=cfg.dropout)
        g, d = models["generator"], models["discriminator"]
        g.load_state_dict(rebuilt.generator, strict=True)
        d.load_state_dict(rebuilt.discriminator, strict=True)
        self.segment_frames = g.config.segment_frames
        self.hop = settings.audio.hop_length
        self.c_mel, self.c_kl = settings.train.c_mel, settings.train.c_kl
        self.inter_channels = settings.model.inter_channels
        betas, eps = settings.train.betas, settings.train.eps
        peak, low = cfg.peak_lr("sovits"), settings.train.text_low_lr_rate
        if g.freeze_quantizer:  # upstream keeps ssl_proj in the optimizer, but it never gets a gradient
            g.ssl_proj.requires_grad_(False)
        named = [(n, p) for n, p in g.named_parameters() if p.requires_grad]
        text = [p for n, p in named if n.startswith(TEXT_SIDE)]
        rest = [p for n, p in named if not n.startswith(TEXT_SIDE)]
        opt_g = torch.optim.AdamW(
            [
                {"params": rest, "lr": peak, "name": "generator"},
                {"params": text, "lr": peak * low, "name": "generator_text"},
            ],
            lr=peak,
            betas=betas,
            eps=eps,
        )
        opt_d = torch.optim.AdamW(
            [{"params": list(d.parameters()), "lr": peak, "name": "discriminator"}], lr=peak, betas=betas, eps=eps
        )
        (self.g, self.d), (self.opt_g, self.opt_d) = prepare(accelerator, [g, d], [opt_g, opt_d])
        self.frontend = AudioFrontend.from_config(settings.audio).to(accelerator.device)
        self.experiment = experiment
        self.speaker = SpeakerEncoder.load(cfg.sv_model).to(accelerator.device) if cfg.sv_model else None
        validates = bool(cfg.val_fraction or cfg.val_names)
        self.notes = (
            ()
            if self.speaker or not validates
            else (
                "validation: speaker similarity (val/spk_sim) is not scored: pass --sv-model "
                "pretrained_models/sv/pretrained_eres2netv2w24s4ep4.ckpt (GPT-SoVITS's speaker model) to score it",
            )
        )

    # -- wiring for the loop -------------------------------------------------------------------
    @property
    def models(self) -> tuple[torch.nn.Module, ...]:
        return (self.g, self.d)

    @property
    def optimizers(self) -> tuple[torch.optim.Optimizer, ...]:
        return (self.opt_g, self.opt_d)

    def dataset(self, names: list[str], *, min_items: int | None = None) -> SoVITSDataset:
        """``min_items``: repeat a smaller set as upstream (the training set; see :class:`SoVITSDataset`)."""
        return SoVITSDataset(
            self.experiment,
            names,
            audio=self.settings.audio,  # the recipe's own front-end
            min_items=min_items,
        )

    def plan(self, ds: SoVITSDataset, *, seed: int) -> StepPlan:
        """Global batches of ``batch_size x processes x grad_accum``; each step's context is its
        global batch's spectrogram frames (the KL is averaged over them, as one process would) and
        padded lengths (every micro-batch is padded as the global batch would be)."""
        acc, n = self.accelerator, self.cfg.grad_accum
        sampler = SoVITSBucketSampler(ds.lengths, self.cfg.batch_size * acc.num_processes * n, shuffle=True, seed=seed)
        frames = [spec_frames(u.num_samples, ds.hop_length) for u in ds.utterances]
        samples = [u.num_samples for u in ds.utterances]
        phones = [len(u.phone_ids) for u in ds.utterances]

        def context(idx: list[int]) -> SoVITSStep:
            return SoVITSStep(
                sum(frames[i] for i in idx),
                SoVITSPadding(max(frames[i] for i in idx), max(samples[i] for i in idx), max(phones[i] for i in idx)),
            )

        return StepPlan(sampler, world=acc.num_processes, rank=acc.process_index, accum=n, context=context)

    collate = staticmethod(collate_sovits)
    make_batch = staticmethod(sovits_micro_batch)

    # -- one step ------------------------------------------------------------------------------
    def _generate(self, g, batch, step: int):
        """G's forward and what both losses compare (window of real audio, mels), in fp32 after G.
        Every random draw is keyed per utterance (noise, window, dropout masks from fresh generators):
        a recomputed pass draws exactly what the first drew."""
        eps, slice_u = utterance_noise(batch, self.inter_channels, seed=self.cfg.seed, step=step)
        masks = dropout_generators(batch, seed=self.cfg.seed, step=step, device=self.accelerator.device)
        with utterance_dropout(g, masks), self.precision.autocast():
            out = g(
                batch.ssl,
                batch.spec,
                batch.spec_lengths,
                batch.text,
                batch.text_lengths,
                batch.sv_emb,
                eps=eps,
                slice_u=slice_u,
            )
        y_hat = out.y_hat.float()
        y_mel = slice_segments(self.frontend.spec_to_mel(batch.spec), out.ids_slice, self.segment_frames)
        y = slice_segments(batch.wav, out.ids_slice * self.hop, self.segment_frames * self.hop)
        return _Generated(out, y, y_hat, y_mel, self.frontend.mel(y_hat.squeeze(1)))

    # long: upstream's D-then-G step as two passes over the micro-batches sharing the kept graphs and sums
    def train_step(self, batches: list, step: int = 0) -> dict[str, float]:
        """One optimizer step over this process's micro-batches, as upstream's step on the whole
        global batch: D is updated first on every micro-batch's detached output, then G against the
        *updated* D. With accumulation, G's forward is recomputed in the second pass (same noise, same
        dropout masks: all keyed per utterance, nothing drawn from the global RNG) instead of keeping
        every micro-batch's graph alive. (The EMA codebook, ``freeze_quantizer: false``, would update
        in both passes: :func:`check_codebook` refuses it with accumulation.)

        Losses are weighted by each micro-batch's share of the global batch (the KL by its share of
        the spectrogram frames), times the process count that DDP's gradient mean divides by. G's
        adversarial loss goes through D with D's parameters frozen: G's loss leaves no gradient in D.
        """
        acc, prec, world, n = self.accelerator, self.precision, self.accelerator.num_processes, len(batches)
        self.g.train()
        self.d.train()
        g_raw, d_raw = acc.unwrap_model(self.g), acc.unwrap_model(self.d)
        keep = n == 1  # no accumulation: keep G's graph from the first pass, nothing is recomputed
        kept: list[_Generated | None] = [None] * n
        sums: dict[str, torch.Tensor] = {}

        def add(name: str, value: torch.Tensor, weight: float) -> None:
            sums[name] = sums.get(name, 0.0) + value.detach().float() * weight

        for i, (batch, mb) in enumerate(batches):
            with sync_context(acc, self.d, i == n - 1):
                with torch.set_grad_enabled(keep):
                    gen = self._generate(self.g if keep else g_raw, batch, step)
                with prec.autocast():
                    y_d_r, y_d_g, _, _ = self.d(gen.y, gen.y_hat.detach())
                loss_d, _, _ = discriminator_loss([t.float() for t in y_d_r], [t.float() for t in y_d_g])
                prec.backward(loss_d * (world * mb.share))
            add("loss_disc", loss_d, world * mb.share)
            if keep:
                kept[i] = gen
        grad_d = prec.step(self.opt_d, self.d.parameters())

        for i, (batch, mb) in enumerate(batches):
            with sync_context(acc, self.g, i == n - 1):
                gen = kept[i]
                if gen is None:
                    gen = self._generate(self.g, batch, step)
                with frozen(d_raw), prec.autocast():
                    _, y_d_g, fmap_r, fmap_g = d_raw(gen.y, gen.y_hat)
                z, z_p, m_p, logs_p, m_q, logs_q = gen.out.stats
                losses = generator_total_loss(
                    [t.float() for t in y_d_g],
                    [[f.float() for f in fm] for fm in fmap_r],
                    [[f.float() for f in fm] for fm in fmap_g],
                    gen.y_mel,
                    gen.y_hat_mel,
                    z_p.float(),
                    logs_q.float(),
                    m_p.float(),
                    logs_p.float(),
                    gen.out.z_mask,
                    kl_ssl=gen.out.kl_ssl,
                    c_mel=self.c_mel,
                    c_kl=self.c_kl,
                )
                w = world * mb.share
                w_kl = world * float(batch.spec_lengths.sum()) / mb.context.frames  # share of the global frames
                prec.backward(w * (losses.total - losses.kl) + w_kl * losses.kl)
            for name, value in (("loss_gen", losses.gen), ("loss_fm", losses.fm), ("loss_mel", losses.mel)):
                add(name, value, w)
            add("loss_kl", losses.kl, w_kl)
            add("loss", losses.total - losses.kl, w)
            add("loss", losses.kl, w_kl)
            kept[i] = None  # free the graph as soon as it is used
        grad_g = prec.step(self.opt_g, self.g.parameters())
        prec.update()
        return read_metrics({**sums, "grad_norm": grad_g, "grad_norm_d": grad_d})

    # -- validation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, batches: list, seed: int) -> dict[str, float]:
        """The training path's losses (mel L1 x c_mel + KL, fixed noise) and the inference path's
        metrics (:func:`inference_metrics`) on the held-out batches, fp32: comparable across steps."""
        g = self.accelerator.unwrap_model(self.g).eval()
        losses = sovits_eval_losses(g, batches, self.frontend, self.c_mel, self.c_kl, seed)
        items = [it for b in batches for it in uncollate_sovits(b)]
        return {**losses, **inference_metrics(g, items, seed, self.settings.audio.sampling_rate, self.speaker)}

    @torch.no_grad()
    def audio_samples(self, items: list, seed: int) -> list[tuple[str, torch.Tensor, int]]:
        """Each fixed validation utterance re-synthesised from its own tokens, text and reference."""
        g = self.accelerator.unwrap_model(self.g).eval()
        return [
            (Path(it.name).stem, resynthesise(g, it, it, seed + i).cpu(), self.settings.audio.sampling_rate)
            for i, it in enumerate(items)
        ]

    # -- export --------------------------------------------------------------------------------
    def export(self, out_dir: Path, *, name: str, epoch: int, step: int, protect=()) -> Path:
        g = self.accelerator.unwrap_model(self.g)
        cfg = dict(self.settings.s2, name=name, version=self.version, save_weight_dir=export_dir_name(self.version))
        path = Path(out_dir) / export_dir_name(self.version) / f"{name}_e{epoch}_s{step}.pth"
        return write_sovits_export(
            path,
            g.state_dict(),
            config=cfg,
            info=f"{epoch}epoch_{step}iteration",
            version=self.version,
            overwrite=True,
            protect=protect,
        )


class _Generated(NamedTuple):
    out: Any  # the generator's forward output
    y: torch.Tensor  # the real audio window
    y_hat: torch.Tensor
    y_mel: torch.Tensor
    y_hat_mel: torch.Tensor


def _noise_like(g, codes, device, seed: int) -> torch.Tensor:
    """Decode noise from a private generator: sampling audio must not move the training RNG."""
    frames = codes.shape[-1] * (2 if g.config.semantic_frame_rate == "25hz" else 1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(1, g.config.inter_channels, frames, generator=gen).to(device)


#: Upstream's inference noise scale (``get_tts_wav``'s ``vq_model.decode(..., noise_scale=0.5)``).
INFERENCE_NOISE_SCALE = 0.5


def resynthesise(g, item: SoVITSItem, reference: SoVITSItem, seed: int) -> torch.Tensor:
    """``item`` as GPT-SoVITS infers it: its own semantic tokens (the model's ``extract_latent`` of
    its HuBERT features) and phones, ``reference``'s spectrogram (and speaker vector, Pro) as the
    reference clip, upstream's noise scale, noise drawn from ``seed``. The waveform ``[samples]`` (float32)."""
    dev = g.ssl_proj.weight.device
    codes = g.extract_latent(item.ssl.float().to(dev)).transpose(0, 1)  # ssl is [1, 768, T]
    return decode_tokens(g, codes, item.text, reference.spec, reference.sv_emb, seed)


def decode_tokens(
    g, codes: torch.Tensor, phones: torch.Tensor, refer_spec: torch.Tensor, sv_emb: torch.Tensor | None, seed: int
) -> torch.Tensor:
    """Semantic tokens to audio as GPT-SoVITS's inference decodes them (``vq_model.decode``): ``codes``
    ``[1, 1, T]`` (or ``[T]``), the text's ``phones`` ``[L]``, the reference clip's spectrogram
    ``[bins, T']`` (and speaker vector ``[1, 20480]``, Pro), upstream's noise scale, noise drawn
    from ``seed``. The waveform ``[samples]`` (float32)."""
    dev = g.ssl_proj.weight.device
    codes = codes.to(dev).reshape(1, 1, -1) if codes.dim() == 1 else codes.to(dev)
    sv = sv_emb.float().to(dev) if sv_emb is not None else None
    wav = g.decode(
        codes,
        phones[None].to(dev),
        refer_spec[None].float().to(dev),
        noise_scale=INFERENCE_NOISE_SCALE,
        sv_emb=sv,
        noise=_noise_like(g, codes, dev, seed),
    )
    return wav[0, 0].float()


def inference_metrics(
    g, items: list[SoVITSItem], seed: int, sampling_rate: int, speaker: SpeakerEncoder | None = None
) -> dict[str, float]:
    """Each held-out utterance resynthesised on the inference path (:func:`resynthesise`, the
    reference from :func:`eval_pairs`, noise keyed by (seed, name)) against its real audio:
    ``mel_dist`` and ``mrstft_dist`` per utterance (``utt/<stem>/...``) and averaged, with a
    ``speaker`` model also ``spk_sim`` (cosine of the two speaker embeddings), and the composite
    ``quality`` (:func:`~gsv_ray.train.quality.sovits_quality`).

    One utterance per decode, as upstream infers: ``decode`` takes one length for its whole batch and
    the decoder's convolutions are not padding-invariant, so a padded batch would not be what a user gets.
    Non-finite output samples count as silence: a broken model ranks as badly as it sounds (a NaN
    would drop out of a ranking instead)."""
    if not items:
        return {}
    out: dict[str, float] = {}
    mels, stfts, sims = [], [], []
    for it, ref in zip(items, [items[j] for j in eval_pairs([it.name for it in items])], strict=True):
        wav = torch.nan_to_num(resynthesise(g, it, ref, keyed_seed(seed, "eval", it.name)).cpu(), 0.0, 0.0, 0.0)
        real = it.wav[0].float().cpu()
        mels.append(mel_dist(wav, real, sampling_rate))
        stfts.append(mrstft_dist(wav, real))
        stem = Path(it.name).stem
        out[f"utt/{stem}/mel_dist"], out[f"utt/{stem}/mrstft_dist"] = mels[-1], stfts[-1]
        if speaker is not None:
            sims.append(spk_sim(speaker.embed(wav, sampling_rate), speaker.embed(real, sampling_rate)))
            out[f"utt/{stem}/spk_sim"] = sims[-1]
    mean_mel = sum(mels) / len(mels)
    sim = sum(sims) / len(sims) if sims else None
    return {
        "mel_dist": mean_mel,
        "mrstft_dist": sum(stfts) / len(stfts),
        **({"spk_sim": sim} if sims else {}),
        "quality": sovits_quality(mean_mel, sim),
        **out,
    }


def uncollate_sovits(batch) -> list[SoVITSItem]:
    """The items of a collated batch, unpadded (on the batch's device)."""
    rows = zip(
        batch.ssl_lengths.tolist(),
        batch.spec_lengths.tolist(),
        batch.wav_lengths.tolist(),
        batch.text_lengths.tolist(),
        batch.names,
        batch.keys,
    )
    return [
        SoVITSItem(
            batch.ssl[i : i + 1, :, :n_ssl],
            batch.spec[i, :, :n_spec],
            batch.wav[i, :, :n_wav],
            batch.text[i, :n_text],
            None if batch.sv_emb is None else batch.sv_emb[i : i + 1],
            name,
            key,
        )
        for i, (n_ssl, n_spec, n_wav, n_text, name, key) in enumerate(rows)
    ]


def utterance_noise(batch, channels: int, *, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior's noise and the training window's position, drawn per item from a generator
    keyed by (seed, step, the item's draw key: its utterance name, ``name#k`` for copy k of a repeated
    set): the same values whichever process or batch an item lands in, so N workers train exactly
    like one process with the global batch, and two copies of an utterance draw differently."""
    eps = torch.zeros(batch.spec.shape[0], channels, batch.spec.shape[-1])
    u = torch.empty(batch.spec.shape[0])
    for i, (key, length) in enumerate(zip(item_keys(batch), batch.spec_lengths.tolist(), strict=True)):
        gen = keyed_generator(seed, step, key)
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
