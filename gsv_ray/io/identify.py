"""Tell what a GPT-SoVITS file is — kind, stage, version — from its contents alone.

Upstream guesses versions from file size and header (and gets it wrong: a small v2 export is
called "v1"). We decide from key sets and tensor shapes, then let the header tag and embedded
config narrow what the shapes allow. When header or config contradict the shapes, we keep the
shapes' answer and say so in ``warnings``: nothing is silently resolved.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from gsv_ray.io.safeload import HEADER_TAGS
from gsv_ray.resources import PRO_VERSIONS, S1_VERSIONS, S2_VERSIONS, VITS_VERSIONS

SOVITS_VERSIONS = list(S2_VERSIONS)
GPT_VERSIONS = list(S1_VERSIONS)

KINDS = (
    "sovits-export",
    "sovits-lora-export",
    "sovits-pretrained-g",
    "sovits-pretrained-d",
    "sovits-train-g",
    "sovits-train-d",
    "gpt-export",
    "gpt-lightning",
)

# Prefixes that wrappers (DDP, torch.compile) add in front of every key.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# Rows of the phoneme embedding per symbol set (tests/reference/gpt_sovits/FORMATS.md section 0).
_SOVITS_TEXT_ROWS = {322: "v1", 732: "v2"}
_GPT_TEXT_ROWS = {512: "v1", 732: "v2"}


@dataclass
class Identity:
    kind: str
    stage: str  # "sovits" | "gpt"
    versions: list[str]
    evidence: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def version(self) -> str | None:
        return self.versions[0] if len(self.versions) == 1 else None


class NotGsv(ValueError):
    """The object is not a GPT-SoVITS weights file; the message says what it looks like."""


def strip_wrapper_prefixes(keys: list[str]) -> tuple[list[str], str | None]:
    """Drop a ``module.`` / ``_orig_mod.`` prefix shared by every key (returns the prefix seen)."""
    for p in _WRAPPER_PREFIXES:
        if keys and all(k.startswith(p) for k in keys):
            stripped, rest = strip_wrapper_prefixes([k[len(p) :] for k in keys])
            return stripped, p + (rest or "")
    return keys, None


def is_tensor_mapping(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def model_stage(keys: list[str]) -> str | None:
    """ "gpt", "sovits-g", "sovits-d" or None, from key names."""
    bare = [k[len("model.") :] if k.startswith("model.") else k for k in keys]
    if any(k.startswith(("ar_text_embedding.", "ar_audio_embedding.", "ar_predict_layer.")) for k in bare):
        return "gpt"
    if any(k.startswith("discriminators.") for k in keys):
        return "sovits-d"
    if any(k.startswith(("enc_p.", "ssl_proj.", "quantizer.", "ref_enc.", "cfm.", "dec.", "wns1.")) for k in keys):
        return "sovits-g"
    return None


def _narrow(versions: list[str], claim: str | None, source: str, ident: Identity) -> list[str]:
    """Narrow shape-derived versions by a claim (header/config); record a conflict instead of obeying it."""
    if claim is None:
        return versions
    if claim in versions:
        said = f"{source} says {claim}"
        if len(versions) > 1 and not any(e.startswith(source) for e in ident.evidence):  # said once
            ident.evidence.append(said)
        return [claim]
    ident.warnings.append(
        f"{source} says {claim}, but the tensor shapes say {' or '.join(versions) or 'no known version'}; "
        "trusting the shapes"
    )
    return versions


def _config_version(config: Mapping | None) -> str | None:
    if not isinstance(config, Mapping):
        return None
    model = config.get("model")
    for v in (config.get("version"), model.get("version") if isinstance(model, Mapping) else None):
        if isinstance(v, str) and v in SOVITS_VERSIONS:
            return v
    return None


def _sovits_g_versions(sd: Mapping[str, torch.Tensor], keys: list[str], ident: Identity) -> tuple[list[str], bool]:
    """Versions the generator's shapes allow, and whether it carries LoRA matrices."""
    is_lora = any(".lora_A." in k or ".lora_B." in k for k in keys)
    if any(k.startswith(("cfm.", "bridge.", "wns1.", "linear_mel.")) for k in keys):
        ident.evidence.append("cfm/bridge/wns1 keys: SynthesizerTrnV3 (v3/v4 share every key and shape)")
        if is_lora:
            n = sum(1 for k in keys if ".lora_A." in k)
            ident.evidence.append(f"{n} LoRA A matrices on cfm")
        return ["v3", "v4"], is_lora

    candidates = list(VITS_VERSIONS)
    emb = sd.get("enc_p.text_embedding.weight")
    if emb is not None:
        rows = emb.shape[0]
        sym = _SOVITS_TEXT_ROWS.get(rows)
        if sym == "v1":
            ident.evidence.append("enc_p.text_embedding.weight has 322 rows: v1 symbol set")
            candidates = [c for c in candidates if c == "v1"]
        elif sym == "v2":
            ident.evidence.append("enc_p.text_embedding.weight has 732 rows: v2 symbol set")
            candidates = [c for c in candidates if c != "v1"]
        else:
            ident.warnings.append(f"enc_p.text_embedding.weight has {rows} rows (expected 322 or 732)")
    ref = sd.get("ref_enc.spectral.0.fc.weight")
    if ref is not None:
        cols = ref.shape[-1]
        if cols == 1025:
            ident.evidence.append("ref_enc.spectral.0.fc.weight takes 1025 bins: v1")
            allowed = ["v1"]
        elif cols == 704:
            ident.evidence.append("ref_enc.spectral.0.fc.weight takes 704 bins: v2 or later")
            allowed = ["v2", "v2Pro", "v2ProPlus"]
        else:
            ident.warnings.append(f"ref_enc.spectral.0.fc.weight takes {cols} bins (expected 1025 or 704)")
            allowed = candidates
        if not set(candidates) & set(allowed):
            ident.warnings.append("text embedding and reference encoder disagree on the version")
        candidates = [c for c in candidates if c in allowed]
    has_pro = any(k.startswith(("sv_emb.", "ge_to512.", "prelu.")) for k in keys)
    if has_pro:
        ident.evidence.append("sv_emb/ge_to512/prelu present: v2Pro family")
        candidates = [c for c in candidates if c in ("v2Pro", "v2ProPlus")]
        ups = sd.get("dec.ups.0.weight_v", sd.get("dec.ups.0.weight"))
        if ups is not None:
            k = ups.shape[-1]
            if k == 20:
                ident.evidence.append("first decoder upsample kernel is 20: v2ProPlus")
                candidates = [c for c in candidates if c == "v2ProPlus"]
            elif k == 16:
                ident.evidence.append("first decoder upsample kernel is 16: v2Pro")
                candidates = [c for c in candidates if c == "v2Pro"]
    elif candidates:
        ident.evidence.append("no sv_emb/ge_to512/prelu: not a Pro model")
        candidates = [c for c in candidates if c not in PRO_VERSIONS]
    return candidates, is_lora


