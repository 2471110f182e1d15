"""Training configuration: one dataclass, settable from YAML and from CLI flags (flags win)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from gsv_ray.errors import ConfigError, first_line

if TYPE_CHECKING:  # the options stay light (--help builds from them): torch only when a spec is made
    from gsv_ray.rebuild.core import RebuildSpec

#: Upstream's learning rates. SoVITS: s2.json ``train.learning_rate``. GPT: what s1_train.py really
#: trains with — its scheduler overwrites every step's LR with the constant 0.002 (FORMATS 5.3).
UPSTREAM_BASE_LR = {"sovits": 1e-4, "gpt": 0.002}
#: SoVITS's exponential LR decay per epoch (s2.json ``train.lr_decay``).
UPSTREAM_LR_DECAY = 0.999875
#: Resumed training's default peak: a tenth of upstream's LR.
DEFAULT_LR_SCALE = 0.1
DEFAULT_DECAY = {"sovits": "exponential", "gpt": "cosine"}
PRECISIONS = ("no", "bf16", "fp16")
DECAYS = ("exponential", "cosine", "constant")


@dataclass
class TrainConfig:
    """Everything a resumed-training run needs. Peak LR = upstream base LR x ``lr_scale``."""

    init: str
    data: str
    output_dir: str
    stage: str | None = None            # "sovits" | "gpt"; detected from the init file when None
    base_g: str | None = None
    base_d: str | None = None
    version: str | None = None
    # learning rate: reduced peak, linear warmup, then decay
    lr_scale: float = DEFAULT_LR_SCALE
    warmup_steps: int = 100
    warmup_start: float = 0.1           # warmup starts at this fraction of the peak
    decay: str | None = None            # exponential (SoVITS default) | cosine (GPT default) | constant
    lr_decay: float = UPSTREAM_LR_DECAY  # exponential decay per epoch
    min_lr_ratio: float = 0.1           # cosine floor, as a fraction of the peak
    # length
    max_steps: int | None = None
    epochs: int | None = None
    batch_size: int = 4
    grad_accum: int = 1
    precision: str = "no"               # no | bf16 | fp16 (fp16: one shared loss scaler, as upstream)
    num_workers: int | None = None      # DataLoader worker processes; None: the process's CPUs - 1, at most 8
    dropout: float | None = None        # override every dropout rate; None = upstream's
    seed: int = 1234
    # data split and evaluation
    val_fraction: float = 0.1
    val_names: str | None = None
    val_every: int = 50                 # optimizer steps between validations (and at the end)
    val_batches: int = 4
    audio_samples: int = 2              # SoVITS: validation utterances rendered to audio
    # checkpoints and exports
    save_every: int = 50
    keep_last: int = 2
    export_every_epochs: int = 0        # 0: export at the end only
    name: str | None = None             # export file name stem; default: the output folder's name
    restart_counters: bool = False      # exports count epochs/steps from 0 instead of continuing the init file's
    resume: str | None = None           # a checkpoint dir, or "latest" (newest under output_dir/checkpoints)
    # tracking
    log_every: int = 1
    wandb_project: str = "gsv-ray"
    wandb_mode: str | None = None       # online | offline | disabled; offline when no API key
    cpu: bool = False

    @property
    def run_name(self) -> str:
        return self.name or Path(self.output_dir).resolve().name

    def rebuild_spec(self) -> RebuildSpec:
        """What this run rebuilds: the init file with its bases, for training (one spec, every caller)."""
        from gsv_ray.rebuild.core import RebuildSpec

        return RebuildSpec(init=self.init, base_g=self.base_g, base_d=self.base_d, stage=self.stage,
                           version=self.version, task="train")

    def peak_lr(self, stage: str) -> float:
        return UPSTREAM_BASE_LR[stage] * self.lr_scale

    def decay_for(self, stage: str) -> str:
        return self.decay or DEFAULT_DECAY[stage]

    def validate(self) -> None:
        """Bad values are one-line errors before anything starts (flags and YAML alike)."""
        check_types(self)
        if not self.lr_scale > 0:
            raise ConfigError(f"--lr-scale must be > 0, got {self.lr_scale}", fix="use e.g. --lr-scale 0.1")
        if self.warmup_steps < 0:
            raise ConfigError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.warmup_start <= 1:
            raise ConfigError(f"warmup_start must be in [0, 1], got {self.warmup_start}")
        if self.stage not in (None, "sovits", "gpt"):
            raise ConfigError(f"--stage must be sovits or gpt, got {self.stage!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.decay not in (None, *DECAYS):
            raise ConfigError(f"decay must be one of {', '.join(DECAYS)}, got {self.decay!r}")
        if self.max_steps is None and self.epochs is None:
            raise ConfigError("say how long to train", fix="pass --max-steps N or --epochs N")
        for name in ("batch_size", "grad_accum", "save_every", "keep_last", "val_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1 or self.epochs is not None and self.epochs < 1:
            raise ConfigError("--max-steps / --epochs must be >= 1")
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(f"--num-workers must be >= 0, got {self.num_workers}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def localised(self, cache_root: str | Path, *, data: bool = True) -> TrainConfig:
        """A copy whose ``s3://`` / ``gs://`` / ``file://`` inputs are local files (fetched once into the
        cache, reused while unchanged). ``data=False`` leaves the experiment folder as given (Ray
        workers fetch it on their own node)."""
        from gsv_ray.storage import fetch, is_uri

        def local(p: str | None) -> str | None:
            return str(fetch(p, cache_root)) if p and is_uri(p) else p

        return dataclasses.replace(self, init=local(self.init), base_g=local(self.base_g), base_d=local(self.base_d),
                                   data=local(self.data) if data else self.data)


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}

_KINDS = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def check_types(cfg: Any) -> None:
    """Every field of a config dataclass holds its declared type (``int``, ``float``, ``str``,
    ``bool``, optionally ``| None``): YAML can say ``max_steps: three``, ``lr_scale: true`` or
    ``batch_size: 2.5``, and ``.inf``. Floats must be finite; a bool is not a number."""
    for f in dataclasses.fields(cfg):
        kinds = [k.strip() for k in str(f.type).split("|")]
        value = getattr(cfg, f.name)
        if value is None and "None" in kinds:
            continue
        base = next((k for k in kinds if k in _KINDS), None)
        if base is None:  # containers (extra): not user options
            continue
        flag = "--" + f.name.replace("_", "-")
        ok = isinstance(value, _KINDS[base]) and (base == "bool" or not isinstance(value, bool))
        if not ok:
            want = {"int": "a whole number", "float": "a number", "str": "a string", "bool": "true or false"}[base]
            raise ConfigError(f"{flag} must be {want}, got {value!r}", fix=f"set {f.name} to {want}")
        if base == "float" and not math.isfinite(value):
            raise ConfigError(f"{flag} must be a finite number, got {value!r}", fix=f"set {f.name} to a finite value")


def read_options_file(path: str | Path) -> dict[str, Any]:
    """A YAML options file as a mapping; unreadable or malformed files are one-line errors."""
    p = Path(path)
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte {e.start})", path=p, fix="save the config as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"cannot read the config: {e.strerror}", path=p, fix="check the --config path") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML ({first_line(e)})", path=p, fix="fix the YAML syntax") from None
    if not isinstance(loaded, dict):
        raise ConfigError("the config must be a YAML mapping of option: value", path=p)
    return loaded


def load_config(yaml_path: str | Path | None = None, *, mapping: dict[str, Any] | None = None,
                **overrides: Any) -> TrainConfig:
    """YAML file or an already-parsed ``mapping`` (keys = field names, dashes allowed), updated by
    ``overrides`` that are not None."""
    values: dict[str, Any] = {}
    p = Path(yaml_path) if yaml_path is not None else Path("<config>")
    loaded = read_options_file(p) if yaml_path is not None else mapping
    if loaded is not None:
        for k, v in loaded.items():
            key = str(k).replace("-", "_")
            if key not in FIELDS:
                raise ConfigError(f"unknown option {k!r}", path=p, fix=f"use one of: {', '.join(sorted(FIELDS))}")
            values[key] = v
    values.update({k: v for k, v in overrides.items() if v is not None})
    missing = [k for k in ("init", "data", "output_dir") if not values.get(k)]
    if missing:
        flags = {"init": "--init", "data": "--data", "output_dir": "-o"}
        raise ConfigError(f"missing {', '.join(flags[m] for m in missing)}", fix="give them as flags or in --config")
    for key in ("init", "base_g", "base_d", "data", "output_dir", "val_names"):  # Ray workers run elsewhere:
        if isinstance(values.get(key), str) and "://" not in values[key]:     # every local path absolute
            values[key] = str(Path(values[key]).expanduser().absolute())
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg
