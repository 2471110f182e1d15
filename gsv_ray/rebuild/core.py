"""``rebuild()``: from any GPT-SoVITS weights file to complete, training-ready fp32 state dicts.

Load (safely) -> identify -> check that init, base and version agree -> normalise keys -> match
every target key to exactly one source (init first, then base) with equal shapes -> fill the rest
only where a declared policy allows fresh init -> report every key's fate, judged for the task.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gsv_ray.cache import default_cache_root
from gsv_ray.errors import GsvError
from gsv_ray.io import GsvFile, read
from gsv_ray.io.reader import check_finite
from gsv_ray.models.sovits.v3 import DEFAULT_LORA_RANK, SoVITSV3Config
from gsv_ray.rebuild import targets as T
from gsv_ray.rebuild.report import (
    ERROR,
    FILLED_FROM_BASE,
    INITIALISED,
    LOADED,
    KeyFate,
    RebuildReport,
    module_prefix,
)
from gsv_ray.rebuild.resolved import Resolved
from gsv_ray.rebuild.sources import PEFT_CFM, Source, as_fp32, cast_fp32, lora_delta, normalise, peft_view
from gsv_ray.resources import PRETRAINED_SOVITS, VITS_VERSIONS

TASKS = ("train", "semantic", "infer")
BASE_NAMES = PRETRAINED_SOVITS  # upstream's pretrained base G per version (for fix hints)

_WHY_UNUSED_FOR_SEMANTIC = {
    "enc_q": "posterior encoder: only used by training, never by semantic extraction",
    "dec": "HiFi-GAN decoder: synthesises audio; semantic extraction runs only ssl_proj + quantizer",
    "flow": "normalising flow: synthesis only; semantic extraction runs only ssl_proj + quantizer",
    "enc_p": "text encoder: synthesis only; semantic extraction runs only ssl_proj + quantizer",
    "ref_enc": "reference encoder: synthesis only; semantic extraction runs only ssl_proj + quantizer",
}


@dataclass(frozen=True)
class RebuildPolicy:
    """What a rebuild may fill by itself. Everything else missing or mis-shaped is an error.

    ``init_missing``: generator key prefixes that may start from a fresh init when neither the init
    file nor ``base_g`` has them (default: the posterior encoder, which every export drops).
    ``fresh_discriminator``: build a fresh D when no ``base_d`` is given (exports carry none).
    ``seed``: seeds the fresh init, so the same inputs always give the same bytes.
    """

    init_missing: tuple[str, ...] = ("enc_q.",)
    fresh_discriminator: bool = True
    seed: int = 1234

    def to_json(self) -> dict[str, Any]:
        return {
            "init_missing": list(self.init_missing),
            "fresh_discriminator": self.fresh_discriminator,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class RebuildSpec:
    """One rebuild's inputs and options: what :func:`rebuild` takes, and what the store's cache key
    is made of (the inputs by content, the options by value). Build it once where the request is
    made (``TrainConfig.rebuild_spec()``, the CLI) and hand it on."""

    init: str
    base_g: str | None = None
    base_d: str | None = None
    stage: str | None = None
    version: str | None = None
    task: str = "train"
    lora_rank: int | None = None  # v3/v4 training: rank of a fresh LoRA (a LoRA export has its own)
    policy: RebuildPolicy = RebuildPolicy()
    config: Mapping[str, Any] | None = field(default=None, hash=False)  # overrides the file's embedded config

    def __post_init__(self) -> None:
        for name in ("init", "base_g", "base_d"):  # paths as given (str), whatever the caller held
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, str(value))
        if self.task not in TASKS:
            raise GsvError(f"unknown task {self.task!r}", fix=f"use one of {', '.join(TASKS)}")

    @classmethod
    def of(cls, init: RebuildSpec | str | Path, **options: Any) -> RebuildSpec:
        """``init`` itself when it is a spec (then no options), else a spec of ``init`` and ``options``."""
        if isinstance(init, RebuildSpec):
            if options:
                raise TypeError(f"options {sorted(options)} given with a RebuildSpec: put them in the spec")
            return init
        return cls(init=str(init), **options)

    def inputs(self) -> dict[str, str | None]:
        """The input files by role (``init``, ``base_g``, ``base_d``)."""
        return {"init": self.init, "base_g": self.base_g, "base_d": self.base_d}

    def options_json(self) -> dict[str, Any]:
        """Everything but the input files, as JSON (the options half of the cache key)."""
        return {
            "stage": self.stage,
            "version": self.version,
            "task": self.task,
            "lora_rank": self.lora_rank,
            "policy": self.policy.to_json(),
            "config": None if self.config is None else json.loads(json.dumps(self.config)),
        }


@dataclass
class Rebuilt:
    """The result: fp32 state dicts per target model, the resolved config, and the report."""

    stage: str
    version: str | None
    task: str
    kind: str  # kind of the init file
    weights: dict[str, dict[str, torch.Tensor]]  # "generator" / "discriminator" / "gpt" -> state dict
    config: dict[str, Any]
    report: RebuildReport
    path: Path | None = None
    cache_hit: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def resolved(self) -> Resolved:
        """:attr:`config`, typed: what models, datasets and recipes take."""
        return Resolved.from_json(self.config)

    @property
    def generator(self) -> dict[str, torch.Tensor] | None:
        return self.weights.get("generator")

    @property
    def discriminator(self) -> dict[str, torch.Tensor] | None:
        return self.weights.get("discriminator")

    @property
    def gpt(self) -> dict[str, torch.Tensor] | None:
        return self.weights.get("gpt")


def _input_facts(f: GsvFile) -> dict[str, Any]:
    return {"path": str(f.path), "kind": f.kind, "versions": f.versions, "header": f.header, "info": f.info}


_STAGE = {"sovits": "SoVITS (stage 2)", "gpt": "GPT (stage 1)"}
GPT_BASE_NAMES = {
    "v1": "s1bert25hz-2kh-longer-epoch=68e-step=50232.ckpt",
    "v2": "gsv-v2final-pretrained/s1bert25hz-5kh-longer-epoch=12-step=369668.ckpt, or s1v3.ckpt",
}


def _what(flag: str, f: GsvFile) -> str:
    """``OLD /x/a.pth (SoVITS (stage 2) v2 export)``: a file and what it is, for conflict messages."""
    return f"{flag} {f.path} ({_STAGE[f.stage]} {'/'.join(f.versions) or '?'} {f.kind})"


def _conflict(files: list[tuple[str, GsvFile]], change: GsvFile, fix: str) -> GsvError:
    """One line naming every input involved in a conflict, and which one to change."""
    return GsvError(
        "these inputs do not fit together: " + "; ".join(_what(flag, f) for flag, f in files), path=change.path, fix=fix
    )


def _base_name(stage: str, version: str) -> str:
    names = GPT_BASE_NAMES if stage == "gpt" else BASE_NAMES
    return names.get(version, "the pretrained base of that version")


def _check_stages(init: GsvFile, base_g: GsvFile | None, base_d: GsvFile | None) -> None:
    """Every base is of the init file's stage (a discriminator: SoVITS), else one line naming them all."""
    files = [("OLD", init)] + ([("--base", base_g)] if base_g else []) + ([("--base-d", base_d)] if base_d else [])
    if base_g is not None and base_g.stage != init.stage:
        v = init.versions[0] if init.versions else "v2"
        raise _conflict(
            files,
            base_g,
            f"change --base to the {_STAGE[init.stage]} base of {v} "
            f"(GPT-SoVITS: {_base_name(init.stage, v)})"
            + (", or drop it (a GPT file is complete)" if init.stage == "gpt" else ""),
        )
    if base_d is not None and base_d.stage != "sovits":
        raise _conflict(
            files,
            base_d,
            "change --base-d to a SoVITS discriminator (s2D*.pth / D_*.pth)"
            + (", or drop it: a GPT has no discriminator" if init.stage == "gpt" else ""),
        )


