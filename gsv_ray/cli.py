"""The ``gsv-ray`` command. Thin by design: parse arguments, call library functions, print.

Every error we raise is a :class:`gsv_ray.errors.GsvError`: one line on stderr; exit status 2 for
bad input and options, 1 for infrastructure (its traceback in the run's log; ``--debug`` prints
every traceback).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from gsv_ray import __version__
from gsv_ray.errors import ConfigError, GsvError, os_error


def _cmd_inspect(args: argparse.Namespace) -> int:
    from gsv_ray.io.inspect import describe, render

    results = [describe(p, expect_stage=args.stage) for p in args.files]
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
    else:
        from rich.console import Console

        console = Console()
        for d in results:
            console.print(render(d))
    return 0


def _cmd_rebuild(args: argparse.Namespace) -> int:
    from rich.console import Console

    from gsv_ray.rebuild import RebuildSpec, export_result, rebuild_cached

    spec = RebuildSpec(init=args.init, base_g=args.base, base_d=args.base_d, stage=args.stage, version=args.version,
                       task=args.task)
    if args.no_cache:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="gsv-ray-nocache-") as scratch:  # nothing read from or left in a cache
            result = rebuild_cached(spec, cache_root=scratch)
            out = export_result(result, args.output) if args.output else None
            result.path = out
    else:
        result = rebuild_cached(spec, cache_root=args.cache, verify_inputs=args.verify_inputs)
        out = export_result(result, args.output) if args.output else result.path
    if args.json:
        print(json.dumps({"path": str(out), "cache_hit": result.cache_hit, **result.report.to_json()}, indent=1))
        return 0
    console = Console()
    console.print(result.report.render())
    console.print(f"{'reused' if result.cache_hit else 'wrote'} {out}" if out else
                  "nothing written (--no-cache without -o)")
    return 0


SEMANTIC_FIELDS = ("data", "model", "base", "workers", "half", "overwrite", "address", "cache")


def _cmd_semantic(args: argparse.Namespace) -> int:
    from gsv_ray.errors import GsvError
    from gsv_ray.semantic import extract_semantic, first_names

    opts = {"workers": 1, "half": False, "overwrite": False}
    if args.config:
        from gsv_ray.train.config import read_options_file

        loaded = read_options_file(args.config)
        unknown = set(loaded) - set(SEMANTIC_FIELDS)
        if unknown:
            raise GsvError(f"unknown option(s) {sorted(unknown)}", path=args.config, fix=f"use {', '.join(SEMANTIC_FIELDS)}")
        opts.update(loaded)
    opts.update({k: getattr(args, k) for k in SEMANTIC_FIELDS if getattr(args, k) is not None})
    for need in ("data", "model"):
        if not opts.get(need):
            raise GsvError(f"missing --{need}", fix="give it as a flag or in --config")
    r = extract_semantic(opts["data"], opts["model"], base_g=opts.get("base"), workers=int(opts["workers"]),
                         half=bool(opts["half"]), overwrite=bool(opts["overwrite"]), address=opts.get("address"),
                         cache_root=opts.get("cache"))
    print(r.report.message())
    mode = f"{r.workers} Ray tasks" if r.workers > 1 else "in-process"
    print(f"wrote {r.written} of {r.listed} utterances ({r.tokens} tokens, {r.device} {'fp16' if r.half else 'fp32'}, "
          f"{mode}, {r.seconds:.1f} s)")
    if r.missing:
        print(f"missing features for {len(r.missing)}: {first_names(r.missing)} (not in the TSV)")
    if r.duplicates:
        print(f"listed twice in 2-name2text.txt (kept once): {first_names(r.duplicates)}")
    print(r.path)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from rich.console import Console

    from gsv_ray.train.verify import render, verify

    out = Console()
    result = verify(args.init, data=args.data, base_g=args.base, base_d=args.base_d, stage=args.stage,
                    version=args.version, batches=args.batches, batch_size=args.batch_size,
                    train_steps=args.train_steps, margin=args.margin, cache_root=args.cache,
                    say=(lambda s: None) if args.json else (lambda s: out.print(s, style="dim", highlight=False)))
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        out.print(render(result))
    return 0 if result.verdict == "pass" else 1


def _cmd_train(args: argparse.Namespace) -> int:
    from gsv_ray.train import load_config, train
    from gsv_ray.train.tracking import Tracking, run_summary

    from gsv_ray.train.config import TrainConfig

    overrides = {k: getattr(args, k) for k in _fields(TrainConfig) if k in vars(args)}
    overrides["base_g"], overrides["output_dir"] = args.base, args.output
    if args.workers:
        if args.resume not in (None, "latest"):  # one meaning: continue this -o's run from its newest checkpoint
            raise ConfigError(f"--resume {args.resume}: with --workers, --resume takes no folder (it continues the "
                              "Ray run of this -o from its newest checkpoint)", fix="drop the folder, or drop --workers")
        overrides["resume"] = None  # the Ray run of this -o is found by its record there
    cfg = load_config(args.config, **overrides)
    from gsv_ray.console import Chatter, ProgressDisplay, shown
    from gsv_ray.owned import private_temp_dir

    with private_temp_dir(), Chatter(log_file(cfg.output_dir), verbose=args.verbose) as console:
        if args.workers:
            from gsv_ray.distributed.launch import RayOptions, train_on_ray

            opts = RayOptions(workers=args.workers, gpus_per_worker=args.gpus_per_worker or 0.0,
                              cpus_per_worker=args.cpus_per_worker or 1.0, address=args.address,
                              storage=args.storage, max_failures=args.max_failures or 0,
                              resume=args.resume is not None, placement_strategy=args.placement_strategy or "PACK")
            result = train_on_ray(cfg, opts, say=console.say, console=console)
        else:
            from gsv_ray.cache import default_cache_root

            cfg = cfg.localised(default_cache_root())
            with Tracking.for_run(cfg) as tracking:
                result = train(cfg, tracking=tracking, say=console.say, progress=ProgressDisplay(console))
        if console.used:
            console.say(f"log (Ray, W&B): {shown(console.log_file)}")
        for line in run_summary(result):
            console.say(line)
    return 0


def log_file(output_dir: str | Path) -> Path:
    """Where a command's library chatter goes: the run directory's ``logs/gsv-ray.log``."""
    return Path(output_dir) / "logs" / "gsv-ray.log"


def _fields(cls: type, *, without: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The options a config dataclass declares (the one place each is named; a flag's dest is the
    field's name)."""
    import dataclasses

    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in without)


