"""GPT (stage 1): teacher-forced cross-entropy of the text-to-semantic decoder.

The loss is upstream's (cross-entropy summed over every target position, padding included, top-3
accuracy with EOS ignored). The default optimizer is upstream's too: :class:`ScaledAdam` stepping once
per 4 batches (5 for an epoch's first) on their summed gradients (:data:`UPSTREAM_GPT_CADENCE`), at
upstream's effective LR (0.002) x ``lr_scale`` under our warmup. ``--optimizer adamw`` steps on every
batch with AdamW (betas 0.9/0.95 as upstream's ScaledAdam, torch's weight decay 0.01).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from accelerate import Accelerator

from gsv_ray.data.experiment import Experiment
from gsv_ray.data.gpt import GPTBucketSampler, GPTDataset, collate_gpt
from gsv_ray.data.loader import UPSTREAM_GPT_CADENCE, MicroBatch, StepPlan
from gsv_ray.io.writers import write_gpt_export
from gsv_ray.models.dropout import utterance_dropout
from gsv_ray.models.gpt import to_upstream_keys
from gsv_ray.rebuild import Rebuilt, build_models
from gsv_ray.train.common import dropout_generators, keyed_generator, keyed_seed, prepare, read_metrics, sync_context
from gsv_ray.train.config import TrainConfig
from gsv_ray.train.gpt_audio import GeneratedAudio, utterance_stem
from gsv_ray.train.precision import Precision
from gsv_ray.train.quality import eos_rate, eval_pairs, gpt_quality, len_error, len_ratio, longest_run, repeat_rate
from gsv_ray.train.scaledadam import ScaledAdam


def export_dir_name(version: str) -> str:
    """``GPT_weights`` for v1, ``GPT_weights_<ver>`` otherwise (upstream's folders)."""
    return "GPT_weights" if version == "v1" else f"GPT_weights_{version}"


def gpt_micro_batch(items: list, mb: MicroBatch):
    """A loader item: upstream's collate, padded to the step's global lengths."""
    return collate_gpt(items, pad_to=mb.context)


class GPTRecipe:
    stage = "gpt"

    def __init__(
        self, rebuilt: Rebuilt, cfg: TrainConfig, accelerator: Accelerator, experiment: Experiment, precision: Precision
    ):
        assert rebuilt.resolved.gpt is not None, "a GPT rebuild"
        model = build_models(rebuilt.resolved, dropout=cfg.dropout)["gpt"]
        model.load_state_dict(rebuilt.gpt, strict=True)
        self._setup(model, cfg, accelerator, precision, version=rebuilt.version, s1=rebuilt.resolved.gpt.s1)
        self.experiment = experiment
        held_out = bool(cfg.val_fraction or cfg.val_names)
        validates = accelerator.is_main_process and held_out  # only the main process validates
        self.listener, self.notes = (
            GeneratedAudio.load(cfg, experiment, accelerator.device) if validates else (None, ())
        )
        if cfg.eval_sovits and not held_out:
            self.notes = (
                "validation: --eval-sovits is not used: there are no held-out utterances (pass --val-fraction "
                "or --val-names)",
            )

    @classmethod
    def for_model(
        cls, model: torch.nn.Module, cfg: TrainConfig, accelerator: Accelerator, precision: Precision
    ) -> GPTRecipe:
        """The recipe's optimizer and step around a decoder built elsewhere (no data, no exports)."""
        recipe = cls.__new__(cls)
        recipe._setup(model, cfg, accelerator, precision, version=None, s1=None)
        recipe.listener, recipe.notes = None, ()
        return recipe

    def _setup(
        self, model, cfg: TrainConfig, accelerator: Accelerator, precision: Precision, *, version: str | None, s1
    ) -> None:
        self.cfg, self.accelerator, self.version, self.precision = cfg, accelerator, version, precision
        self.s1 = s1  # embedded in the exports as upstream wrote it
        self.optimizer = cfg.optimizer_for("gpt")
        opt = make_gpt_optimizer(self.optimizer, list(model.parameters()), cfg.peak_lr("gpt"))
        (self.model,), (self.opt,) = prepare(accelerator, [model], [opt])

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
        return StepPlan(
            sampler,
            world=acc.num_processes,
            rank=acc.process_index,
            accum=n,
            context=lambda idx: (max(phones[i] for i in idx), max(semantic[i] for i in idx)),
            cadence=UPSTREAM_GPT_CADENCE if self.optimizer == "scaledadam" else None,
        )

    collate = staticmethod(collate_gpt)
    make_batch = staticmethod(gpt_micro_batch)

    def train_step(self, batches: list, step: int = 0) -> dict[str, float]:
        """One optimizer step on this process's micro-batches: one global batch (AdamW), or the
        several that upstream's cadence sums (ScaledAdam). Upstream's loss is a sum over the batch,
        so the micro-batches' sums add up to the global batches'; DDP's gradient mean is undone by
        scaling with the process count. ``loss`` is the step's summed loss, ``top3_acc`` the mean
        over its global batches."""
        acc, prec, world, n = self.accelerator, self.precision, self.accelerator.num_processes, len(batches)
        self.model.train()
        loss = acc3 = 0.0
        targets = 0
        for i, (batch, mb) in enumerate(batches):
            with sync_context(acc, self.model, i == n - 1):
                masks = dropout_generators(batch, seed=self.cfg.seed, step=step, device=acc.device)
                with utterance_dropout(self.model, masks), prec.autocast():  # masks keyed per utterance
                    out = self.model(*batch.model_inputs())
                prec.backward(out.loss * world)
            loss = loss + out.loss.detach().float()
            acc3 = acc3 + out.acc.detach().float() * (world * mb.share)
            targets += out.targets.numel()
        grad = prec.step(self.opt, self.model.parameters())
        prec.update()
        metrics = read_metrics({"loss": loss, "top3_acc": acc3 / (n / self.cfg.grad_accum), "grad_norm": grad})
        metrics["loss_per_token"] = metrics["loss"] / targets
        return metrics

    @torch.no_grad()
    def evaluate(self, batches: list, seed: int) -> dict[str, float]:
        """Teacher-forced losses and accuracies, then generation on the inference path
        (:func:`generation_metrics`), fp32."""
        model = self.accelerator.unwrap_model(self.model).eval()
        return {**gpt_eval_losses(model, batches), **generation_metrics(model, batches, seed, listener=self.listener)}

    def audio_samples(self, items: list, seed: int) -> list:
        return []  # the GPT makes tokens, not audio

    def export(self, out_dir: Path, *, name: str, epoch: int, step: int, protect=()) -> Path:
        model = self.accelerator.unwrap_model(self.model)
        path = Path(out_dir) / export_dir_name(self.version) / f"{name}-e{epoch}.ckpt"
        return write_gpt_export(
            path,
            to_upstream_keys(model.state_dict()),
            config=self.s1,
            info=f"GPT-e{epoch}",
            overwrite=True,
            protect=protect,
        )


def gpt_eval_losses(model, batches) -> dict[str, float]:
    """Cross-entropy per target token (upstream's summed loss / positions), top-3 accuracy (upstream's,
    EOS ignored) and ``top1_acc``: the share of each item's real targets (its tokens and the EOS after
    them, padding excluded) that are the arg-max of the teacher-forced logits."""
    ce = acc = 0.0
    tokens = hits = real = 0
    for b in batches:
        out = model(*b.model_inputs())
        ce += float(out.loss)
        tokens += int(out.targets.numel())
        acc += float(out.acc)
        positions = torch.arange(out.targets.shape[1], device=out.targets.device)
        counted = positions[None, :] <= b.semantic_ids_len[:, None]  # the tokens and their EOS
        hits += int(((out.logits.argmax(-1) == out.targets) & counted).sum())
        real += int(counted.sum())
    return {"loss": ce / max(1, tokens), "top3_acc": acc / max(1, len(batches)), "top1_acc": hits / max(1, real)}


#: Upstream's inference sampling defaults (``get_tts_wav``: top_k 15, top_p 1, temperature 1,
#: repetition penalty 1.35).
INFERENCE_SAMPLING = {"top_k": 15, "top_p": 1.0, "temperature": 1.0, "repetition_penalty": 1.35}
#: Seeded samples per held-out item at each validation (a cheap default: eval cost grows with it).
EVAL_SAMPLES = 1
#: Generation stops at 2 x the real token count + 25 (one second at 25 Hz): past it a sample
#: counts as not ended (``eos_rate``) and its length error saturates at log(2 + 25 / real).
CAP_MARGIN = 25


class _Text(NamedTuple):
    name: str
    phones: torch.Tensor  # [L]
    bert: torch.Tensor  # [1024, L]
    semantic: torch.Tensor  # [T]


def _uncollate_gpt(batch) -> list[_Text]:
    rows = zip(batch.names, batch.phoneme_ids_len.tolist(), batch.semantic_ids_len.tolist())
    return [
        _Text(name, batch.phoneme_ids[i, :p], batch.bert_feature[i, :, :p], batch.semantic_ids[i, :t])
        for i, (name, p, t) in enumerate(rows)
    ]


def generation_metrics(
    model, batches: list, seed: int, *, samples: int = EVAL_SAMPLES, listener: GeneratedAudio | None = None
) -> dict[str, float]:
    """Semantic tokens generated for each held-out text as upstream's inference prompts: the next
    held-out utterance in sorted name order (:func:`~gsv_ray.train.quality.eval_pairs`) gives its
    phones + BERT (before the text's) and its tokens (the prompt); upstream's sampling defaults
    (:data:`INFERENCE_SAMPLING`), ``samples`` draws per item keyed by (seed, name, k), capped at
    2 x real + :data:`CAP_MARGIN` tokens. Means over all samples of ``eos_rate``, ``len_ratio``,
    ``len_error`` (``|log len_ratio|``), ``repeat_rate``, ``longest_run`` and the composite ``quality``
    (:func:`~gsv_ray.train.quality.gpt_quality`). One item at a time: the decoder generates one sequence.

    With a ``listener`` (``--eval-sovits``) each sample is also decoded to audio with the prompt's
    utterance as the reference clip (noise keyed by (seed, name, k)) and scored: ``spk_sim`` and/or
    ``cer`` per utterance (``utt/<stem>/...``, the mean over its samples) and averaged; ``cer`` counts
    in ``quality``."""
    texts = [t for b in batches for t in _uncollate_gpt(b)]
    if not texts:
        return {}
    ended, ratios, errors, repeats, runs = [], [], [], [], []
    heard: dict[str, list[dict[str, float]]] = {}
    for text, prompt in zip(texts, [texts[j] for j in eval_pairs([t.name for t in texts])], strict=True):
        real = int(text.semantic.numel())
        cap = 2 * real + CAP_MARGIN
        phones = torch.cat([prompt.phones, text.phones])[None]
        bert = torch.cat([prompt.bert, text.bert], dim=-1)[None].float()
        for k in range(samples):
            gen = keyed_generator(seed, "eval", text.name, k, device=phones.device)
            out = model.generate(
                phones, bert, prompt.semantic[None], max_steps=cap, generator=gen, **INFERENCE_SAMPLING
            )
            new = out.tokens[0, prompt.semantic.numel() :].tolist()
            ended.append(len(new) < cap)
            ratios.append(len_ratio(len(new), real))
            errors.append(len_error(ratios[-1]))
            repeats.append(repeat_rate(new))
            runs.append(longest_run(new))
            if listener is not None:
                heard.setdefault(text.name, []).append(
                    listener.score(text.name, prompt.name, new, keyed_seed(seed, "eval-sovits", text.name, k))
                )
    n = len(ratios)
    metrics = {
        "eos_rate": eos_rate(ended),
        "len_ratio": sum(ratios) / n,
        "len_error": sum(errors) / n,
        "repeat_rate": sum(repeats) / n,
        "longest_run": sum(runs) / n,
        **_heard_metrics(heard),
    }
    return {
        **metrics,
        "quality": gpt_quality(
            metrics["len_error"], metrics["repeat_rate"], metrics["eos_rate"], cer=metrics.get("cer")
        ),
    }


def _heard_metrics(heard: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    """Per utterance (``utt/<stem>/<metric>``: the mean over its samples) and the mean over utterances."""
    out: dict[str, float] = {}
    per_metric: dict[str, list[float]] = {}
    for name, scores in heard.items():
        for key in scores[0]:  # {}: an utterance the SoVITS side could not decode
            value = sum(s[key] for s in scores) / len(scores)
            out[f"utt/{utterance_stem(name)}/{key}"] = value
            per_metric.setdefault(key, []).append(value)
    return {**{k: sum(v) / len(v) for k, v in per_metric.items()}, **out}


def make_gpt_optimizer(name: str, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """One group named ``gpt`` at ``lr`` (the schedule scales it): upstream's ScaledAdam with the
    settings its stage 1 builds it with, or AdamW with the same betas."""
    group = [{"params": params, "lr": lr, "name": "gpt"}]
    if name == "scaledadam":
        return ScaledAdam(group, lr=lr)
    return torch.optim.AdamW(group, lr=lr, betas=(0.9, 0.95), eps=1e-8)
