"""The ``gsv-ray`` command. Thin by design: parse arguments, call library functions, print.

Every error we raise is a :class:`gsv_ray.errors.GsvError`: one line on stderr; exit status 2 for
bad input and options, 1 for infrastructure (its traceback in the run's log; ``--debug`` prints
every traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from gsv_ray import __version__
from gsv_ray.errors import ConfigError, GsvError, os_error


def _cmd_inspect(args: argparse.Namespace) -> int:
    """Several files: every good one is described, each bad one is one line on stderr (in ``--json``
    also an ``{"path", "error"}`` entry), and the exit status is 2 when any was bad."""
    from gsv_ray.io.inspect import describe, render

    if len(args.files) == 1:
        results = [describe(args.files[0], expect_stage=args.stage)]  # a bad file: one line, exit 2, nothing else
    else:
        results = []
        for p in args.files:
            try:
                results.append(describe(p, expect_stage=args.stage))
            except GsvError as e:
                results.append({"path": p, "error": str(e)})
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
    else:
        from rich.console import Console

        console = Console()
        for d in results:
            if "error" not in d:
                console.print(render(d))
    sys.stdout.flush()
    for d in results:
        if "error" in d:
            print(f"gsv-ray: error: {d['error']}", file=sys.stderr)
    return 2 if any("error" in d for d in results) else 0


def _cmd_rebuild(args: argparse.Namespace) -> int:
    from rich.console import Console

    from gsv_ray.owned import private_temp_dir
    from gsv_ray.rebuild import RebuildSpec, export_result, rebuild_cached

    spec = RebuildSpec(
        init=args.init,
        base_g=args.base_g,
        base_d=args.base_d,
        stage=args.stage,
        version=args.version,
        task=args.task,
        lora_rank=args.lora_rank,
    )
    # the private temp dir holds torch's inductor cache and --no-cache's scratch: removed at the end,
    # and by the next command when this one is killed (its lock is gone)
    with private_temp_dir() as tmp:
        if args.no_cache:
            scratch = tmp / "nocache"  # nothing read from or left in a cache
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
    console.print(
        f"{'reused' if result.cache_hit else 'wrote'} {out}" if out else "nothing written (--no-cache without -o)"
    )
    return 0


def _cmd_semantic(args: argparse.Namespace) -> int:
    from gsv_ray.options import flag_values, split_mapping
    from gsv_ray.semantic import SemanticOptions, first_names
    from gsv_ray.train.config import read_options_file

    (values,) = (
        split_mapping(read_options_file(args.config), SemanticOptions, path=args.config) if args.config else ({},)
    )
    values.update(flag_values(args, SemanticOptions))
    missing = [k for k in ("data", "model") if not values.get(k)]
    if missing:
        raise ConfigError(f"missing {', '.join('--' + k for k in missing)}", fix="give it as a flag or in --config")
    from gsv_ray.owned import private_temp_dir

    with private_temp_dir():  # --workers N: our local Ray's session folder, torch's inductor cache
        r = SemanticOptions(**values).run()
    print(r.report.message())
    mode = f"{r.workers} Ray tasks" if r.workers > 1 else "in-process"
    print(
        f"wrote {r.written} of {r.listed} utterances ({r.tokens} tokens, {r.device} {'fp16' if r.half else 'fp32'}, "
        f"{mode}, {r.seconds:.1f} s)"
    )
    if r.missing:
        print(f"missing features for {len(r.missing)}: {first_names(r.missing)} (not in the TSV)")
    if r.duplicates:
        print(f"listed twice in 2-name2text.txt (kept once): {first_names(r.duplicates)}")
    print(r.path)
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from gsv_ray.options import flag_values, split_mapping
    from gsv_ray.owned import private_temp_dir
    from gsv_ray.preparation import EmptyExperiment, PrepareOptions, result_json
    from gsv_ray.train.config import read_options_file

    (values,) = (
        split_mapping(read_options_file(args.config), PrepareOptions, path=args.config) if args.config else ({},)
    )
    values.update(flag_values(args, PrepareOptions))
    missing = [f for k, f in PREPARE_REQUIRED.items() if not values.get(k)]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}", fix="give it as a flag or in --config")
    try:
        with private_temp_dir():  # --workers N: our local Ray's session folder
            r = PrepareOptions(**values).run()
    except EmptyExperiment as e:
        print(result_json(e.result) if args.json else "\n".join(e.result.report_lines()[:-1]))
        raise
    print(result_json(r) if args.json else "\n".join(r.report_lines()))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from rich.console import Console

    from gsv_ray.options import flag_values
    from gsv_ray.train.verify import VerifyOptions, render, verify

    out = Console()
    result = verify(
        args.init,
        data=args.data,
        base_g=args.base_g,
        base_d=args.base_d,
        stage=args.stage,
        version=args.version,
        lora_rank=args.lora_rank,
        cache_root=args.cache,
        **flag_values(args, VerifyOptions),
        say=(lambda s: None) if args.json else (lambda s: out.print(s, style="dim", highlight=False)),
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        out.print(render(result))
    return 0 if result.verdict == "pass" else 1


def _cmd_train(args: argparse.Namespace) -> int:
    from gsv_ray.console import Chatter, ProgressDisplay, shown
    from gsv_ray.distributed.options import RayOptions, load_run_config
    from gsv_ray.options import flag_values
    from gsv_ray.owned import private_temp_dir
    from gsv_ray.train.config import TrainConfig

    # before torch is imported: a bad option is a quick one-line error
    cfg, ray_opts = load_run_config(
        args.config, train=flag_values(args, TrainConfig), ray=flag_values(args, RayOptions)
    )
    from gsv_ray.train.rundir import finished_line, own_output_dir, record_finished

    if ray_opts is not None:  # before -o is claimed: a run refused for the machine leaves nothing
        from gsv_ray.distributed.launch import check_machine

        check_machine(ray_opts)
    with (
        own_output_dir(cfg.output_dir),
        private_temp_dir(),
        Chatter(log_file(cfg.output_dir), verbose=args.verbose) as console,
    ):
        done = finished_line(cfg) if (cfg.resume or (ray_opts and ray_opts.resume)) else None
        if done:  # nothing rewritten, no second W&B run
            console.say(done)
            return 0
        if ray_opts is not None:
            from gsv_ray.distributed.launch import train_on_ray

            result = train_on_ray(cfg, ray_opts, say=console.say, console=console)
        else:
            from gsv_ray.cache import default_cache_root
            from gsv_ray.train import train
            from gsv_ray.train.tracking import Tracking

            cfg = cfg.localised(default_cache_root())
            with Tracking.for_run(cfg) as tracking:
                result = train(cfg, tracking=tracking, say=console.say, progress=ProgressDisplay(console))
        if not result.stopped_early:
            record_finished(cfg, result.steps, result.epochs, result.exports)
        if console.used:
            console.say(f"log (Ray, W&B): {shown(console.log_file)}")
        from gsv_ray.train.tracking import run_summary

        for line in run_summary(result):
            console.say(line)
    return 0


def log_file(output_dir: str | Path) -> Path:
    """Where a command's library chatter goes: the run directory's ``logs/gsv-ray.log``."""
    return Path(output_dir) / "logs" / "gsv-ray.log"


def _cmd_tune(args: argparse.Namespace) -> int:
    from gsv_ray.options import flag_values
    from gsv_ray.train.config import TrainConfig
    from gsv_ray.tune.search import NOT_TUNE_OPTIONS, TuneOptions, load_tune_config

    cfg, opts = load_tune_config(
        args.config,
        train=flag_values(args, TrainConfig, without=NOT_TUNE_OPTIONS),
        search=flag_values(args, TuneOptions),
    )
    return _run_tune(cfg, opts, verbose=args.verbose)


def _run_tune(cfg, opts, *, verbose: bool, command: str = "tune") -> int:
    """Run a search in its own -o (the CLI's exit status); a ``--resume`` of a finished one does nothing."""
    from gsv_ray.console import Chatter
    from gsv_ray.owned import private_temp_dir
    from gsv_ray.train.rundir import finished_search_line, own_output_dir
    from gsv_ray.tune.run import tune_and_report

    with (
        own_output_dir(cfg.output_dir),
        private_temp_dir(),
        Chatter(log_file(cfg.output_dir), verbose=verbose) as console,
    ):
        if opts.resume:  # another --metric is refused even where nothing is left to run
            from gsv_ray.tune.search import check_same_search, default_name

            check_same_search(Path(cfg.output_dir), opts.name or default_name(cfg), opts.objective())
        done = finished_search_line(Path(cfg.output_dir)) if opts.resume else None
        if done:  # nothing rewritten, no second W&B summary run
            console.say(done)
            return 0
        return _tune_exit(
            tune_and_report(
                cfg, opts, console=console, interrupted=interrupted_hint(command) if command == "demo" else None
            )
        )


def _tune_exit(run) -> int:
    if run.outcome.interrupted:
        return 130
    if run.outcome.best is None:
        errors = [t.error for t in run.outcome.trials if t.error]
        print(
            "gsv-ray: error: no trial produced a validation loss"
            + (f" (first error: {errors[0]})" if errors else "")
            + ". Fix: see the trial logs above.",
            file=sys.stderr,
        )
        return 1
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from gsv_ray.demo import HEADER, WHAT, DemoOptions, demo_config, demo_root
    from gsv_ray.options import flag_values

    size = DemoOptions(**flag_values(args, DemoOptions))
    demo_root(size)  # before the header: a --dir that cannot be a folder is one line
    from gsv_ray.console import wrap

    print("\n".join(wrap(line) for line in HEADER.format(root=Path(size.dir), what=WHAT[size.version]).splitlines()))
    cfg, opts = demo_config(size)
    return _run_tune(cfg, opts, verbose=args.verbose, command="demo")


def interrupted_hint(command: str) -> str:
    """What to do after Ctrl-C, true for the command and the state it stopped in."""
    if command == "demo":
        return "run gsv-ray demo again (its inputs are kept; the search starts anew in a new runs/ folder)"
    if command == "tune":
        return "the same command with --resume continues the search"
    if command == "train":
        return (
            "every complete checkpoint is kept: the same command with --resume continues (from step 0 when no "
            "checkpoint was written yet)"
        )
    return ""


INPUTS = ("init", "base_g", "base_d", "stage", "version", "lora_rank")  # TrainConfig's fields: what to rebuild from
VERBOSE = "also show Ray's and W&B's own output (always in -o/logs/gsv-ray.log)"
CACHE = "cache root (default: $GSV_RAY_CACHE or ~/.cache/gsv-ray)"


def _inspect_flags(p: argparse.ArgumentParser) -> None:
    from gsv_ray.resources import STAGES

    p.add_argument("files", nargs="+", metavar="FILE", help="SoVITS .pth or GPT .ckpt files")
    p.add_argument("--json", action="store_true", help="one JSON object per file (a list for several)")
    p.add_argument("--stage", choices=STAGES, help="fail unless every file is of this stage")


def _rebuild_flags(p: argparse.ArgumentParser) -> None:
    from gsv_ray.options import add_flags
    from gsv_ray.train.config import TrainConfig

    add_flags(
        p,
        TrainConfig,
        only=INPUTS,
        positional=("init",),
        help={
            "base_g": "same-version base generator (or GPT) to fill what OLD lacks",
            "base_d": "same-version discriminator (SoVITS train task)",
        },
    )
    p.add_argument(
        "--task",
        choices=REBUILD_TASKS,
        default="train",
        help="what the weights are for; decides which missing keys matter (default: train)",
    )
    p.add_argument("-o", "--output", metavar="DIR", help="also place the result at DIR (a new directory)")
    p.add_argument("--cache", metavar="DIR", help=CACHE)
    p.add_argument(
        "--verify-inputs",
        action="store_true",
        help="re-hash the input files instead of trusting their path, size, mtime and inode",
    )
    p.add_argument("--no-cache", action="store_true", help="rebuild from scratch, reading and writing no cache")
    p.add_argument("--json", action="store_true", help="print report.json (plus path, cache_hit) instead of tables")


def _semantic_flags(p: argparse.ArgumentParser) -> None:
    from gsv_ray.options import add_flags
    from gsv_ray.semantic import SemanticOptions

    p.add_argument("--config", metavar="YAML", help="options file: the options below by name (flags win)")
    add_flags(p, SemanticOptions)


#: prepare's required options (YAML key -> flag); checked after --config is merged
PREPARE_REQUIRED = {"list_file": "--list", "output": "-o", "version": "--version", "pretrained": "--pretrained"}


def _prepare_flags(p: argparse.ArgumentParser) -> None:
    from gsv_ray.options import add_flags
    from gsv_ray.preparation import PrepareOptions

    p.add_argument("--config", metavar="YAML", help="options file: the options below by name (flags win)")
    add_flags(p, PrepareOptions)
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _verify_flags(p: argparse.ArgumentParser) -> None:
    from gsv_ray.options import add_flags
    from gsv_ray.train.config import TrainConfig
    from gsv_ray.train.verify import VerifyOptions

    add_flags(
        p,
        TrainConfig,
        only=(*INPUTS, "data"),
        positional=("init",),
        required=("data",),
        help={"base_g": "same-version base model: fills OLD and is evaluated alone"},
    )
    add_flags(p, VerifyOptions)
    p.add_argument("--cache", metavar="DIR", help=CACHE)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _train_flags(p: argparse.ArgumentParser) -> None:
    from gsv_ray.distributed.options import RayOptions
    from gsv_ray.options import add_flags
    from gsv_ray.train.config import TrainConfig

    p.add_argument("--config", metavar="YAML", help="options file")
    groups: dict = {}
    add_flags(p, TrainConfig, groups=groups)
    add_flags(p, RayOptions, groups=groups)
    p.add_argument("--verbose", action="store_true", help=VERBOSE)


def _tune_flags(p: argparse.ArgumentParser) -> None:
    from gsv_ray.options import add_flags
    from gsv_ray.train.config import TrainConfig
    from gsv_ray.tune.search import NOT_TUNE_OPTIONS, TuneOptions

    p.add_argument("--config", metavar="YAML", help="options file (training and search options)")
    groups: dict = {}
    add_flags(
        p,
        TrainConfig,
        without=NOT_TUNE_OPTIONS,
        groups=groups,
        help={
            "output_dir": "run directory (default gsv-ray-runs/<--name>)",
            "max_steps": "optimizer steps per trial (required)",
            "val_every": "steps between validations = when trials are compared",
        },
    )
    add_flags(p, TuneOptions, groups=groups)
    p.add_argument("--verbose", action="store_true", help=VERBOSE)


def _demo_flags(p: argparse.ArgumentParser) -> None:
    from gsv_ray.demo import DemoOptions
    from gsv_ray.options import add_flags

    add_flags(p, DemoOptions)
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also show Ray's and W&B's own output (always in the run's logs/gsv-ray.log)",
    )


#: rebuild's tasks (``gsv_ray.rebuild.TASKS``; stated here so that ``--help`` imports no torch, and a
#: test holds the two equal)
REBUILD_TASKS = ("train", "semantic", "infer")

#: name -> (one-line help, description, flags, command). A command's flags are built only when it
#: runs (or for ``build_parser()`` with no command): ``--help`` and the commands stay quick.
COMMANDS: dict[str, tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "inspect": (
        "identify GPT-SoVITS files: kind, version and evidence, info, sha256",
        "Identify GPT-SoVITS files safely (nothing in them runs): stage, kind (export, pretrained base, "
        "training checkpoint, ...), version with the shapes that decide it, info, sha256.",
        _inspect_flags,
        _cmd_inspect,
    ),
    "rebuild": (
        "rebuild complete fp32 weights from any GPT-SoVITS file, with every key's fate reported",
        "Rebuild complete, training-ready weights from OLD (an export, a base, a checkpoint). Results are "
        "content-addressed under the cache (GSV_RAY_CACHE, default ~/.cache/gsv-ray): the same inputs are "
        "rebuilt once.",
        _rebuild_flags,
        _cmd_rebuild,
    ),
    "semantic": (
        "write 6-name2semantic.tsv (semantic tokens) from 4-cnhubert features",
        "Upstream's semantic-token step: read logs/<exp>/4-cnhubert/*.pt in 2-name2text.txt order, run the "
        "model's ssl_proj + quantizer, write logs/<exp>/6-name2semantic.tsv in upstream's format.",
        _semantic_flags,
        _cmd_semantic,
    ),
    "prepare": (
        "a .list and its recordings -> a GPT-SoVITS experiment folder (upstream's steps 1A-1C)",
        "Make logs/<exp> from a .list (wav|speaker|language|text) as GPT-SoVITS's webui does: 2-name2text.txt, "
        "5-wav32k/, 4-cnhubert/, 7-sv_cn/ (v2Pro/v2ProPlus), 6-name2semantic.tsv, with the models of your "
        "pretrained_models folder. Lines that cannot be prepared are named in the report; a rerun resumes. "
        "--workers N runs it on Ray Data.",
        _prepare_flags,
        _cmd_prepare,
    ),
    "verify": (
        "trial-run the rebuilt weights on your data next to the base alone (pass/fail)",
        "Rebuild OLD, evaluate it (and the base alone) on a few batches of your experiment folder, optionally "
        "take a few optimizer steps. Exit 0 on pass, 1 on fail, 2 on bad input.",
        _verify_flags,
        _cmd_verify,
    ),
    "train": (
        "continue training OLD (SoVITS or GPT) at a reduced LR with warmup; exports GPT-SoVITS files",
        "Resumed training of one stage from any GPT-SoVITS file. Every option can also be given in "
        "--config run.yaml (same names, dashes or underscores); flags win.",
        _train_flags,
        _cmd_train,
    ),
    "tune": (
        "Ray Tune over lr_scale and warmup from one shared rebuild; best weights exported",
        "Search the reduced learning-rate scale and the warmup with Ray Tune. Every trial trains from the same "
        "rebuilt weights (rebuilt once), logs one W&B run, and can be stopped early (ASHA). Every option can "
        "also be given in --config tune.yaml.",
        _tune_flags,
        _cmd_tune,
    ),
    "demo": (
        "the main job on an embedded default: synthetic voice + tune, in minutes",
        "Make a small synthetic voice (an old SoVITS v2 export and its discriminator, or with --version v4 a v4 "
        "base and LoRA export; a preprocessed experiment folder), then search lr_scale and warmup for continuing it "
        "with Ray Tune on a local Ray, W&B offline. "
        "Nothing is downloaded; a second demo in the same --dir is a new run beside the first.",
        _demo_flags,
        _cmd_demo,
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that command's flags are built (others list by name)."""
    p = argparse.ArgumentParser(
        prog="gsv-ray",
        description="Continue training GPT-SoVITS voices from exported weights.",
        allow_abbrev=False,  # `--lr 1e-5` silently meant --lr-scale 1e-5 (a peak LR of 1e-9)
    )
    p.add_argument("--version", action="version", version=f"gsv-ray {__version__}")
    p.add_argument("--debug", action="store_true", help="on an error, also print its full traceback")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (short, description, flags, func) in COMMANDS.items():
        cmd = sub.add_parser(name, help=short, description=description, allow_abbrev=False)
        if command is None or command == name:
            flags(cmd)
        cmd.set_defaults(func=func)
    return p


#: Warnings known to be noise for our users (libraries warning each other about deprecations, at
#: import or on every call); anything else is shown (inside train/tune: in the run's log).
_NOISY_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (DeprecationWarning, r"(ray|wandb|pydantic|google|pkg_resources|setuptools|torch)(\.|$)"),
    (FutureWarning, r"(ray|wandb|torch|accelerate)(\.|$)"),
    (UserWarning, r"ray(\.|$)"),
)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(command).parse_args(argv)
    _mask_argv()
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
        hint = interrupted_hint(args.command)
        print(f"gsv-ray: interrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        return 130


def _mask_argv() -> None:
    """Mask credentials given inside URIs in ``sys.argv`` once it is parsed: W&B records the
    command line (``wandb-metadata.json``, the ``.wandb`` file) and Ray its driver's; neither has
    an option to leave it out."""
    from gsv_ray.masking import mask

    sys.argv[:] = [mask(a) for a in sys.argv]


def _debug_traceback(args: argparse.Namespace) -> None:
    if args.debug:
        import traceback

        traceback.print_exc(file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