def _cmd_tune(args: argparse.Namespace) -> int:
    import dataclasses

    from gsv_ray.train import load_config
    from gsv_ray.train.config import read_options_file
    from gsv_ray.tune.search import TuneOptions

    from gsv_ray.train.config import TrainConfig

    tune_fields = _fields(TuneOptions, without=("resume",))  # tune's --resume is a flag, never YAML
    tune_yaml: dict = {}
    train_yaml = None
    if args.config:  # one YAML: tune options (same names) next to the training options
        loaded = read_options_file(args.config)
        tune_yaml = {k.replace("-", "_"): v for k, v in loaded.items() if k.replace("-", "_") in tune_fields}
        train_yaml = {k: v for k, v in loaded.items() if k.replace("-", "_") not in tune_fields}
    # tune's --resume (continue this search) is not the training option resume (a checkpoint to start from),
    # and tune's --name names the search, not the exports (those are named after -o, as train's)
    overrides = {k: getattr(args, k) for k in _fields(TrainConfig, without=("resume", "name")) if k in vars(args)}
    name = args.name or tune_yaml.get("name") or "tune"
    default_out = None if (train_yaml or {}).get("output_dir") or (train_yaml or {}).get("output-dir") \
        else f"gsv-ray-runs/{name}"
    overrides.update(base_g=args.base, output_dir=args.output or default_out)
    cfg = load_config(None, mapping=train_yaml or None, **overrides)
    fields = {f.name for f in dataclasses.fields(TuneOptions)}
    values = {**tune_yaml, **{k: getattr(args, k) for k in tune_fields if getattr(args, k, None) is not None}}
    if "lr_scale_range" in values:
        values["lr_scale_range"] = tuple(float(x) for x in values["lr_scale_range"])
    opts = TuneOptions(**{k: v for k, v in values.items() if k in fields}, resume=bool(args.resume))
    return _tune_exit(_run_tune(cfg, opts, verbose=args.verbose))


