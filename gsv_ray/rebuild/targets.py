"""What a rebuild fills: our models for the resolved version and config, as key -> shape.

Configs come from (first found) an explicit override, the init file, the base file, or upstream's
packaged default for the version. Widths upstream hard-codes — so no config carries them — are
read off the tensors themselves (MRTE hidden, reference-encoder hidden, ``ge_to512`` width,
symbol rows, reference bins, discriminator width), so narrowed or custom models rebuild too.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gsv_ray import __version__
from gsv_ray.atomic import atomic_write
from gsv_ray.models.gpt import T2SConfig, Text2SemanticDecoder
from gsv_ray.models.sovits import MultiPeriodDiscriminator, SemanticExtractor, SoVITSConfig, SoVITSGenerator
from gsv_ray.models.sovits.v3 import SoVITSV3Config, SoVITSV3Generator
from gsv_ray.rebuild.resolved import Resolved
from gsv_ray.rebuild.schemas import shipped_shapes
from gsv_ray.resources import s1_config, s2_config

SEMANTIC_PREFIXES = ("ssl_proj.", "quantizer.")


@dataclass
class Target:
    """One model to fill: how to build it (seeded, so a fresh init is reproducible) and a
    fingerprint of its configuration (what its key/shape schema depends on)."""

    name: str  # "generator" | "discriminator" | "gpt"
    build: Callable[[], nn.Module]
    fingerprint: str

    def shapes(self, cache_root: Path | None = None) -> dict[str, torch.Size]:
        """Key -> shape in state_dict order, without allocating the model.

        Looked up first among the schemas shipped with the package (upstream's default configs,
        see :mod:`gsv_ray.rebuild.schemas`), then under ``cache_root/schemas``; only an unusual
        config is built on the meta device (once per fingerprint, then remembered there): the
        first op on a meta tensor costs ~1-2 s of lazy imports in a fresh process, and a real
        build costs the model's memory and init time; a stored schema costs neither.
        """
        shipped = shipped_shapes(self.name, self.fingerprint)
        if shipped is not None:
            return shipped
        path = None
        if cache_root is not None:
            digest = hashlib.sha256(f"{__version__}|{self.fingerprint}".encode()).hexdigest()[:24]
            path = Path(cache_root) / "schemas" / f"{self.name}-{digest}.json"
            try:
                return {k: torch.Size(v) for k, v in json.loads(path.read_text()).items()}
            except (OSError, ValueError):
                pass
        shapes = self.meta_shapes()
        if path is not None:
            data = json.dumps({k: list(v) for k, v in shapes.items()}).encode()
            atomic_write(path, lambda f: f.write(data), overwrite=True)
        return shapes

    def meta_shapes(self) -> dict[str, torch.Size]:
        """Key -> shape computed now, by building the model on the meta device (no stored schema)."""
        with torch.device("meta"):
            return {k: v.shape for k, v in self.build().state_dict().items()}


def target(name: str, build: Callable[[], nn.Module], **fingerprint: Any) -> Target:
    return Target(
        name=name, build=build, fingerprint=json.dumps({"name": name, **fingerprint}, sort_keys=True, default=str)
    )


# -- SoVITS ------------------------------------------------------------------------------------
def inferred_widths(tensors: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Hard-coded upstream widths, read off tensor shapes where the tensors are present."""
    w: dict[str, int] = {}
    if (t := tensors.get("enc_p.mrte.c_pre.weight")) is not None:
        w["mrte_hidden_channels"] = int(t.shape[0])
    if (t := tensors.get("ref_enc.spectral.0.fc.weight")) is not None:
        w["ref_hidden_channels"] = int(t.shape[0])
        w["ref_in_channels"] = int(t.shape[1])
    if (t := tensors.get("ge_to512.weight")) is not None:
        w["ge_text_channels"] = int(t.shape[0])
    if (t := tensors.get("enc_p.text_embedding.weight")) is not None:
        w["n_symbols"] = int(t.shape[0])
    return w


def sovits_s2_config(version: str, *candidates: Mapping[str, Any] | None) -> dict[str, Any]:
    """The first usable s2 config (needs a ``model`` section), with its version set."""
    for c in candidates:
        if isinstance(c, Mapping) and isinstance(c.get("model"), Mapping):
            cfg = copy.deepcopy(dict(c))
            break
    else:
        cfg = s2_config(version)
    cfg["model"] = dict(cfg["model"], version=version)
    cfg["version"] = version
    return cfg


def sovits_model_config(cfg: Mapping[str, Any], widths: Mapping[str, int]) -> SoVITSConfig:
    return SoVITSConfig.from_s2_config(dict(cfg), cfg["version"], **widths)


def generator_target(model_cfg: SoVITSConfig, seed: int) -> Target:
    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
            torch.manual_seed(seed)
            return SoVITSGenerator(model_cfg)

    return target("generator", build, model=model_config_json(model_cfg))


def semantic_target(ssl_dim: int = 768, codebook_size: int = 1024) -> Target:
    return target(
        "generator",
        lambda: SemanticExtractor(ssl_dim=ssl_dim, codebook_size=codebook_size),
        semantic=[ssl_dim, codebook_size],
    )