def _discriminator_versions(keys: list[str], ident: Identity) -> list[str]:
    idx = {int(m.group(1)) for k in keys if (m := re.match(r"discriminators\.(\d+)\.", k))}
    n = max(idx) + 1 if idx else 0
    if n == 6:
        ident.evidence.append("6 sub-discriminators (scale + periods 2,3,5,7,11): v1 or v2")
        return [v for v in VITS_VERSIONS if v not in PRO_VERSIONS]
    if n == 8:
        ident.evidence.append("8 sub-discriminators (adds periods 17, 23): v2Pro or v2ProPlus")
        return list(PRO_VERSIONS)
    ident.warnings.append(f"{n} sub-discriminators (expected 6 or 8)")
    return []


def _gpt_versions(sd: Mapping[str, torch.Tensor], config: Mapping | None, ident: Identity) -> list[str]:
    emb = sd.get("model.ar_text_embedding.word_embeddings.weight", sd.get("ar_text_embedding.word_embeddings.weight"))
    versions = list(GPT_VERSIONS)
    if emb is not None:
        rows = emb.shape[0]
        sym = _GPT_TEXT_ROWS.get(rows)
        if sym:
            ident.evidence.append(f"ar_text_embedding has {rows} rows: {sym} phoneme vocabulary")
            versions = [sym]
        else:
            ident.warnings.append(f"ar_text_embedding has {rows} rows (expected 512 or 732)")
            versions = []
    if isinstance(config, Mapping) and isinstance(config.get("model"), Mapping):
        pv = config["model"].get("phoneme_vocab_size")
        claim = _GPT_TEXT_ROWS.get(pv) if isinstance(pv, int) else None
        if claim:
            versions = _narrow(versions, claim, f"config model.phoneme_vocab_size={pv}", ident)
    return versions


