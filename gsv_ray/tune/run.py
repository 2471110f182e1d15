"""The whole ``gsv-ray tune`` workflow around the search: results, best export, summary run; and
``gsv-ray demo``, which runs it on an embedded default for a newcomer with nothing downloaded."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from gsv_ray.train.config import TrainConfig
from gsv_ray.train.tracking import offline_runs
from gsv_ray.tune.results import TuneOutcome, failure_lines, log_summary_run, results_table, write_results
from gsv_ray.tune.search import TuneOptions, run_tune


@dataclass
class TuneRun:
    outcome: TuneOutcome
    results: dict[str, Path]
    best_exports: list[Path]


def tune_and_report(cfg: TrainConfig, opts: TuneOptions, *, say: Callable[[str], None] | None = None,
                    console: Any = None) -> TuneRun:
    """Run the search, print the results table, write results.json / summary.png, copy the best
    trial's GPT-SoVITS files to ``-o/best/``, and log the W&B summary run. ``console``: a
    :class:`gsv_ray.console.Chatter` (lines, live trial rows and the table go there)."""
    say = say or (console.say if console is not None else print)
    outcome = run_tune(cfg, opts, say=say, console=console)
    out = Path(cfg.output_dir)
    if console is not None:
        from rich.console import Console

        from gsv_ray.console import WIDTH

        Console(file=console.out, width=WIDTH).print(results_table(outcome))
    for line in failure_lines(outcome):
        say(line)
    files = write_results(outcome, out)
    best_exports: list[Path] = []
    shutil.rmtree(out / "best", ignore_errors=True)  # ours: a resumed search's best may be another trial
    if outcome.best is not None and outcome.best.export_paths:
        trial_dir = out / "trials" / outcome.best.trial_id
        for p in map(Path, outcome.best.export_paths):
            dest = out / "best" / p.relative_to(trial_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest)
            best_exports.append(dest)
    wandb_dir = out  # W&B writes under $WANDB_DIR when set, else <-o>/wandb
    log_summary_run(outcome, project=cfg.wandb_project, mode=cfg.wandb_mode, dir=wandb_dir, group=outcome.name,
                    png_path=files.get("png"))
    from gsv_ray.console import shown

    say(f"results: {shown(files['json'])}, {shown(files['png'])}")
    if console is not None and console.used:
        say(f"log (Ray, W&B): {shown(console.log_file)}")
    if outcome.interrupted:
        say(f"interrupted: resume with the same command plus --resume (tune run {outcome.name})")
    if outcome.best is not None:  # the last lines: what to use, where it is, how to upload the runs
        b = outcome.best
        peak = cfg.peak_lr(outcome.stage) / cfg.lr_scale * b.lr_scale
        say(f"best: lr_scale {b.lr_scale:.4g} (peak LR {peak:.3g}), warmup {b.warmup_steps}: val loss "
            f"{b.best_val_loss:.4g} at step {b.best_step}")
    for p in best_exports:
        say(f"best weights: {shown(p)}")
    runs = offline_runs(out)
    if runs:
        say(f"W&B: {len(runs)} offline runs; upload: wandb sync {shown(out / 'wandb')}/offline-run-*")
    return TuneRun(outcome=outcome, results=files, best_exports=best_exports)


def make_demo_inputs(root: Path, *, seed: int = 0) -> dict[str, Path]:
    """A synthetic experiment folder and a small SoVITS v2 ``old.pth`` + base D in the real formats.

    The generator is GPT-SoVITS's v2 architecture at narrowed widths (as the reference fixtures
    are), so the demo trains in minutes on a laptop CPU; every file is what GPT-SoVITS writes.
    """
    import torch

    from gsv_ray.data.synthetic import make_synthetic_experiment
    from gsv_ray.io.writers import atomic_write, write_sovits_export
    from gsv_ray.models.sovits import MultiPeriodDiscriminator, SoVITSConfig, SoVITSGenerator
    from gsv_ray.resources import s2_config

    root.mkdir(parents=True, exist_ok=True)
    data = root / "logs" / "demo"
    if not (data / "2-name2text.txt").is_file():
        make_synthetic_experiment(data, version="v2", num_utterances=24, seed=seed)
    old = root / "SoVITS_weights_v2" / "demo_e8_s200.pth"
    base_d = root / "pretrained" / "s2D_demo.pth"
    if not old.is_file():
        s2 = s2_config("v2")
        s2["model"].update(inter_channels=32, hidden_channels=32, filter_channels=64, n_layers=2,
                           upsample_initial_channel=32, gin_channels=32)
        s2.update(name="demo", version="v2")
        torch.manual_seed(seed)
        g = SoVITSGenerator(SoVITSConfig.from_s2_config(s2, "v2", mrte_hidden_channels=32, ref_hidden_channels=32,
                                                        kmeans_iters=1))
        sd = g.state_dict()
        sd["quantizer.vq.layers.0._codebook.inited"].fill_(1.0)  # a trained model's codebook is initialised
        sd["quantizer.vq.layers.0._codebook.embed"].normal_()
        write_sovits_export(old, sd, config=s2, info="8epoch_200iteration", version="v2")
        d = MultiPeriodDiscriminator("v2", width_divisor=32)
        atomic_write(base_d, lambda f: torch.save({"weight": d.state_dict()}, f))
    gpt = root / "GPT_weights_v2" / "demo-e15.ckpt"
    if not gpt.is_file():  # a small GPT (2 layers, 64 wide) in GPT-SoVITS's export format
        from gsv_ray.io.writers import write_gpt_export
        from gsv_ray.models.gpt import T2SConfig, Text2SemanticDecoder, to_upstream_keys
        from gsv_ray.resources import s1_config

        s1 = s1_config("v2")
        s1["model"].update(embedding_dim=64, hidden_dim=64, head=4, n_layer=2, linear_units=256)
        torch.manual_seed(seed)
        model = Text2SemanticDecoder(T2SConfig.from_s1_config(s1))
        write_gpt_export(gpt, to_upstream_keys(model.state_dict()), config=s1, info="GPT-e15")
    return {"data": data, "init": old, "base_d": base_d, "gpt": gpt}


def demo_config(root: Path, *, fast: bool = False) -> tuple[TrainConfig, TuneOptions]:
    from gsv_ray.train.config import load_config

    inputs = make_demo_inputs(root)
    name, n = "demo", 1
    while (root / "runs" / name).exists():  # run the demo again: a new run beside the old one (never over it)
        n += 1
        name = f"demo-{n}"
    cfg = load_config(None, init=str(inputs["init"]), base_d=str(inputs["base_d"]), data=str(inputs["data"]),
                      output_dir=str(root / "runs" / name), max_steps=6 if fast else 24, batch_size=4,
                      val_every=2 if fast else 6, val_fraction=0.15, audio_samples=1, wandb_mode=None)
    opts = TuneOptions(num_samples=2 if fast else 4, lr_scale_range=(0.05, 1.0), warmup_choices=[0, 2] if fast else [0, 6],
                       max_concurrent=2, name=name)
    return cfg, opts
