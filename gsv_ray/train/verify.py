"""``gsv-ray verify``: a small trial on the user's data before the real run.

Rebuild OLD, evaluate it on a few deterministic batches of the user's experiment folder (and,
optionally, take a few optimizer steps), and put the losses next to those of the base model alone.
Verdict: pass when every loss is finite and the rebuilt model is not worse than the base on the
user's data by more than ``margin`` (relative). A voice fine-tuned on this speaker should beat the
generic base; a rebuild that mixed up symbol tables or versions is far worse and fails.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gsv_ray.errors import GsvError
from gsv_ray.options import check, option
from gsv_ray.rebuild.core import RebuildSpec, Rebuilt
from gsv_ray.rebuild.resolved import Resolved
from gsv_ray.rebuild.store import rebuild_cached
from gsv_ray.rebuild.targets import build_models
from gsv_ray.train.config import DEFAULT_LR_SCALE, UPSTREAM_BASE_LR
from gsv_ray.train.loop import fixed_batches


@dataclass(frozen=True)
class VerifyOptions:
    """How big the trial is and what passes (each a flag of ``gsv-ray verify``)."""

    batches: int = option(4, low=1, help="evaluation batches")
    batch_size: int = option(4, low=1, help="items per batch")
    train_steps: int = option(0, low=0, help="optimizer steps at the reduced LR, then re-evaluate")
    margin: float = option(0.10, low=0, help="how much worse than the base (relative) still passes")
    seed: int = option(0, help="seed of the evaluation's random draws")


@dataclass
class VerifyResult:
    stage: str
    version: str | None
    rebuild_message: str
    metric: str  # the loss compared: "mel*c_mel + kl" (SoVITS) or "cross-entropy per token" (GPT)
    batches: int
    items: int
    rebuilt: dict[str, float]
    base: dict[str, float] | None
    after_training: dict[str, float] | None
    train_steps: int
    margin: float
    verdict: str = "pass"
    reasons: list[str] = field(default_factory=list)
    data_report: list[str] = field(default_factory=list)  # the experiment's problems, as `train` reports them

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _finite(d: dict[str, float] | None) -> bool:
    return d is None or all(math.isfinite(v) for v in d.values())


# -- evaluation per stage ------------------------------------------------------------------------
def _open(data: Path, stage: str, version: str, cache_root: Path | None):
    from gsv_ray.cache import default_cache_root
    from gsv_ray.data.index import open_experiment_cached

    return open_experiment_cached(data, stage, version, cache_root=cache_root or default_cache_root())


def _sovits_batches(experiment, data: Path, n_batches: int, batch_size: int, resolved: Resolved):
    from gsv_ray.data.sovits import SoVITSDataset, collate_sovits

    ds = SoVITSDataset(experiment, audio=resolved.sovits.audio)  # the model's own front-end, as training's
    if len(ds) == 0:
        raise GsvError(
            "no usable utterances for SoVITS", path=data, fix="check the data report ('gsv-ray train' prints it)"
        )
    return fixed_batches(ds, collate_sovits, n_batches, batch_size)


def _sovits_losses(model, batches, resolved: Resolved, seed: int) -> dict[str, float]:
    from gsv_ray.audio import AudioFrontend
    from gsv_ray.train.sovits import sovits_eval_losses

    st = resolved.sovits
    return sovits_eval_losses(model, batches, AudioFrontend.from_config(st.audio), st.train.c_mel, st.train.c_kl, seed)


def _sovits_train_loss(model, batch, resolved: Resolved) -> torch.Tensor:
    from gsv_ray.audio import AudioFrontend
    from gsv_ray.models.sovits.commons import slice_segments
    from gsv_ray.models.sovits.losses import kl_loss, mel_l1_loss

    st = resolved.sovits
    frontend = AudioFrontend.from_config(st.audio)
    out = model(batch.ssl, batch.spec, batch.spec_lengths, batch.text, batch.text_lengths, batch.sv_emb)
    z, z_p, m_p, logs_p, m_q, logs_q = out.stats
    y_mel = slice_segments(frontend.spec_to_mel(batch.spec), out.ids_slice, model.config.segment_frames)
    return st.train.c_mel * mel_l1_loss(y_mel, frontend.mel(out.y_hat.squeeze(1))) + st.train.c_kl * kl_loss(
        z_p, logs_q, m_p, logs_p, out.z_mask
    )


def _gpt_batches(experiment, data: Path, n_batches: int, batch_size: int, resolved: Resolved):
    from gsv_ray.data.gpt import GPTDataset, collate_gpt

    ds = GPTDataset(experiment)
    if len(ds) == 0:
        raise GsvError("no usable utterances for GPT", path=data, fix="check 6-name2semantic.tsv and 2-name2text.txt")
    return fixed_batches(ds, collate_gpt, n_batches, batch_size)


def _gpt_losses(model, batches, resolved, seed) -> dict[str, float]:
    from gsv_ray.train.gpt import gpt_eval_losses

    return gpt_eval_losses(model, batches)


def _gpt_train_loss(model, batch, resolved) -> torch.Tensor:
    out = model(*batch.model_inputs())
    return out.loss / out.targets.numel()


def _cfm_batches(experiment, data: Path, n_batches: int, batch_size: int, resolved: Resolved):
    from gsv_ray.data.cfm import CFMDataset, collate_cfm

    ds = CFMDataset(experiment, spec=resolved.sovits_v3.spec)
    if len(ds) == 0:
        raise GsvError(
            "no usable utterances for SoVITS", path=data, fix="check the data report ('gsv-ray train' prints it)"
        )
    return fixed_batches(ds, lambda items: collate_cfm(items, resolved.version), n_batches, batch_size)


def _cfm_losses(model, batches, resolved: Resolved, seed: int) -> dict[str, float]:
    from gsv_ray.train.cfm import cfm_loss

    losses = [float(cfm_loss(model, b, seed=seed, step=f"verify{i}", shortcut=False)) for i, b in enumerate(batches)]
    return {"loss": sum(losses) / max(1, len(losses))}


def _cfm_train_loss(model, batch, resolved: Resolved) -> torch.Tensor:
    from gsv_ray.train.cfm import cfm_loss

    return cfm_loss(model, batch, seed=0, step="verify0")


STAGES = {
    "sovits": (_sovits_batches, _sovits_losses, _sovits_train_loss, "loss", "mel_l1*c_mel + kl"),
    "sovits-cfm": (_cfm_batches, _cfm_losses, _cfm_train_loss, "loss", "flow-matching MSE (fixed draws)"),
    "gpt": (_gpt_batches, _gpt_losses, _gpt_train_loss, "loss", "cross-entropy per token"),
}


def _model(rebuilt) -> torch.nn.Module:
    name = "gpt" if rebuilt.stage == "gpt" else "generator"
    model = build_models(rebuilt.resolved)[name]
    model.load_state_dict(rebuilt.weights[name], strict=True)
    return model


def verify(
    init: str | Path,
    *,
    data: str | Path,
    base_g: str | Path | None = None,
    base_d: str | Path | None = None,
    stage: str | None = None,
    version: str | None = None,
    lora_rank: int | None = None,
    cache_root: str | Path | None = None,
    say: Any = lambda s: None,
    **options: Any,
) -> VerifyResult:
    """Evaluate the rebuilt OLD (and the base alone) on the user's data; see the module docstring.
    ``options`` are :class:`VerifyOptions` fields; ``say(line)`` reports progress (one line per phase)."""
    opts = VerifyOptions(**options)
    check(opts)
    batches, batch_size, seed = opts.batches, opts.batch_size, opts.seed
    say(f"rebuilding {init} ...")
    rebuilt = rebuild_cached(
        RebuildSpec(
            init=str(init),
            base_g=base_g,
            base_d=base_d,
            stage=stage,
            version=version,
            task="train",
            lora_rank=lora_rank,
        ),
        cache_root=cache_root,
    )
    make_batches = STAGES[rebuilt.resolved.family][0]
    data = Path(data)
    say(f"reading {batches} batch(es) of {batch_size} from {data} ...")
    symbols = ("v1" if rebuilt.version == "v1" else "v2") if rebuilt.stage == "gpt" else rebuilt.version
    experiment = _open(data, rebuilt.stage, symbols, Path(cache_root) if cache_root is not None else None)
    data_report = experiment.report.lines()  # the same report, the same way, as `train` prints it
    for line in data_report:
        say(f"data: {line}")
    data_batches = make_batches(experiment, data, batches, batch_size, rebuilt.resolved)
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
        torch.manual_seed(seed)
        return _evaluate(
            rebuilt,
            data_batches,
            data_report,
            base_g=base_g,
            cache_root=cache_root,
            seed=seed,
            train_steps=opts.train_steps,
            margin=opts.margin,
            say=say,
        )


def _evaluate(
    rebuilt, data_batches, data_report, *, base_g, cache_root, seed, train_steps, margin, say
) -> VerifyResult:
    _make_batches, losses, train_loss, key, metric = STAGES[rebuilt.resolved.family]
    model = _model(rebuilt).eval()
    say(f"evaluating the rebuilt {rebuilt.stage} model ...")
    with torch.no_grad():
        got = losses(model, data_batches, rebuilt.resolved, seed)

    base_losses = None
    if base_g is not None:
        base = _base_alone(rebuilt, base_g, cache_root)
        say("evaluating the base alone ...")
        with torch.no_grad():
            base_losses = losses(_model(base).eval(), data_batches, base.resolved, seed)
    after = None
    if train_steps > 0:
        trial = _trained_copy(model, rebuilt, data_batches, train_loss, train_steps, say)
        with torch.no_grad():
            after = losses(trial.eval(), data_batches, rebuilt.resolved, seed)

    result = VerifyResult(
        stage=rebuilt.stage,
        version=rebuilt.version,
        rebuild_message=rebuilt.report.message(),
        metric=metric,
        batches=len(data_batches),
        items=sum(len(getattr(b, "names", ())) for b in data_batches),
        rebuilt=got,
        data_report=data_report,
        base=base_losses,
        after_training=after,
        train_steps=train_steps,
        margin=margin,
    )
    for name, d in (("rebuilt", got), ("base", base_losses), ("after training steps", after)):
        if not _finite(d):
            result.reasons.append(f"{name} losses are not finite: {d}")
    if base_losses is not None and _finite(base_losses) and _finite(got):
        limit = base_losses[key] * (1 + margin)
        if got[key] > limit:
            result.reasons.append(
                f"rebuilt {key} {got[key]:.4g} is worse than the base's {base_losses[key]:.4g} "
                f"by more than {margin:.0%} on this data"
            )
    result.verdict = "fail" if result.reasons else "pass"
    return result


def _base_alone(rebuilt: Rebuilt, base_g: str | Path, cache_root: str | Path | None) -> Rebuilt:
    """``base_g`` rebuilt as the same model as ``rebuilt`` (a bare base checkpoint carries no config of
    its own); v3/v4: the base with a fresh (B = 0) adapter of the same rank."""
    r = rebuilt.resolved
    rank = r.sovits_v3.lora_rank if r.sovits_v3 else None
    return rebuild_cached(
        RebuildSpec(
            init=str(base_g),
            stage=rebuilt.stage,
            version=rebuilt.version,
            task="train",
            config=r.upstream,
            lora_rank=rank,
        ),
        cache_root=cache_root,
    )


def _trained_copy(
    model: torch.nn.Module,
    rebuilt: Rebuilt,
    data_batches: list[Any],
    train_loss: Callable[..., torch.Tensor],
    train_steps: int,
    say: Callable[[str], None],
) -> torch.nn.Module:
    """A copy of ``model`` after ``train_steps`` AdamW steps at the resumed-training default LR,
    cycling through ``data_batches``; ``model`` itself is left as it was."""
    trial = copy.deepcopy(model).train()
    lr = UPSTREAM_BASE_LR[rebuilt.stage] * DEFAULT_LR_SCALE  # the resumed-training default
    opt = torch.optim.AdamW([p for p in trial.parameters() if p.requires_grad], lr=lr)
    for step in range(train_steps):
        say(f"trial step {step + 1}/{train_steps} ...")
        loss = train_loss(trial, data_batches[step % len(data_batches)], rebuilt.resolved)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return trial


def render(result: VerifyResult) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t = Table(
        title=f"verify {result.stage} {result.version or ''}: {result.batches} batches, {result.items} items "
        f"({result.metric})",
        title_justify="left",
    )
    cols = list(result.rebuilt)
    t.add_column("model")
    for c in cols:
        t.add_column(c, justify="right")
    t.add_row("rebuilt", *(f"{result.rebuilt[c]:.4f}" for c in cols))
    if result.base is not None:
        t.add_row("base alone", *(f"{result.base[c]:.4f}" for c in cols))
    if result.after_training is not None:
        t.add_row(f"rebuilt + {result.train_steps} steps", *(f"{result.after_training[c]:.4f}" for c in cols))
    parts: list[Any] = [Text(result.rebuild_message, style="dim"), t]  # data lines: printed as progress
    if result.base is None:
        parts.append(Text("no --base given: only finiteness was checked", style="yellow"))
    for r in result.reasons:
        parts.append(Text(f"! {r}", style="red"))
    parts.append(
        Text(
            f"verdict: {result.verdict.upper()} (margin {result.margin:.0%})",
            style="green" if result.verdict == "pass" else "red",
        )
    )
    return Group(*parts)