def _resolve_version(init: GsvFile, version: str | None, base_g: GsvFile | None, base_d: GsvFile | None) -> list[str]:
    cand = list(init.versions)
    if not cand:
        raise GsvError(
            "its tensors fit no known GPT-SoVITS version", path=init.path, fix="check the file with 'gsv-ray inspect'"
        )
    if version is not None:
        if version not in cand:
            raise GsvError(
                f"--version {version} does not fit this file (its shapes say {' or '.join(cand)})",
                path=init.path,
                fix=f"drop --version or pass {cand[0]}",
            )
        cand = [version]
    if base_g is not None:
        if base_g.kind in ("sovits-pretrained-d", "sovits-train-d"):
            raise GsvError(
                "--base must be a generator, but this is a discriminator",
                path=base_g.path,
                fix="pass it with --base-d instead",
            )
        both = [v for v in cand if v in base_g.versions]
        if not both:  # a base of another version cannot fill the init file
            raise _conflict(
                [("OLD", init), ("--base", base_g)],
                base_g,
                f"change --base to the {cand[0]} base (GPT-SoVITS: {_base_name(init.stage, cand[0])})"
                + (f", or --version if OLD is not {'/'.join(cand)}" if version else ""),
            )
        cand = both
    if base_d is not None:
        if base_d.kind not in ("sovits-pretrained-d", "sovits-train-d"):
            raise GsvError(
                f"--base-d must be a discriminator, but this is a {base_d.kind}",
                path=base_d.path,
                fix="pass the s2D*.pth / D_*.pth file (or drop --base-d for a fresh D)",
            )
        both = [v for v in cand if v in base_d.versions]
        if not both:
            files = [("OLD", init)] + ([("--base", base_g)] if base_g else []) + [("--base-d", base_d)]
            raise _conflict(files, base_d, f"change --base-d to the {'/'.join(cand)} discriminator (s2D*.pth)")
        cand = both
    return cand


