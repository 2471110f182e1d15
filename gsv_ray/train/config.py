"""Training configuration: one dataclass, settable from YAML and from CLI flags (flags win)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from gsv_ray.errors import ConfigError, check_file_name, first_line, tree_problem
from gsv_ray.options import check, flag, option, split_mapping
from gsv_ray.resources import STAGES, WANDB_MODES

if TYPE_CHECKING:  # the options stay light (--help builds from them): torch only when a spec is made
    from gsv_ray.rebuild.core import RebuildSpec

#: Upstream's learning rates. SoVITS: s2.json ``train.learning_rate``. GPT: what s1_train.py really
#: trains with — its scheduler overwrites every step's LR with the constant 0.002
#: (tests/reference/gpt_sovits/FORMATS.md 5.3).
UPSTREAM_BASE_LR = {"sovits": 1e-4, "gpt": 0.002}
#: SoVITS's exponential LR decay per epoch (s2.json ``train.lr_decay``).
UPSTREAM_LR_DECAY = 0.999875
#: Resumed training's default peak: a tenth of upstream's LR.
DEFAULT_LR_SCALE = 0.1
#: After warmup: SoVITS decays per epoch as upstream; GPT with ScaledAdam keeps upstream's constant LR
#: (its 0.002 is pinned); GPT with AdamW decays to ``min_lr_ratio`` along a cosine.
DEFAULT_DECAY = {"sovits": "exponential", "gpt": "constant", "gpt-adamw": "cosine"}
PRECISIONS = ("no", "bf16", "fp16")
#: What ``--precision`` means when not given: upstream's on CUDA (SoVITS ``fp16_run``, GPT ``16-mixed``:
#: both autocast fp16 with a loss scaler), full fp32 elsewhere.
DEFAULT_PRECISION = {"cuda": "fp16"}
#: GPT optimizers: upstream's ScaledAdam (default), or AdamW. SoVITS trains with AdamW, as upstream.
OPTIMIZERS = ("scaledadam", "adamw")
DECAYS = ("exponential", "cosine", "constant")


LR, LENGTH, CHECKS, TRACK = "learning rate", "length and batches", "validation, checkpoints, exports", "tracking"


@dataclass
class TrainConfig:
    """Everything a resumed-training run needs. Peak LR = upstream base LR x ``lr_scale``. Each field
    is a flag and a YAML key at once (:mod:`gsv_ray.options`)."""

    init: str = option(help="the SoVITS .pth or GPT .ckpt to continue from", metavar="OLD")
    data: str = option(help="the GPT-SoVITS experiment folder (logs/<exp>)", metavar="DIR")
    output_dir: str = option(
        help="run directory (exports, checkpoints, metrics)", flags=("-o", "--output"), metavar="DIR"
    )
    stage: str | None = option(None, help="fail unless OLD is of this stage (default: detected)", choices=STAGES)
    base_g: str | None = option(
        None, help="same-version base generator/GPT to fill what OLD lacks", flags=("--base",), metavar="G"
    )
    base_d: str | None = option(None, help="same-version discriminator (SoVITS)", metavar="D")
    version: str | None = option(None, metavar="V", help="pin the version when the file allows several (v3/v4)")
    lora_rank: int | None = option(
        None,
        low=1,
        metavar="R",
        help="v3/v4: rank of a fresh LoRA when OLD is a base or plain model (default 32; a LoRA export keeps its own)",
    )
    # learning rate: reduced peak, linear warmup, then decay
    lr_scale: float = option(
        DEFAULT_LR_SCALE,
        low=0,
        low_open=True,
        group=LR,
        help="peak LR = upstream's base LR (SoVITS 1e-4, GPT 0.002) x this",
    )
    warmup_steps: int = option(100, low=0, group=LR, help="linear warmup length in optimizer steps")
    warmup_start: float = option(0.1, low=0, high=1, group=LR, help="warmup starts at this fraction of the peak")
    decay: str | None = option(
        None,
        choices=DECAYS,
        group=LR,
        help="after warmup (default: exponential for SoVITS and constant for GPT, as "
        "upstream; cosine for GPT with --optimizer adamw)",
    )
    lr_decay: float = option(
        UPSTREAM_LR_DECAY, low=0, low_open=True, high=1, group=LR, help="exponential decay per epoch, as upstream"
    )
    min_lr_ratio: float = option(0.1, low=0, high=1, group=LR, help="cosine floor, as a fraction of the peak")
    optimizer: str | None = option(
        None,
        choices=OPTIMIZERS,
        group=LR,
        help="GPT: scaledadam (default, upstream's: one step per 4 batches, 5 for an epoch's "
        "first, on their summed gradients) or adamw (one step per batch, weight decay "
        "0.01); SoVITS always uses AdamW, as upstream",
    )
    # length
    max_steps: int | None = option(None, low=1, group=LENGTH, help="optimizer steps to train")
    epochs: int | None = option(None, low=1, group=LENGTH, help="epochs to train (instead of --max-steps)")
    batch_size: int = option(4, low=1, group=LENGTH, help="items per process")
    grad_accum: int = option(1, low=1, group=LENGTH, help="gradient accumulation steps")
    precision: str | None = option(
        None,
        choices=PRECISIONS,
        group=LENGTH,
        help="mixed precision (default: fp16 with TF32 on CUDA, as upstream; no = fp32 on "
        "CPU); fp16 uses one loss scaler per step, as upstream",
    )
    num_workers: int | None = option(
        None,
        low=0,
        group=LENGTH,
        help="data-loading worker processes per training process (default: its CPUs "
        "minus one, at most 8; 0 loads in the training process)",
    )
    dropout: float | None = option(
        None, low=0, high=1, high_open=True, group=LENGTH, help="override every dropout rate (default: upstream's)"
    )
    seed: int = option(1234, group=LENGTH, help="seed of the weights' fresh parts, data order and draws")
    cpu: bool = option(False, group=LENGTH, help="train on CPU even if a GPU is present")
    # data split and evaluation
    val_fraction: float = option(
        0.0,
        low=0,
        high=1,
        high_open=True,
        group=CHECKS,
        help="held-out fraction of utterances (default: none, every utterance trains; tune holds out 10 %)",
    )
    val_names: str | None = option(None, metavar="FILE", group=CHECKS, help="held-out utterance names, one per line")
    val_every: int = option(50, low=1, group=CHECKS, help="steps between validations, and one at the end")
    val_batches: int = option(4, low=1, group=CHECKS, help="batches per validation")
    audio_samples: int = option(2, low=0, group=CHECKS, help="SoVITS: validation utterances rendered to audio")
    vocoder: str | None = option(
        None,
        metavar="FILE",
        group=CHECKS,
        help="v4: upstream's vocoder (pretrained_models/gsv-v4-pretrained/vocoder.pth) to "
        "render validation samples as audio (default: mel images)",
    )
    sv_model: str | None = option(
        None,
        metavar="FILE",
        group=CHECKS,
        help="SoVITS, and GPT with --eval-sovits: upstream's speaker model "
        "(pretrained_models/sv/pretrained_eres2netv2w24s4ep4.ckpt) to score validation by speaker similarity, "
        "val/spk_sim (default: not scored)",
    )
    # GPT validation through a SoVITS decoder (issue #26): generated tokens -> audio -> spk_sim / cer
    eval_sovits: str | None = option(
        None,
        metavar="FILE",
        group=CHECKS,
        help="GPT: a SoVITS export or base (v1-v2ProPlus) that decodes each held-out "
        "item's generated tokens to audio at validation, scored by val/spk_sim "
        "(with --sv-model) and val/cer (with --asr) (default: tokens only)",
    )
    asr: str | None = option(
        None,
        metavar="DIR",
        group=CHECKS,
        help="GPT with --eval-sovits: a faster-whisper (CTranslate2 Whisper) model folder that "
        "transcribes the decoded audio for val/cer, the character error rate against "
        "the text (needs the 'asr' extra: pip install 'gsv-ray[asr]')",
    )
    # v3/v4: validation on the CFM's inference path (#26)
    cfm_eval_steps: int = option(
        8,
        low=1,
        group=CHECKS,
        metavar="N",
        help="v3/v4: CFM sampling steps per held-out utterance scored on the inference path "
        "(val/mel_dist); 8 = upstream WebUI's v4 default (v3's is 32): with 4 "
        "utterances ~12 % of 50 steps + the validation on a CPU, 32 ~35 % (docs/concepts/validation.md)",
    )
    cfm_eval_utterances: int = option(
        4,
        low=0,
        group=CHECKS,
        metavar="N",
        help="v3/v4: held-out utterances scored on the inference path, one CFM "
        "sampling each (0: none, val/quality is then the CFM loss)",
    )
    # checkpoints and exports
    save_every: int = option(50, low=1, group=CHECKS, help="steps between checkpoints")
    keep_last: int = option(2, low=1, group=CHECKS, help="checkpoints kept")
    export_every_epochs: int = option(
        0, low=0, group=CHECKS, show_default=False, help="also export every E epochs (default: only at the end)"
    )
    name: str | None = option(
        None, metavar="STEM", group=CHECKS, help="export name stem (default: the run directory's name)"
    )
    restart_counters: bool = option(
        False,
        group=CHECKS,
        help="exports count epochs/steps from 0 (default: continue the init file's, e.g. "
        "xxx_e8_s200.pth + 1 epoch of 50 steps -> _e9_s250.pth; GPT-e15 -> -e16)",
    )
    resume: str | None = option(
        None,
        metavar="DIR",
        nargs="?",
        const="latest",
        group=CHECKS,
        help="continue -o's run from its newest checkpoint (DIR: latest, the default; without "
        "--workers also a checkpoint or run directory to start from); a run with no "
        "checkpoint yet starts over from step 0, a finished one is left as it is",
    )
    # tracking
    log_every: int = option(1, low=1, group=TRACK, help="steps between metric rows")
    wandb_project: str = option("gsv-ray", metavar="NAME", group=TRACK, help="W&B project")
    wandb_mode: str | None = option(
        None,
        choices=WANDB_MODES,
        group=TRACK,
        help="default: online with an API key, else offline (sync later with 'wandb sync')",
    )

    @property
    def run_name(self) -> str:
        return self.name or Path(self.output_dir).resolve().name

    def rebuild_spec(self) -> RebuildSpec:
        """What this run rebuilds: the init file with its bases, for training (one spec, every caller)."""
        from gsv_ray.rebuild.core import RebuildSpec

        return RebuildSpec(
            init=self.init,
            base_g=self.base_g,
            base_d=self.base_d,
            stage=self.stage,
            version=self.version,
            task="train",
            lora_rank=self.lora_rank,
        )

    def peak_lr(self, stage: str) -> float:
        return UPSTREAM_BASE_LR[stage] * self.lr_scale

    def optimizer_for(self, stage: str) -> str:
        """The optimizer a ``stage`` run uses: GPT ScaledAdam unless told, SoVITS AdamW."""
        return (self.optimizer or "scaledadam") if stage == "gpt" else "adamw"

    def decay_for(self, stage: str) -> str:
        if self.decay:
            return self.decay
        return DEFAULT_DECAY["gpt-adamw" if stage == "gpt" and self.optimizer_for(stage) == "adamw" else stage]

    def resolved(self, stage: str, device_type: str) -> TrainConfig:
        """This config with the defaults that depend on what is trained where written out (what
        ``config.json`` records and a ``--resume`` compares): the optimizer and the precision. A
        SoVITS run asked for ``--optimizer scaledadam``, ``--eval-sovits`` or ``--asr`` is a one-line error."""
        if stage != "gpt" and self.optimizer == "scaledadam":
            raise ConfigError(
                "--optimizer scaledadam is upstream's GPT optimizer; SoVITS trains with AdamW, as upstream",
                path=self.init,
                fix="drop --optimizer (or pass --optimizer adamw)",
            )
        if stage != "gpt" and (self.eval_sovits or self.asr):
            given = "--eval-sovits" if self.eval_sovits else "--asr"
            raise ConfigError(
                f"{given} scores a GPT's generated tokens, and this is a {stage} run",
                path=self.init,
                fix=f"drop {given} (SoVITS validation already scores its own audio)",
            )
        precision = self.precision or DEFAULT_PRECISION.get(device_type, "no")
        return dataclasses.replace(self, optimizer=self.optimizer_for(stage), precision=precision)

    def validate(self) -> None:
        """Bad values are one-line errors before anything starts (flags and YAML alike): each option's
        type, choices and range as declared, then what involves several."""
        check(self)
        if self.name is not None:
            check_file_name(self.name, "--name")
        if self.max_steps is None and self.epochs is None:
            raise ConfigError("say how long to train", fix="pass --max-steps N or --epochs N")
        if self.max_steps is not None and self.epochs is not None:
            raise ConfigError(
                f"--max-steps {self.max_steps} and --epochs {self.epochs} both say how long to train",
                fix="give one of them",
            )
        if self.asr is not None and self.eval_sovits is None:
            raise ConfigError(
                "--asr transcribes the audio that --eval-sovits decodes from the generated tokens, and "
                "no --eval-sovits was given",
                fix="add --eval-sovits FILE (a SoVITS export) or drop --asr",
            )

    def to_json(self) -> dict[str, Any]:
        """The options as recorded (``config.json``, ``run_config.json``, W&B's config): credentials
        written into a URI (``--data s3://KEY:SECRET@...``) masked."""
        from gsv_ray.masking import mask

        return {k: mask(v) if isinstance(v, str) else v for k, v in dataclasses.asdict(self).items()}

    def localised(self, cache_root: str | Path, *, data: bool = True) -> TrainConfig:
        """A copy whose ``s3://`` / ``gs://`` / ``file://`` inputs are local files (fetched once into the
        cache, reused while unchanged). ``data=False`` leaves the experiment folder as given (Ray
        workers fetch it on their own node)."""
        from gsv_ray.storage import fetch, is_uri

        def local(p: str | None) -> str | None:
            return str(fetch(p, cache_root)) if p and is_uri(p) else p

        return dataclasses.replace(
            self,
            init=local(self.init),
            base_g=local(self.base_g),
            base_d=local(self.base_d),
            vocoder=local(self.vocoder),
            sv_model=local(self.sv_model),
            eval_sovits=local(self.eval_sovits),
            data=local(self.data) if data else self.data,
        )


#: How many values (keys, items, scalars) an options file may expand to. A real one holds a few dozen;
#: YAML aliases repeat a value for free (a 1 KB file expanding to 9**9 strings reached 14 GB).
MAX_OPTIONS_VALUES = 10_000
_MAX_OPTIONS_DEPTH = 32


def _yaml_children(o: Any) -> list[Any] | None:
    if isinstance(o, dict):
        return [*o.keys(), *o.values()]
    return list(o) if isinstance(o, (list, tuple, set)) else None


def read_options_file(path: str | Path) -> dict[str, Any]:
    """A YAML options file as a mapping; unreadable or malformed files are one-line errors, and so is
    one that expands (through aliases) beyond :data:`MAX_OPTIONS_VALUES`, before anything walks it."""
    p = Path(path)
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte {e.start})", path=p, fix="save the config as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"cannot read the config: {e.strerror}", path=p, fix="check the --config path") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML ({first_line(e)})", path=p, fix="fix the YAML syntax") from None
    except RecursionError:
        raise ConfigError(
            "not a usable config: its YAML nests too deeply",
            path=p,
            fix="write the options as a flat mapping of option: value",
        ) from None
    problem = tree_problem(loaded, _yaml_children, max_nodes=MAX_OPTIONS_VALUES, max_depth=_MAX_OPTIONS_DEPTH)
    if problem is not None:
        raise ConfigError(
            f"not a usable config: {problem}",
            path=p,
            fix="write the options out plainly, without YAML aliases (*name) repeating large values",
        )
    if not isinstance(loaded, dict):
        raise ConfigError("the config must be a YAML mapping of option: value", path=p)
    return loaded


