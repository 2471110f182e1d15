"""A rebuild's resolved configuration, typed: what the models, datasets and recipes consume.

The rebuild writes it as JSON (``config.json`` in the store, :attr:`Rebuilt.config`); this is the one
place that reads that JSON. Everything downstream takes these dataclasses, never the dict. The
upstream config itself (``s2``/``s1``, as GPT-SoVITS wrote it, unknown keys included) travels
alongside, untouched, because the exports embed it for GPT-SoVITS's loaders.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gsv_ray.audio import AudioConfig
from gsv_ray.models.gpt.config import T2SConfig
from gsv_ray.models.sovits.config import SoVITSConfig, SoVITSTrainConstants
from gsv_ray.models.sovits.v3 import MEL_FRONTENDS, SoVITSV3Config


@dataclass(frozen=True)
class DiscriminatorSpec:
    """Which multi-period discriminator: its version and how much narrower than upstream's it is."""

    version: str
    width_divisor: int = 1


@dataclass(frozen=True)
class SoVITSSettings:
    """A VITS-family SoVITS model with its audio front-end and training constants."""

    model: SoVITSConfig
    audio: AudioConfig
    train: SoVITSTrainConstants
    discriminator: DiscriminatorSpec | None  # None unless rebuilt for training
    s2: Mapping[str, Any]  # upstream's s2 json, embedded in exports as is


@dataclass(frozen=True)
class SoVITSV3Settings:
    """A v3/v4 generator (CFM/DiT) with upstream's LoRA on its CFM, and what trains it."""

    model: SoVITSV3Config
    lora_rank: int
    spec: AudioConfig  # the linear spectrogram (reference encoder, lengths)
    mel: AudioConfig  # the CFM's mel target, at the version's rate
    train: SoVITSTrainConstants  # betas, eps (upstream's v3/v4 optimiser: one group)
    s2: Mapping[str, Any]


@dataclass(frozen=True)
class GPTSettings:
    model: T2SConfig
    s1: Mapping[str, Any]  # upstream's s1 config, embedded in exports as is


@dataclass(frozen=True)
class Resolved:
    """What a rebuild resolved: the stage, version and task, and the typed settings of its model
    (``sovits`` for a VITS-family generator, ``sovits_v3`` for a v3/v4 one trained with LoRA, ``gpt``
    for the GPT; none for semantic extraction,
    whose model has fixed widths, or v3/v4 inference, which builds no model)."""

    stage: str
    version: str | None
    task: str
    sovits: SoVITSSettings | None = None
    sovits_v3: SoVITSV3Settings | None = None
    gpt: GPTSettings | None = None

    @property
    def family(self) -> str:
        """How the model trains: ``gpt``, ``sovits`` (the GAN step) or ``sovits-cfm`` (v3/v4: the CFM
        loss with LoRA). Recipes and verify's evaluations are keyed by it."""
        return "sovits-cfm" if self.sovits_v3 is not None else self.stage

    @property
    def upstream(self) -> Mapping[str, Any] | None:
        """The upstream config the model was built from (``s1`` / ``s2``), as GPT-SoVITS wrote it."""
        settings = self.gpt or self.sovits_v3 or self.sovits
        if settings is None:
            return None
        return settings.s1 if isinstance(settings, GPTSettings) else settings.s2

    @classmethod
    def from_json(cls, config: Mapping[str, Any]) -> Resolved:
        """From the JSON the rebuild stored (the store boundary)."""
        stage, task = config["stage"], config["task"]
        common = {"stage": stage, "version": config.get("version"), "task": task}
        if stage == "gpt":
            return cls(**common, gpt=GPTSettings(model=T2SConfig.from_s1_config(config["s1"]), s1=config["s1"]))
        if "model_v3" in config:
            s2 = config["s2"]
            model = SoVITSV3Config.from_json(config["model_v3"])
            return cls(
                **common,
                sovits_v3=SoVITSV3Settings(
                    model=model,
                    lora_rank=int(config["lora_rank"]),
                    spec=AudioConfig.from_s2_data(s2["data"]),
                    mel=MEL_FRONTENDS[model.version],
                    train=SoVITSTrainConstants.from_s2(s2),
                    s2=s2,
                ),
            )
        if "model" not in config or "s2" not in config:  # semantic extraction, v3/v4 inference
            return cls(**common)
        s2 = config["s2"]
        d = config.get("discriminator")
        return cls(
            **common,
            sovits=SoVITSSettings(
                model=SoVITSConfig(**config["model"]),
                audio=AudioConfig.from_s2_data(s2["data"]),
                train=SoVITSTrainConstants.from_s2(s2),
                discriminator=DiscriminatorSpec(d["version"], int(d["width_divisor"])) if d else None,
                s2=s2,
            ),
        )