def _fill(
    tgt: T.Target,
    sources: list[tuple[str, Source]],
    report: RebuildReport,
    may_init: dict[str, str],
    used: dict[str, set[str]],
    cache_root: Path | None,
) -> dict[str, torch.Tensor]:
    """Give every target key one fate. ``may_init``: key prefix -> reason a fresh init is allowed.

    Only keys that start fresh need a real (seeded) model; everything else is the source tensor
    cast to fp32 (no copy when it already is: mmapped inputs are private copy-on-write maps).
    """
    fates: dict[str, KeyFate] = {}
    out: dict[str, torch.Tensor] = {}
    fresh_keys: list[str] = []
    shapes = tgt.shapes(cache_root)
    for key, shape in shapes.items():
        for role, src in sources:
            t = src.tensors.get(key)
            if t is None:
                continue
            if t.shape != shape:
                fates[key] = KeyFate(
                    ERROR,
                    src.path,
                    f"shape {list(t.shape)} in {Path(src.path).name}, but the "
                    f"{report.version} model needs {list(shape)}",
                )
            else:
                out[key] = as_fp32(t)
                used[src.path].add(key)
                fates[key] = KeyFate(
                    LOADED if role == "init" else FILLED_FROM_BASE,
                    src.path,
                    "" if role == "init" else f"not in the init file; taken from --{role}",
                )
            break
        else:
            reason = next((why for p, why in may_init.items() if key.startswith(p)), None)
            if reason is not None:
                fates[key] = KeyFate(INITIALISED, None, reason)
                fresh_keys.append(key)
            else:
                names = " or ".join(Path(s.path).name for _, s in sources)
                fates[key] = KeyFate(ERROR, None, f"missing from {names}")
    report.targets[tgt.name] = fates
    if fresh_keys and not any(f.fate == ERROR for f in fates.values()):
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
            fresh = tgt.build().state_dict()
        for k in fresh_keys:
            out[k] = fresh[k].to(torch.float32)
    return {k: out[k] for k in shapes if k in out}


def _record_dropped(
    report: RebuildReport, sources: list[tuple[str, Source]], used: dict[str, set[str]], why_unused
) -> None:
    for role, src in sources:
        dropped = {}
        for name, stored in src.origin.items():
            if name not in used[src.path]:
                dropped[stored] = why_unused(role, name)
        for module, (ka, kb) in src.lora_origin.items():
            if module not in used[src.path]:
                dropped[ka] = dropped[kb] = why_unused(role, module + ".lora")
        if dropped:
            report.dropped.setdefault(src.path, {}).update(dropped)