def _run_tune(cfg, opts, *, verbose: bool):
    from gsv_ray.console import Chatter
    from gsv_ray.owned import private_temp_dir
    from gsv_ray.tune.run import tune_and_report

    with private_temp_dir(), Chatter(log_file(cfg.output_dir), verbose=verbose) as console:
        return tune_and_report(cfg, opts, console=console)


def _tune_exit(run) -> int:
    if run.outcome.interrupted:
        return 130
    if run.outcome.best is None:
        errors = [t.error for t in run.outcome.trials if t.error]
        print("gsv-ray: error: no trial produced a validation loss"
              + (f" (first error: {errors[0]})" if errors else "") + ". Fix: see the trial logs above.", file=sys.stderr)
        return 1
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from gsv_ray.demo import HEADER, DemoSize, demo_config

    root = Path(args.dir)
    print(HEADER.format(root=root))
    cfg, opts = demo_config(root, DemoSize(max_steps=args.max_steps, num_samples=args.num_samples))
    return _tune_exit(_run_tune(cfg, opts, verbose=args.verbose))


def _d(cls: type, name: str) -> str:
    """``default X`` from the dataclass field itself (the one place a default lives)."""
    import dataclasses

    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    return f"default {value}"


def build_parser() -> argparse.ArgumentParser:
    from gsv_ray.demo import DemoSize
    from gsv_ray.train.config import TrainConfig
    from gsv_ray.tune.search import WARMUP_FRACTIONS, TuneOptions

    p = argparse.ArgumentParser(
        prog="gsv-ray",
        description="Continue training GPT-SoVITS voices from exported weights.",
        allow_abbrev=False,  # `--lr 1e-5` silently meant --lr-scale 1e-5 (a peak LR of 1e-9)
    )
    p.add_argument("--version", action="version", version=f"gsv-ray {__version__}")
    p.add_argument("--debug", action="store_true", help="on an error, also print its full traceback")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser = functools.partial(sub.add_parser, allow_abbrev=False)  # type: ignore[method-assign]

    ins = sub.add_parser(
        "inspect", help="identify GPT-SoVITS files: kind, version and evidence, info, sha256",
        description="Identify GPT-SoVITS files safely (nothing in them runs): stage, kind (export, pretrained base, "
                    "training checkpoint, ...), version with the shapes that decide it, info, sha256.")
    ins.add_argument("files", nargs="+", metavar="FILE", help="SoVITS .pth or GPT .ckpt files")
    ins.add_argument("--json", action="store_true", help="one JSON object per file (a list for several)")
    ins.add_argument("--stage", choices=["sovits", "gpt"], help="fail unless every file is of this stage")
    ins.set_defaults(func=_cmd_inspect)

    rb = sub.add_parser(
        "rebuild", help="rebuild complete fp32 weights from any GPT-SoVITS file, with every key's fate reported",
        description="Rebuild complete, training-ready weights from OLD (an export, a base, a checkpoint). "
                    "Results are content-addressed under the cache (GSV_RAY_CACHE, default ~/.cache/gsv-ray): "
                    "the same inputs are rebuilt once.")
    rb.add_argument("init", metavar="OLD", help="the SoVITS .pth or GPT .ckpt to continue from")
    rb.add_argument("--base", metavar="G", help="same-version base generator (or GPT) to fill what OLD lacks")
    rb.add_argument("--base-d", metavar="D", help="same-version discriminator (SoVITS train task)")
    rb.add_argument("--stage", choices=["sovits", "gpt"], help="fail unless OLD is of this stage")
    rb.add_argument("--version", help="pin the version when the file allows several (v3/v4)")
    rb.add_argument("--task", choices=["train", "semantic", "infer"], default="train",
                    help="what the weights are for; decides which missing keys matter (default: train)")
    rb.add_argument("-o", "--output", metavar="DIR", help="also place the result at DIR (a new directory)")
    rb.add_argument("--cache", metavar="DIR", help="cache root (default: $GSV_RAY_CACHE or ~/.cache/gsv-ray)")
    rb.add_argument("--verify-inputs", action="store_true",
                    help="re-hash the input files instead of trusting their path, size, mtime and inode")
    rb.add_argument("--no-cache", action="store_true", help="rebuild from scratch, reading and writing no cache")
    rb.add_argument("--json", action="store_true", help="print report.json (plus path, cache_hit) instead of tables")
    rb.set_defaults(func=_cmd_rebuild)

    se_help_config = "options file: data, model, base, workers, half, overwrite (flags win)"
    se = sub.add_parser(
        "semantic", help="write 6-name2semantic.tsv (semantic tokens) from 4-cnhubert features",
        description="Upstream's semantic-token step: read logs/<exp>/4-cnhubert/*.pt in 2-name2text.txt order, run "
                    "the model's ssl_proj + quantizer, write logs/<exp>/6-name2semantic.tsv in upstream's format.")
    se.add_argument("--config", metavar="YAML", help=se_help_config)
    se.add_argument("--data", metavar="DIR", help="the experiment folder (logs/<exp>)")
    se.add_argument("--model", metavar="FILE", help="any SoVITS .pth (export, base or checkpoint)")
    se.add_argument("--base", metavar="G", help="same-version base generator (needed for a v3/v4 LoRA export)")
    se.add_argument("--workers", type=int, metavar="N", help="Ray tasks (default 1: in-process)")
    se.add_argument("--address", metavar="ADDR", help="Ray cluster to join with --workers > 1 (default: a local one)")
    se.add_argument("--half", action="store_true", default=None, help="fp16 (CUDA only; default fp32)")
    se.add_argument("--overwrite", action="store_true", default=None, help="replace an existing 6-name2semantic.tsv")
    se.add_argument("--cache", metavar="DIR", help="rebuild cache root (default: $GSV_RAY_CACHE or ~/.cache/gsv-ray)")
    se.set_defaults(func=_cmd_semantic)

    ve = sub.add_parser(
        "verify", help="trial-run the rebuilt weights on your data next to the base alone (pass/fail)",
        description="Rebuild OLD, evaluate it (and the base alone) on a few batches of your experiment folder, "
                    "optionally take a few optimizer steps. Exit 0 on pass, 1 on fail, 2 on bad input.")
    ve.add_argument("init", metavar="OLD", help="the SoVITS .pth or GPT .ckpt to continue from")
    ve.add_argument("--data", required=True, metavar="DIR", help="the GPT-SoVITS experiment folder (logs/<exp>)")
    ve.add_argument("--base", metavar="G", help="same-version base model: fills OLD and is evaluated alone")
    ve.add_argument("--base-d", metavar="D", help="same-version discriminator (SoVITS)")
    ve.add_argument("--stage", choices=["sovits", "gpt"], help="fail unless OLD is of this stage")
    ve.add_argument("--version", help="pin the version when the file allows several")
    ve.add_argument("--batches", type=int, default=4, help="evaluation batches (default 4)")
    ve.add_argument("--batch-size", type=int, default=4, help="items per batch (default 4)")
    ve.add_argument("--train-steps", type=int, default=0, help="optimizer steps at the reduced LR, then re-evaluate")
    ve.add_argument("--margin", type=float, default=0.10,
                    help="how much worse than the base (relative) still passes (default 0.10)")
    ve.add_argument("--cache", metavar="DIR", help="cache root (default: $GSV_RAY_CACHE or ~/.cache/gsv-ray)")
    ve.add_argument("--json", action="store_true", help="print the result as JSON")
    ve.set_defaults(func=_cmd_verify)

    tr = sub.add_parser(
        "train", help="continue training OLD (SoVITS or GPT) at a reduced LR with warmup; exports GPT-SoVITS files",
        description="Resumed training of one stage from any GPT-SoVITS file. Every option can also be given in "
                    "--config run.yaml (same names, dashes or underscores); flags win.")
    tr.add_argument("--config", metavar="YAML", help="options file")
    tr.add_argument("--init", metavar="OLD", help="the SoVITS .pth or GPT .ckpt to continue from")
    tr.add_argument("--base", metavar="G", help="same-version base generator/GPT to fill what OLD lacks")
    tr.add_argument("--base-d", metavar="D", help="same-version discriminator (SoVITS)")
    tr.add_argument("--data", metavar="DIR", help="the GPT-SoVITS experiment folder (logs/<exp>)")
    tr.add_argument("--stage", choices=["sovits", "gpt"], help="fail unless OLD is of this stage")
    tr.add_argument("--version", help="pin the version when the file allows several")
    tr.add_argument("-o", "--output", metavar="DIR", help="run directory (exports, checkpoints, metrics)")
    g = tr.add_argument_group("learning rate")
    g.add_argument("--lr-scale", type=float, help="peak LR = upstream's base LR (SoVITS 1e-4, GPT 0.002) x this "
                                                  "(default 0.1)")
    g.add_argument("--warmup-steps", type=int, help=f"linear warmup length in optimizer steps ({_d(TrainConfig, 'warmup_steps')})")
    g.add_argument("--warmup-start", type=float, help=f"warmup starts at this fraction of the peak ({_d(TrainConfig, 'warmup_start')})")
    g.add_argument("--decay", choices=["exponential", "cosine", "constant"],
                   help="after warmup (default: exponential for SoVITS as upstream, cosine for GPT)")
    g = tr.add_argument_group("length and batches")
    length = g.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=int, help="optimizer steps to train")
    length.add_argument("--epochs", type=int, help="epochs to train")
    g.add_argument("--batch-size", type=int, help=f"per process ({_d(TrainConfig, 'batch_size')})")
    g.add_argument("--grad-accum", type=int, help=f"gradient accumulation steps ({_d(TrainConfig, 'grad_accum')})")
    g.add_argument("--precision", choices=["no", "bf16", "fp16"],
                   help=f"mixed precision ({_d(TrainConfig, 'precision')}; fp16 uses one loss scaler per step, as upstream)")
    g.add_argument("--num-workers", type=int, help="data-loading worker processes per training process (default: "
                                                   "its CPUs minus one, at most 8; 0 loads in the training process)")
    g.add_argument("--dropout", type=float, help="override every dropout rate (default: upstream's)")
    g.add_argument("--seed", type=int, help=_d(TrainConfig, "seed"))
    g.add_argument("--cpu", action="store_true", default=None, help="train on CPU even if a GPU is present")
    g = tr.add_argument_group("validation, checkpoints, exports")
    g.add_argument("--val-fraction", type=float, help=f"held-out fraction of utterances ({_d(TrainConfig, 'val_fraction')})")
    g.add_argument("--val-names", metavar="FILE", help="held-out utterance names, one per line")
    g.add_argument("--val-every", type=int, help=f"steps between validations ({_d(TrainConfig, 'val_every')})")
    g.add_argument("--save-every", type=int, help=f"steps between checkpoints ({_d(TrainConfig, 'save_every')})")
    g.add_argument("--keep-last", type=int, help=f"checkpoints kept ({_d(TrainConfig, 'keep_last')})")
    g.add_argument("--export-every-epochs", type=int, help="also export every E epochs (default: only at the end)")
    g.add_argument("--name", help="export name stem (default: the run directory's name)")
    g.add_argument("--restart-counters", action="store_true", default=None,
                   help="exports count epochs/steps from 0 (default: continue the init file's, e.g. "
                        "xxx_e8_s200.pth + 1 epoch of 50 steps -> _e9_s250.pth; GPT-e15 -> -e16)")
    g.add_argument("--resume", metavar="DIR", nargs="?", const="latest",
                   help="continue from the newest checkpoint of -o's run (or of the given checkpoint or run "
                        "directory; not with --workers)")
    g = tr.add_argument_group("tracking")
    g.add_argument("--log-every", type=int, help=f"steps between metric rows ({_d(TrainConfig, 'log_every')})")
    g.add_argument("--wandb-project", help=f"W&B project ({_d(TrainConfig, 'wandb_project')})")
    g.add_argument("--wandb-mode", choices=["online", "offline", "disabled"],
                   help="default: online with an API key, else offline (sync later with 'wandb sync')")
    g = tr.add_argument_group("many GPUs / nodes (Ray Train)")
    g.add_argument("--workers", type=int, help="train on N Ray Train workers (DDP); without it: local mode, no Ray")
    g.add_argument("--gpus-per-worker", type=float, help="default 0 (CPU)")
    g.add_argument("--cpus-per-worker", type=float, help="default 1")
    g.add_argument("--address", help="join a Ray cluster ('auto' or 'ray://host:10001'); default: start a local one")
    g.add_argument("--storage", metavar="PATH_OR_URI",
                   help="checkpoint storage shared by all nodes (s3://..., gs://..., a shared path); default -o/ray")
    g.add_argument("--max-failures", type=int, help="restarts of failed workers before the job fails (default 0)")
    g.add_argument("--placement-strategy", choices=["PACK", "SPREAD"],
                   help="PACK: workers on as few nodes as fit (default); SPREAD: one per node where possible")
    tr.add_argument("--verbose", action="store_true", help="also show Ray's and W&B's own output (always in "
                    "-o/logs/gsv-ray.log)")
    tr.set_defaults(func=_cmd_train)

    tu = sub.add_parser(
        "tune", help="Ray Tune over lr_scale and warmup from one shared rebuild; best weights exported",
        description="Search the reduced learning-rate scale and the warmup with Ray Tune. Every trial trains from "
                    "the same rebuilt weights (rebuilt once), logs one W&B run, and can be stopped early (ASHA). "
                    "Every option can also be given in --config tune.yaml.")
    tu.add_argument("--config", metavar="YAML", help="options file (training and search options)")
    tu.add_argument("--init", metavar="OLD", help="the SoVITS .pth or GPT .ckpt to continue from")
    tu.add_argument("--base", metavar="G", help="same-version base generator/GPT to fill what OLD lacks")
    tu.add_argument("--base-d", metavar="D", help="same-version discriminator (SoVITS)")
    tu.add_argument("--data", metavar="DIR", help="the GPT-SoVITS experiment folder (logs/<exp>)")
    tu.add_argument("--stage", choices=["sovits", "gpt"], help="fail unless OLD is of this stage")
    tu.add_argument("--version", help="pin the version when the file allows several")
    tu.add_argument("-o", "--output", metavar="DIR", help="run directory (default gsv-ray-runs/<name>)")
    tu.add_argument("--max-steps", type=int, help="optimizer steps per trial (required)")
    tu.add_argument("--batch-size", type=int, help=f"per process ({_d(TrainConfig, 'batch_size')})")
    tu.add_argument("--val-every", type=int,
                    help=f"steps between validations = when trials are compared ({_d(TrainConfig, 'val_every')})")
    tu.add_argument("--precision", choices=["no", "bf16", "fp16"], help=f"mixed precision ({_d(TrainConfig, 'precision')})")
    tu.add_argument("--grad-accum", type=int, help=f"gradient accumulation steps ({_d(TrainConfig, 'grad_accum')})")
    tu.add_argument("--num-workers", type=int, help="data-loading workers per training process (default: its CPUs "
                                                    "minus one, at most 8)")
    tu.add_argument("--seed", type=int, help=_d(TrainConfig, "seed"))
    tu.add_argument("--wandb-project", help=f"W&B project ({_d(TrainConfig, 'wandb_project')})")
    tu.add_argument("--wandb-mode", choices=["online", "offline", "disabled"],
                    help="default: online with an API key, else offline (sync later with 'wandb sync')")
    g = tu.add_argument_group("search")
    g.add_argument("--num-samples", type=int, help=f"trials ({_d(TuneOptions, 'num_samples')})")
    lo, hi = TuneOptions().lr_scale_range
    g.add_argument("--lr-scale-range", type=float, nargs=2, metavar=("LO", "HI"),
                   help=f"lr_scale searched log-uniformly in [LO, HI] (default {lo:g} {hi:g}: at most upstream's LR)")
    g.add_argument("--warmup-choices", type=int, nargs="+", metavar="STEPS",
                   help="warmup lengths searched (default: " + ", ".join(f"{f * 100:g}%%" for f in WARMUP_FRACTIONS)
                        + " of --max-steps)")
    g.add_argument("--search", choices=["random", "optuna"], help=f"search algorithm ({_d(TuneOptions, 'search')})")
    g.add_argument("--search-seed", type=int, help="seed of the search: the same seed samples the same settings "
                   "(default: none, a new sample each time)")
    g.add_argument("--scheduler", choices=["asha", "fifo"],
                   help=f"asha stops weak trials early; fifo runs all to the end ({_d(TuneOptions, 'scheduler')})")
    g.add_argument("--grace-steps", type=int, help="ASHA: steps before a trial may be stopped (default --max-steps / 4)")
    g.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as the CPUs/GPUs allow)")
    g = tu.add_argument_group("resources")
    g.add_argument("--workers-per-trial", type=int, help=f"Ray Train workers per trial ({_d(TuneOptions, 'workers_per_trial')})")
    g.add_argument("--gpus-per-worker", type=float, help=_d(TuneOptions, "gpus_per_worker"))
    g.add_argument("--cpus-per-worker", type=float, help=_d(TuneOptions, "cpus_per_worker"))
    g.add_argument("--max-failures", type=int, help=f"restarts of a trial's failed workers ({_d(TuneOptions, 'max_failures')})")
    g.add_argument("--address", help="join a Ray cluster ('auto' or 'ray://host:10001'); default: start a local one")
    g.add_argument("--storage", metavar="PATH_OR_URI",
                   help="checkpoint storage shared by all nodes (s3://..., gs://..., a shared path); default -o/ray")
    g.add_argument("--name", help="the tune run's name (W&B group); default tune-<-o folder>")
    g.add_argument("--resume", action="store_true", help="continue the tune run of this name after an interruption")
    tu.add_argument("--verbose", action="store_true", help="also show Ray's and W&B's own output (always in "
                    "-o/logs/gsv-ray.log)")
    tu.set_defaults(func=_cmd_tune)

    de = sub.add_parser(
        "demo", help="the main job on an embedded default: synthetic voice + tune, in minutes",
        description="Make a small synthetic voice (an old SoVITS v2 export, its discriminator, a preprocessed "
                    "experiment folder), then search lr_scale and warmup for continuing it with Ray Tune on a local "
                    "Ray, W&B offline. Nothing is downloaded; a second demo in the same --dir is a new run beside "
                    "the first.")
    de.add_argument("--dir", default="gsv-ray-demo", help="where to put everything (default ./gsv-ray-demo)")
    de.add_argument("--max-steps", type=int, default=DemoSize.max_steps, metavar="N",
                    help=f"steps per trial (default {DemoSize.max_steps}; validation every quarter)")
    de.add_argument("--num-samples", type=int, default=DemoSize.num_samples, metavar="N",
                    help=f"trials (default {DemoSize.num_samples})")
    de.add_argument("--verbose", action="store_true", help="also show Ray's and W&B's own output (always in the "
                    "run's logs/gsv-ray.log)")
    de.set_defaults(func=_cmd_demo)
    return p


