"""``gsv-ray inspect``: everything a user needs to judge a GPT-SoVITS file before using it."""

from __future__ import annotations

from collections import Counter
from typing import Any

from gsv_ray.io.reader import GsvFile, read, sha256_file

_DTYPE_NAMES = {"torch.float16": "float16", "torch.float32": "float32", "torch.bfloat16": "bfloat16"}


def _dtype_name(dt: Any) -> str:
    s = str(dt)
    return _DTYPE_NAMES.get(s, s.replace("torch.", ""))


def config_summary(f: GsvFile) -> dict[str, Any] | None:
    """The few config values that matter when continuing training."""
    c = f.config
    if not isinstance(c, dict):
        return None
    model = c.get("model") if isinstance(c.get("model"), dict) else {}
    data = c.get("data") if isinstance(c.get("data"), dict) else {}
    train = c.get("train") if isinstance(c.get("train"), dict) else {}
    if f.stage == "gpt":
        keys = {
            "model": ("phoneme_vocab_size", "vocab_size", "embedding_dim", "n_layer", "head"),
            "data": ("max_sec",),
            "train": ("epochs", "batch_size", "precision"),
        }
    else:
        keys = {
            "model": ("version", "hidden_channels", "inter_channels", "gin_channels", "upsample_initial_channel"),
            "data": ("sampling_rate", "hop_length", "filter_length"),
            "train": ("learning_rate", "batch_size", "epochs", "text_low_lr_rate", "pretrained_s2G"),
        }
    out: dict[str, Any] = {}
    for section, names in keys.items():
        src = {"model": model, "data": data, "train": train}[section]
        for n in names:
            if n in src:
                out[f"{section}.{n}"] = src[n]
    for n in ("version", "name"):
        if n in c and not isinstance(c[n], dict):
            out[n] = c[n]
    return out


def describe(path: str, *, expect_stage: str | None = None) -> dict[str, Any]:
    """The ``inspect --json`` object for one file (raises GsvError on bad input)."""
    f = read(path, expect_stage=expect_stage)
    counts: Counter[str] = Counter()
    numel = 0
    for t in f.state_dict.values():
        counts[_dtype_name(t.dtype)] += t.numel()
        numel += t.numel()
    dtype = next(iter(counts)) if len(counts) == 1 else "mixed"
    return {
        "path": str(f.path),
        "kind": f.kind,
        "version": f.version,
        "versions": f.versions,
        "stage": f.stage,
        "dtype": dtype,
        "dtypes": dict(counts),
        "num_tensors": len(f.state_dict),
        "num_parameters": numel,
        "header": f.header,
        "info": f.info,
        "epoch": f.epoch,
        "step": f.step,
        "lora_rank": f.lora_rank,
        "has_optimizer": any(k in f.extra for k in ("optimizer", "optimizer_states")),
        "config_type": f.config_type,
        "config": config_summary(f),
        "pickle_globals": f.pickle_globals,
        "size_bytes": f.path.stat().st_size,
        "sha256": sha256_file(f.path),
        "evidence": f.evidence,
        "warnings": f.warnings,
    }


def render(d: dict[str, Any]) -> Any:
    """A rich renderable (table) for one described file."""
    from rich.markup import escape
    from rich.table import Table

    version = d["version"] or f"ambiguous: {' / '.join(d['versions']) or 'none fits'}"
    t = Table(title=escape(d["path"]), show_header=False, title_justify="left", expand=False)
    t.add_column(style="bold cyan", no_wrap=True)
    t.add_column(overflow="fold")
    rows = [
        ("kind", f"{d['kind']}  (stage {d['stage']})"),
        ("version", version),
        ("evidence", "\n".join(f"- {e}" for e in d["evidence"]) or "-"),
        ("header", f"{d['header']!r}" + ("  (plain zip)" if d["header"] == "PK" else "  (version tag)")),
        ("tensors", f"{d['num_tensors']} tensors, {d['num_parameters']:,} values, dtype {d['dtype']}"),
        ("info", d["info"] or "-"),
        (
            "epoch / step",
            f"{d['epoch'] if d['epoch'] is not None else '-'} / {d['step'] if d['step'] is not None else '-'}",
        ),
    ]
    if d["lora_rank"] is not None:
        rows.append(("lora rank", str(d["lora_rank"])))
    rows.append(("optimizer", "yes (resumable state)" if d["has_optimizer"] else "no"))
    if d["config"]:
        rows.append(("config", "\n".join(f"{k} = {v}" for k, v in d["config"].items())))
    rows.append(("size", f"{d['size_bytes']:,} bytes"))
    rows.append(("sha256", d["sha256"]))
    if d["warnings"]:
        rows.append(("warnings", "\n".join(f"! {w}" for w in d["warnings"])))
    for k, v in rows:
        t.add_row(k, escape(v), style="yellow" if k == "warnings" else None)
    return t