def _read_inputs(
    init: str | Path, base_g: str | Path | None, base_d: str | Path | None, stage: str | None, task: str
) -> tuple[GsvFile, GsvFile | None, GsvFile | None]:
    """The init file and the bases, read safely and checked to fit together (a generator to rebuild,
    finite weights, stages that agree, no discriminator for GPT, no GPT file for semantic extraction)."""
    init_f = read(init, expect_stage=stage)
    if init_f.kind in ("sovits-pretrained-d", "sovits-train-d"):
        raise GsvError(
            "this is a discriminator; the file to rebuild must be a generator",
            path=init_f.path,
            fix="pass the SoVITS generator as OLD and this file as --base-d",
        )
    base_g_f = read(base_g) if base_g else None
    base_d_f = read(base_d) if base_d else None
    for f, role in ((init_f, "it"), (base_g_f, "this base"), (base_d_f, "this discriminator")):
        if f is not None:
            check_finite(f, role)  # before anything is cached: a refused input never reaches the store
    _check_stages(init_f, base_g_f, base_d_f)
    if init_f.stage == "gpt" and base_d_f is not None:
        raise GsvError("--base-d is for SoVITS; GPT has no discriminator", path=base_d_f.path, fix="drop --base-d")
    if init_f.stage == "gpt" and task == "semantic":
        raise GsvError(
            "semantic extraction needs a SoVITS model, but this is a GPT file",
            path=init_f.path,
            fix="pass the SoVITS .pth (or its base) for --task semantic",
        )
    return init_f, base_g_f, base_d_f


def _new_report(
    init_f: GsvFile, base_g_f: GsvFile | None, base_d_f: GsvFile | None, *, version: str, task: str
) -> RebuildReport:
    """The report of a rebuild before any key's fate: its inputs' facts and the notes on the init file."""
    report = RebuildReport(version=version, stage=init_f.stage, task=task)
    report.inputs["init"] = _input_facts(init_f)
    if base_g_f:
        report.inputs["base_g"] = _input_facts(base_g_f)
    if base_d_f:
        report.inputs["base_d"] = _input_facts(base_d_f)
    if "optimizer" in init_f.extra or "optimizer_states" in init_f.extra:
        report.notes.append(
            "the init file's optimizer state is not used: resumed training starts a fresh "
            "optimizer at the reduced learning rate"
        )
    return report


def rebuild(spec: RebuildSpec | str | Path, *, cache_root: str | Path | None = None, **options: Any) -> Rebuilt:
    """Rebuild complete fp32 weights from ``spec.init`` (any GPT-SoVITS file), judged for ``spec.task``.

    ``spec``: a :class:`RebuildSpec`, or the init path with the spec's other fields as keywords.
    Raises :class:`GsvError` when the inputs do not fit together or the report's verdict is error
    (the report is attached as ``err.report``). ``config`` overrides the file's embedded config.
    ``cache_root`` (default: the gsv-ray cache) only remembers model key/shape schemas here.
    Returned tensors may alias memory-mapped inputs (copy-on-write): copy, never mutate in place.
    """
    spec = RebuildSpec.of(spec, **options)
    init, base_g, base_d, stage, version = spec.init, spec.base_g, spec.base_d, spec.stage, spec.version
    task, config = spec.task, (dict(spec.config) if spec.config is not None else None)
    cache = Path(cache_root) if cache_root is not None else default_cache_root()
    init_f, base_g_f, base_d_f = _read_inputs(init, base_g, base_d, stage, task)
    stage = init_f.stage
    versions = _resolve_version(init_f, version, base_g_f, base_d_f)
    resolved = versions[0] if len(versions) == 1 else None
    report = _new_report(init_f, base_g_f, base_d_f, version=resolved or "/".join(versions), task=task)

    sources = [("init", normalise(str(init_f.path), init_f.state_dict, stage=stage))]
    if base_g_f:
        sources.append(("base", normalise(str(base_g_f.path), base_g_f.state_dict, stage=stage)))
    used: dict[str, set[str]] = {s.path: set() for _, s in sources}
    weights: dict[str, dict[str, torch.Tensor]] = {}
    out = _Fill(sources, used, report, weights, cache)
    resolved_cfg = _fill_targets(spec, config, (init_f, base_g_f, base_d_f), versions, resolved, out)
    resolved_cfg = json.loads(json.dumps(resolved_cfg))  # plain JSON types, exactly as config.json stores it
    report.config = resolved_cfg
    if not report.ok:
        err = GsvError(report.message(), path=init_f.path, fix=_fix_hint(report, init_f, versions))
        err.report = report  # type: ignore[attr-defined]
        raise err
    return Rebuilt(
        stage=stage, version=resolved, task=task, kind=init_f.kind, weights=weights, config=resolved_cfg, report=report
    )


@dataclass(frozen=True)
class _Fill:
    """Where the target builders put their results: the sources they read (and which keys of each they
    used), the report, the built weights per model, and the cache of converted tensors."""

    sources: list[tuple[str, Source]]
    used: dict[str, set[str]]
    report: RebuildReport
    weights: dict[str, dict[str, torch.Tensor]]
    cache: Path