#: Warnings known to be noise for our users (libraries warning each other about deprecations, at
#: import or on every call); anything else is shown (inside train/tune: in the run's log).
_NOISY_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (DeprecationWarning, r"(ray|wandb|pydantic|google|pkg_resources|setuptools|torch)(\.|$)"),
    (FutureWarning, r"(ray|wandb|torch|accelerate)(\.|$)"),
    (UserWarning, r"ray(\.|$)"),
)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            for category, module in _NOISY_WARNINGS:
                warnings.filterwarnings("ignore", category=category, module=module)
            rc = args.func(args)
            sys.stdout.flush()  # here, so a closed pipe (`gsv-ray rebuild --json | head`) is caught below
            return rc
    except BrokenPipeError:  # the reader went away: stop quietly (Python's documented recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except GsvError as e:
        _debug_traceback(args)
        print(f"gsv-ray: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a full disk, a read-only or foreign directory: the user's to fix, in one line
        err = os_error(e)
        if err is None:
            raise
        _debug_traceback(args)
        print(f"gsv-ray: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = ("; every complete checkpoint is kept: the same command with --resume continues"
                if args.func in (_cmd_train, _cmd_tune) else "")
        print(f"gsv-ray: interrupted{hint}", file=sys.stderr)
        return 130


def _debug_traceback(args: argparse.Namespace) -> None:
    if args.debug:
        import traceback

        traceback.print_exc(file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