def discriminator_width_divisor(tensors: Mapping[str, torch.Tensor]) -> int:
    """Upstream's D is 1024 wide in its period discriminators' 4th conv; narrowed files are less."""
    t = tensors.get("discriminators.1.convs.3.weight_v", tensors.get("discriminators.1.convs.3.weight"))
    return max(1, 1024 // int(t.shape[0])) if t is not None else 1


def discriminator_target(version: str, width_divisor: int, seed: int) -> Target:
    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            return MultiPeriodDiscriminator(version, width_divisor=width_divisor)

    return target("discriminator", build, version=version, width_divisor=width_divisor)


# -- GPT ---------------------------------------------------------------------------------------
def gpt_s1_config(version: str, *candidates: Mapping[str, Any] | None) -> dict[str, Any]:
    for c in candidates:
        if isinstance(c, Mapping) and isinstance(c.get("model"), Mapping):
            return copy.deepcopy(dict(c))
    return s1_config(version)


def gpt_target(cfg: Mapping[str, Any], seed: int) -> Target:
    model_cfg = T2SConfig.from_s1_config(dict(cfg))

    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return Text2SemanticDecoder(model_cfg)

    return target("gpt", build, s1_model=dict(cfg["model"]) if "model" in cfg else dict(cfg))


# -- SoVITS v3/v4 -----------------------------------------------------------------------------
def inferred_v3_widths(tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The widths ``SynthesizerTrnV3`` hard-codes, read off the tensors present (plain key names),
    so narrowed models rebuild; ``dit`` holds the DiT's as a dict."""
    w: dict[str, Any] = {k: v for k, v in inferred_widths(tensors).items() if k != "ge_text_channels"}
    dit: dict[str, int] = {}
    blocks = {k.split(".")[3] for k in tensors if k.startswith("cfm.estimator.transformer_blocks.")}
    if (t := tensors.get("cfm.estimator.time_embed.time_mlp.0.weight")) is not None:
        dit["dim"], dit["freq_embed_dim"] = int(t.shape[0]), int(t.shape[1])
    if blocks:
        dit["depth"] = len(blocks)
    if (t := tensors.get("cfm.estimator.rotary_embed.inv_freq")) is not None:
        dit["dim_head"] = 2 * int(t.shape[0])
        if "dim" in dit:
            dit["heads"] = dit["dim"] // dit["dim_head"]
    if (t := tensors.get("cfm.estimator.transformer_blocks.0.ff.ff.0.0.weight")) is not None:
        dit["ff_mult"] = int(t.shape[0]) // int(t.shape[1])
    if (t := tensors.get("cfm.estimator.proj_out.weight")) is not None:
        dit["mel_dim"] = int(t.shape[0])
    text_blocks = {k.split(".")[4] for k in tensors if k.startswith("cfm.estimator.text_embed.text_blocks.")}
    if text_blocks:
        dit["conv_layers"] = len(text_blocks)
    if (t := tensors.get("cfm.estimator.text_embed.text_blocks.0.pwconv1.weight")) is not None:
        dit["text_dim"] = int(t.shape[1])
        dit["conv_mult"] = int(t.shape[0]) // int(t.shape[1])
    if (t := tensors.get("cfm.estimator.input_embed.conv_pos_embed.conv1d.0.weight")) is not None:
        dit["conv_pos_kernel"] = int(t.shape[2])
        dit["conv_pos_groups"] = int(t.shape[0]) // int(t.shape[1])
    if dit:
        w["dit"] = dit
    if (t := tensors.get("bridge.0.weight")) is not None:
        w["bridge_channels"] = int(t.shape[0])
    wn = {k.split(".")[3] for k in tensors if k.startswith("wns1.enc.in_layers.")}
    if wn:
        w["wns1_layers"] = len(wn)
    if (t := tensors.get("wns1.enc.in_layers.0.weight_v")) is not None:
        w["wns1_kernel_size"] = int(t.shape[2])
    if (t := tensors.get("linear_mel.weight")) is not None:
        w["mel_channels"] = int(t.shape[0])
    return w


def v3_generator_target(model_cfg: SoVITSV3Config, lora_rank: int, seed: int) -> Target:
    """The v3/v4 generator with upstream's LoRA on its CFM (the model that trains)."""

    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return SoVITSV3Generator(model_cfg).add_lora(lora_rank)

    return target("generator", build, model=model_cfg.to_json(), lora_rank=lora_rank)


def build_models(resolved: Resolved, *, dropout: float | None = None) -> dict[str, nn.Module]:
    """Our models for a rebuild's resolved configuration (:attr:`Rebuilt.resolved`), on CPU, fp32.

    ``dropout`` overrides every dropout rate (GPT: upstream's hard-coded 0.1 and the embedding
    dropout; SoVITS: ``p_dropout``); None keeps upstream's values.
    """
    if resolved.gpt is not None:
        t2s = resolved.gpt.model
        if dropout is not None:
            t2s = dataclasses.replace(t2s, fixed_dropout=dropout, embedding_dropout=dropout)
        return {"gpt": Text2SemanticDecoder(t2s)}
    if resolved.task == "semantic":
        return {"generator": SemanticExtractor()}
    if resolved.sovits_v3 is not None:
        v3 = resolved.sovits_v3.model
        if dropout is not None:
            v3 = dataclasses.replace(
                v3, p_dropout=dropout, ref_dropout=dropout, dit=dataclasses.replace(v3.dit, dropout=dropout)
            )
        return {"generator": SoVITSV3Generator(v3).add_lora(resolved.sovits_v3.lora_rank)}
    if resolved.sovits is None:
        raise ValueError(f"no model to build for a {resolved.version} rebuild for {resolved.task}")
    model_cfg = resolved.sovits.model
    if dropout is not None:
        model_cfg = dataclasses.replace(model_cfg, p_dropout=dropout, ref_dropout=dropout)
    models: dict[str, nn.Module] = {"generator": SoVITSGenerator(model_cfg)}
    d = resolved.sovits.discriminator
    if d is not None:
        models["discriminator"] = MultiPeriodDiscriminator(d.version, width_divisor=d.width_divisor)
    return models


def model_config_json(cfg: SoVITSConfig) -> dict[str, Any]:
    out = dataclasses.asdict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}