def _fill_targets(
    spec: RebuildSpec,
    config: dict[str, Any] | None,
    files: tuple[GsvFile, GsvFile | None, GsvFile | None],
    versions: list[str],
    resolved: str | None,
    out: _Fill,
) -> dict[str, Any]:
    """Fill ``weights`` with the targets of the init file's stage and ``spec.task`` (GPT; the semantic
    front end; v3/v4 for training or inference; VITS-family v1/v2/v2Pro) and return the resolved
    config; ``files`` are the read init, base G and base D."""
    init_f, base_g_f, base_d_f = files
    stage, task, policy = init_f.stage, spec.task, spec.policy
    if stage == "gpt":
        return _gpt(init_f, base_g_f, versions, resolved, task, policy, config, out)
    if task == "semantic":
        return _semantic(init_f, versions, out)
    if versions[0] in ("v3", "v4"):
        if task == "train":
            return _v3v4_train(init_f, base_g_f, base_d_f, versions, spec.lora_rank, policy, config, out)
        return _v3v4_infer(init_f, base_g_f, versions, out)
    return _vits(init_f, base_g_f, base_d_f, resolved or versions[0], task, policy, config, out)


def _gpt(init_f, base_g_f, versions, resolved, task, policy, config, out):
    """The GPT (s1) model: everything else in the files is dropped, said why."""
    sources, used, report, weights, cache = out.sources, out.used, out.report, out.weights, out.cache
    cfg = T.gpt_s1_config(versions[0], config, init_f.config, base_g_f.config if base_g_f else None)
    weights["gpt"] = _fill(T.gpt_target(cfg, policy.seed), sources, report, {}, used, cache)
    _record_dropped(
        report,
        sources,
        used,
        lambda role, k: "superseded by the init file" if role == "base" else "not part of the GPT model",
    )
    return {"stage": "gpt", "version": resolved, "task": task, "s1": cfg}


def _fix_hint(report: RebuildReport, init_f: GsvFile, versions: list[str]) -> str:
    errs = [(k, f) for t in report.targets.values() for k, f in t.items() if f.fate == ERROR]
    if errs and "shape" in errs[0][1].reason:
        return "the file's version or widths do not match; check it with 'gsv-ray inspect' and pass the matching --base"
    base = BASE_NAMES.get(versions[0], "the base model of the same version")
    return f"pass the {versions[0]} base model with --base (GPT-SoVITS: {base}) to fill the missing keys"


def _vits(init_f, base_g_f, base_d_f, version, task, policy, config, out):
    sources, used, report, weights, cache = out.sources, out.used, out.report, out.weights, out.cache
    cfg = T.sovits_s2_config(version, config, init_f.config, base_g_f.config if base_g_f else None)
    widths: dict[str, int] = {}
    for _, src in reversed(sources):  # init's shapes win over the base's
        widths.update(T.inferred_widths(src.tensors))
    model_cfg = T.sovits_model_config(cfg, widths)
    may_init = {p: _init_reason(p, version) for p in policy.init_missing}
    if task == "infer":  # inference never runs the posterior encoder
        may_init.setdefault("enc_q.", "posterior encoder: not used at inference; freshly initialised")
    weights["generator"] = _fill(T.generator_target(model_cfg, policy.seed), sources, report, may_init, used, cache)
    _record_dropped(
        report,
        sources,
        used,
        lambda role, k: "superseded by the init file" if role == "base" else f"not part of the {version} generator",
    )
    if any(f.fate == INITIALISED and k.startswith("enc_q.") for k, f in report.targets["generator"].items()):
        report.notes.append(
            "enc_q (posterior encoder) starts from scratch: expect a higher KL/mel loss for the "
            "first steps; keep a warmup, or pass --base to start it from the pretrained one"
        )
    resolved: dict[str, Any] = {
        "stage": "sovits",
        "version": version,
        "task": task,
        "s2": cfg,
        "widths": widths,
        "model": T.model_config_json(model_cfg),
    }
    if task == "train":
        d_sources = [("base-d", normalise(str(base_d_f.path), base_d_f.state_dict, stage="sovits"))] if base_d_f else []
        divisor = T.discriminator_width_divisor(d_sources[0][1].tensors) if d_sources else 1
        d_may = (
            {"": "no discriminator given (exports carry none): fresh init; pass --base-d for the pretrained D"}
            if policy.fresh_discriminator and not d_sources
            else {}
        )
        for _, s in d_sources:
            used[s.path] = set()
        weights["discriminator"] = _fill(
            T.discriminator_target(version, divisor, policy.seed), d_sources, report, d_may, used, cache
        )
        _record_dropped(report, d_sources, used, lambda role, k: "not part of the discriminator")
        if not d_sources:
            report.notes.append(
                "the discriminator starts from scratch: its first updates are noise to the "
                "generator, so keep the learning-rate warmup (on by default)"
            )
        resolved["discriminator"] = {"version": version, "width_divisor": divisor}
    q = weights["generator"].get("quantizer.vq.layers.0._codebook.inited")
    if q is not None and not bool(q.item()):
        report.notes.append("the codebook is not initialised (inited = 0): k-means will run on the first batch")
    return resolved