# long: one decision table from a file's layout and key shapes to the eight file kinds, read top to bottom
def identify(obj: Any, header: str = "PK") -> tuple[Identity, dict[str, torch.Tensor]]:
    """Identify a loaded top-level object. Returns the identity and the model state_dict as stored.

    Raises :class:`NotGsv` when the object is not one of the eight GPT-SoVITS file kinds.
    """
    layout: str
    if isinstance(obj, Mapping) and "state_dict" in obj and is_tensor_mapping(obj["state_dict"]):
        layout, sd = "lightning", obj["state_dict"]
    elif isinstance(obj, Mapping) and "model" in obj and is_tensor_mapping(obj["model"]):
        layout, sd = "train", obj["model"]
    elif isinstance(obj, Mapping) and "weight" in obj and is_tensor_mapping(obj["weight"]):
        layout, sd = "weight", obj["weight"]
    elif is_tensor_mapping(obj):
        layout, sd = "bare", obj
    else:
        top = list(obj.keys())[:6] if isinstance(obj, Mapping) else type(obj).__name__
        raise NotGsv(f"no GPT-SoVITS weights inside (top level: {top})")

    keys, prefix = strip_wrapper_prefixes(list(sd.keys()))
    if prefix:
        sd = {k: v for k, v in zip(keys, sd.values())}
    stage = model_stage(keys)
    if stage is None:
        raise NotGsv(f"its {len(keys)} tensors are not GPT-SoVITS model weights (first key: {keys[0]!r})")

    config = obj.get("config") if isinstance(obj, Mapping) else None
    if layout == "lightning" and isinstance(obj.get("hyper_parameters"), Mapping):
        config = obj["hyper_parameters"].get("config", config)

    ident = Identity(kind="", stage="gpt" if stage == "gpt" else "sovits", versions=[])
    if prefix:
        ident.evidence.append(f"keys carried the wrapper prefix {prefix!r} (stripped)")
    if layout == "bare":
        ident.warnings.append("a bare state_dict without GPT-SoVITS's wrapper (no weight/config/info)")
    tag_version = HEADER_TAGS.get(header) if header != "PK" else None
    if header != "PK":
        if tag_version:
            ident.evidence.append(f"header tag {header!r} = {tag_version}")
        else:
            ident.warnings.append(f"unknown header tag {header!r}")

    if stage == "gpt":
        ident.kind = "gpt-lightning" if layout == "lightning" else "gpt-export"
        if layout == "train":
            ident.warnings.append("GPT weights stored under 'model' (not a GPT-SoVITS layout)")
        if header != "PK":
            ident.warnings.append(f"GPT files are never tagged, but this one starts with {header!r}")
        ident.versions = _gpt_versions(sd, config, ident)
        return ident, dict(sd)

    if stage == "sovits-d":
        ident.kind = "sovits-train-d" if layout == "train" else "sovits-pretrained-d"
        versions = _discriminator_versions(keys, ident)
        versions = _narrow(versions, tag_version, "header tag", ident)
        ident.versions = versions
        return ident, dict(sd)

    versions, is_lora = _sovits_g_versions(sd, keys, ident)
    has_enc_q = any(k.startswith("enc_q.") for k in keys)
    v3v4 = versions == ["v3", "v4"]
    if layout == "train":
        ident.kind = "sovits-train-g"
    elif is_lora:
        ident.kind = "sovits-lora-export"
        if isinstance(obj, Mapping) and "lora_rank" not in obj:
            ident.warnings.append("LoRA weights without a top-level lora_rank")
    elif v3v4 or has_enc_q:
        ident.kind = "sovits-pretrained-g"
        if not v3v4:
            ident.evidence.append("posterior encoder enc_q present and no optimizer: a full generator")
    else:
        ident.kind = "sovits-export"
        ident.evidence.append("no enc_q keys: an inference export")
    if layout == "lightning":
        ident.warnings.append("SoVITS weights inside a Lightning checkpoint (not a GPT-SoVITS layout)")

    versions = _narrow(versions, tag_version, "header tag", ident)
    versions = _narrow(versions, _config_version(config), "config version", ident)
    if ident.kind in ("sovits-export", "sovits-lora-export") and header == "PK":
        v = versions[0] if len(versions) == 1 else None
        if v in ("v2Pro", "v2ProPlus") or is_lora:
            ident.warnings.append(
                "untagged file: GPT-SoVITS decides this version from the 2-byte header and would load it "
                "as the wrong model; re-export it with gsv-ray to add the tag"
            )
    ident.versions = versions
    return ident, dict(sd)