def load_config(
    yaml_path: str | Path | None = None, *, mapping: dict[str, Any] | None = None, **overrides: Any
) -> TrainConfig:
    """YAML file or an already-parsed ``mapping`` (keys = field names, dashes allowed), updated by
    ``overrides`` that are not None."""
    p = Path(yaml_path) if yaml_path is not None else Path("<config>")
    loaded = read_options_file(p) if yaml_path is not None else mapping
    (values,) = split_mapping(loaded or {}, TrainConfig, path=p)
    values.update({k: v for k, v in overrides.items() if v is not None})
    missing = [k for k in ("init", "data", "output_dir") if not values.get(k)]
    if missing:
        raise ConfigError(
            f"missing {', '.join(flag(TrainConfig, m) for m in missing)}", fix="give them as flags or in --config"
        )
    for key in (
        "init",
        "base_g",
        "base_d",
        "data",
        "output_dir",
        "val_names",
        "vocoder",
        "sv_model",
        "eval_sovits",
        "asr",
    ):  # Ray workers run elsewhere: every local path absolute
        if isinstance(values.get(key), str) and "://" not in values[key]:
            values[key] = str(Path(values[key]).expanduser().absolute())
    cfg = TrainConfig(**values)
    cfg.validate()
    if "warmup_steps" in values and cfg.max_steps is not None and cfg.warmup_steps >= cfg.max_steps:
        # asked for (the default is only warned about, in the run): the LR would never reach its peak
        raise ConfigError(
            f"--warmup-steps {cfg.warmup_steps} is not shorter than --max-steps {cfg.max_steps}: the "
            "learning rate would never reach its peak",
            fix=f"lower --warmup-steps below {cfg.max_steps} (e.g. {cfg.max_steps // 10})",
        )
    return cfg