def _init_reason(prefix: str, version: str) -> str:
    if prefix == "enc_q.":
        return (
            f"posterior encoder is training-only and exports drop it: fresh init (pass --base with the "
            f"{version} base G to start from the pretrained one)"
        )
    return f"allowed by policy (init_missing={prefix!r}): fresh init"


def _semantic(init_f, versions, out):
    """Only ``ssl_proj`` + ``quantizer`` matter; everything else missing is harmless, said why."""
    sources, used, report, weights, cache = out.sources, out.used, out.report, out.weights, out.cache
    weights["generator"] = _fill(T.semantic_target(), sources, report, {}, used, cache)
    family = "v2" if versions[0] in ("v3", "v4") else versions[0]
    present = set().union(*(s.tensors.keys() for _, s in sources))
    widths = T.inferred_widths(sources[0][1].tensors) if versions[0] in VITS_VERSIONS else {}
    try:
        full = T.generator_target(
            T.sovits_model_config(
                T.sovits_s2_config(family, init_f.config if versions[0] in VITS_VERSIONS else None), widths
            ),
            0,
        )
        report.harmless["generator"] = {
            k: _WHY_UNUSED_FOR_SEMANTIC.get(
                module_prefix(k), "not used by semantic extraction (only ssl_proj + quantizer run)"
            )
            for k in full.shapes(cache)
            if k not in present and not k.startswith(T.SEMANTIC_PREFIXES)
        }
    except (ValueError, TypeError):
        pass  # the reference model cannot be built from this config: nothing to compare against
    _record_dropped(
        report,
        sources,
        used,
        lambda role, k: (
            "superseded by the init file"
            if role == "base" and k.startswith(T.SEMANTIC_PREFIXES)
            else "not used by semantic extraction (only ssl_proj + quantizer)"
        ),
    )
    q = weights["generator"].get("quantizer.vq.layers.0._codebook.inited")
    if q is not None and not bool(q.item()):
        report.errors.append("the codebook is not initialised (inited = 0): its tokens would match no GPT model")
    if versions[0] in ("v3", "v4") and any(
        k.startswith("ssl_proj") and f.fate == ERROR for k, f in report.targets["generator"].items()
    ):
        report.errors.insert(0, "a v3/v4 LoRA export has no ssl_proj; its base model carries it")
    return {"stage": "sovits", "version": "/".join(versions), "task": "semantic"}


def _lora_rank(init_f: GsvFile, src: Source) -> int | None:
    """A LoRA export's rank: its ``lora_rank``, else the rows of its A matrices (None: no LoRA)."""
    if init_f.lora_rank:
        return init_f.lora_rank
    return int(next(iter(src.lora.values()))[0].shape[0]) if src.lora else None


def _v3v4_train(init_f, base_g_f, base_d_f, versions, lora_rank, policy, config, out):
    """The v3/v4 generator with upstream's LoRA on its CFM, for training. From a LoRA export + its
    base (the adapters and the trained parts loaded, the rest from the base), from a base or a plain
    export alone (a fresh, seeded LoRA: ``B = 0``, so it starts as the file's model)."""
    sources, used, report, weights, cache = out.sources, out.used, out.report, out.weights, out.cache
    if len(versions) > 1:
        raise GsvError(
            "v3 and v4 generators have the same shapes and this file does not say which it is",
            path=init_f.path,
            fix="pass --version v3 or --version v4",
        )
    version = versions[0]
    if base_d_f is not None:
        raise GsvError(
            f"{version} trains no discriminator (the CFM loss only)", path=base_d_f.path, fix="drop --base-d"
        )
    init_src = sources[0][1]
    if init_src.lora and base_g_f is None:
        raise GsvError(
            "a LoRA export holds only the trained parts; it needs its base model",
            path=init_f.path,
            fix=f"pass --base {BASE_NAMES[version]} (the {version} base G)",
        )
    file_rank = _lora_rank(init_f, init_src)
    if file_rank is not None and lora_rank is not None and lora_rank != file_rank:
        raise GsvError(
            f"--lora-rank {lora_rank}, but this LoRA export has rank {file_rank}",
            path=init_f.path,
            fix="drop --lora-rank (a LoRA export continues with its own rank)",
        )
    rank = file_rank or lora_rank or DEFAULT_LORA_RANK
    cfg = T.sovits_s2_config(version, config, init_f.config, base_g_f.config if base_g_f else None)
    widths: dict[str, Any] = {}
    for _, src in reversed(sources):  # init's shapes win over the base's
        found = T.inferred_v3_widths(src.tensors)
        widths.update({**found, "dit": {**widths.get("dit", {}), **found.get("dit", {})}})
    model_cfg = SoVITSV3Config.from_s2_config(cfg, version, **widths)
    tgt = T.v3_generator_target(model_cfg, rank, policy.seed)
    shapes = tgt.shapes(cache)
    adapted = {
        k[: -len(".base_layer.weight")].replace(PEFT_CFM, "cfm.", 1) for k in shapes if k.endswith(".base_layer.weight")
    }
    views = [(role, peft_view(src, adapted)) for role, src in sources]
    fresh_lora = f"fresh LoRA r={rank} (alpha = r, B = 0: it starts as the loaded model, as upstream's)"
    may_init = {} if init_src.lora else {k: fresh_lora for k in shapes if ".lora_" in k}
    weights["generator"] = _fill(tgt, views, report, may_init, used, cache)
    _record_dropped(
        report,
        views,
        used,
        lambda role, k: "superseded by the init file" if role == "base" else f"not part of the {version} generator",
    )
    return {
        "stage": "sovits",
        "version": version,
        "task": "train",
        "s2": cfg,
        "model_v3": model_cfg.to_json(),
        "lora_rank": rank,
    }


def _v3v4_infer(init_f, base_g_f, versions, out):
    """Merge a v3/v4 LoRA export onto its base: ``W + B @ A * alpha / r`` (PEFT's merge)."""
    sources, used, report, weights = out.sources, out.used, out.report, out.weights
    init_src = sources[0][1]
    if init_src.lora and base_g_f is None:
        raise GsvError(
            "a LoRA export holds only the trained deltas; it needs its base model",
            path=init_f.path,
            fix=f"pass --base {BASE_NAMES[versions[0]]} (the {versions[0]} base G)",
        )
    rank = _lora_rank(init_f, init_src) or 1
    alpha = rank  # upstream's LoRA config: lora_alpha = r
    base_src = sources[1][1] if len(sources) > 1 else init_src
    fates: dict[str, KeyFate] = {}
    out: dict[str, torch.Tensor] = {}
    for key, t in base_src.tensors.items():
        module = key.rsplit(".", 1)[0]
        if key in init_src.tensors and init_src is not base_src:
            out[key] = cast_fp32(init_src.tensors[key])
            used[init_src.path].add(key)
            fates[key] = KeyFate(LOADED, init_src.path, "")
        elif key.endswith(".weight") and module in init_src.lora:
            a, b = init_src.lora[module]
            out[key] = cast_fp32(t) + lora_delta(a, b, alpha, rank)
            used[init_src.path].add(module)
            fates[key] = KeyFate(LOADED, init_src.path, f"base weight + LoRA B@A*alpha/r (r={rank}, alpha={alpha})")
        else:
            out[key] = cast_fp32(t)
            fates[key] = KeyFate(
                LOADED if base_src is init_src else FILLED_FROM_BASE,
                base_src.path,
                "" if base_src is init_src else "not in the LoRA export; taken from --base",
            )
        used[base_src.path].add(key)
    report.targets["generator"] = fates
    weights["generator"] = out
    _record_dropped(report, sources, used, lambda role, k: "not part of the v3/v4 generator")
    return {"stage": "sovits", "version": "/".join(versions), "task": "infer", "lora_rank": rank}
