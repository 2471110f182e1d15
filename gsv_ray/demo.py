"""``gsv-ray demo``: the main job on an embedded default, for a newcomer with nothing downloaded.

A small synthetic voice in GPT-SoVITS's own formats (an old SoVITS v2 export at narrowed widths, its
discriminator, a preprocessed experiment folder; a small GPT export too, for the examples), then
``gsv-ray tune`` over ``lr_scale`` and warmup on a local Ray, W&B offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gsv_ray.options import check, option
from gsv_ray.train.config import TrainConfig
from gsv_ray.tune.search import TuneOptions

HEADER = (
    "gsv-ray demo in {root}: a synthetic voice and {what}\n"
    "in GPT-SoVITS's formats; Ray Tune searches lr_scale and warmup on a local Ray,\n"
    "tracked in W&B offline."
)
#: What the demo continues, per version (HEADER's ``what``).
WHAT = {"v2": "a small SoVITS v2 old.pth", "v4": "a small v4 base + LoRA export"}


@dataclass(frozen=True)
class DemoOptions:
    """Where and how big a demo: the default takes about a minute on a laptop CPU; smaller ones are
    for a quick look (and the tests)."""

    dir: str = option("gsv-ray-demo", metavar="DIR", help="where to put everything")
    max_steps: int = option(24, low=2, metavar="N", help="steps per trial (validation every quarter)")
    num_samples: int = option(4, low=1, metavar="N", help="trials")
    version: str = option(
        "v2",
        choices=("v2", "v4"),
        help="the voice's SoVITS version: v2 (a GAN generator) or v4 (a CFM decoder fine-tuned with LoRA)",
    )

    @property
    def val_every(self) -> int:
        return max(2, self.max_steps // 4)

    @property
    def warmup_choices(self) -> list[int]:
        """No warmup, or one validation interval long: always shorter than the trials (--max-steps 2 too)."""
        return sorted({0, min(self.val_every, self.max_steps - 1)})


def make_demo_inputs(root: Path, *, seed: int = 0) -> dict[str, Path]:
    """A synthetic experiment folder and a small SoVITS v2 ``old.pth`` + base D in the real formats.

    The generator is GPT-SoVITS's v2 architecture at narrowed widths (as the reference fixtures
    are), so the demo trains in minutes on a laptop CPU; every file is what GPT-SoVITS writes.
    """
    import torch

    from gsv_ray.atomic import atomic_write
    from gsv_ray.data.experiment import NAME2TEXT
    from gsv_ray.data.synthetic import make_synthetic_experiment
    from gsv_ray.io.writers import write_sovits_export
    from gsv_ray.models.sovits import MultiPeriodDiscriminator, SoVITSConfig, SoVITSGenerator
    from gsv_ray.resources import s2_config

    root.mkdir(parents=True, exist_ok=True)
    data = root / "logs" / "demo"
    if not (data / NAME2TEXT).is_file():
        make_synthetic_experiment(data, version="v2", num_utterances=24, seed=seed)
    old = root / "SoVITS_weights_v2" / "demo_e8_s200.pth"
    base_d = root / "pretrained" / "s2D_demo.pth"
    if not old.is_file():
        s2 = s2_config("v2")
        s2["model"].update(
            inter_channels=32,
            hidden_channels=32,
            filter_channels=64,
            n_layers=2,
            upsample_initial_channel=32,
            gin_channels=32,
        )
        s2.update(name="demo", version="v2")
        torch.manual_seed(seed)
        g = SoVITSGenerator(
            SoVITSConfig.from_s2_config(s2, "v2", mrte_hidden_channels=32, ref_hidden_channels=32, kmeans_iters=1)
        )
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


#: A narrow v3/v4 generator (upstream's architecture, small widths) for quick runs and the tests.
NARROW_V3 = {"inter_channels": 32, "hidden_channels": 32, "filter_channels": 64, "n_layers": 2, "gin_channels": 32}
NARROW_V3_WIDTHS = {
    "mrte_hidden_channels": 32,
    "ref_hidden_channels": 32,
    "bridge_channels": 64,
    "wns1_layers": 2,
    "dit": {
        "dim": 64,
        "depth": 2,
        "heads": 2,
        "dim_head": 32,
        "text_dim": 64,
        "conv_layers": 1,
        "conv_pos_groups": 4,
        "freq_embed_dim": 32,
    },
}


def make_v3_inputs(root: Path, version: str = "v4", *, lora_rank: int = 4, seed: int = 0) -> dict[str, Path]:
    """A narrow ``version`` base G (``s2Gv4.pth``-like: the plain 685-key model, fp16 "weight" +
    config) and a LoRA export trained on top of it (``..._e2_s40_l<rank>.pth``, tag ``"04"``), in
    GPT-SoVITS's formats, plus a synthetic experiment folder."""
    import torch

    from gsv_ray.atomic import atomic_write
    from gsv_ray.data.experiment import NAME2TEXT
    from gsv_ray.data.synthetic import make_synthetic_experiment
    from gsv_ray.io.writers import write_sovits_export
    from gsv_ray.models.sovits.v3 import SoVITSV3Config, SoVITSV3Generator, lora_export_state_dict
    from gsv_ray.resources import s2_config

    root.mkdir(parents=True, exist_ok=True)
    data = root / "logs" / f"demo-{version}"
    if not (data / NAME2TEXT).is_file():
        make_synthetic_experiment(data, version="v2", num_utterances=16, seed=seed)
    base = root / "pretrained" / f"s2G{version}_narrow.pth"
    lora = root / f"SoVITS_weights_{version}" / f"demo_e2_s40_l{lora_rank}.pth"
    if not (base.is_file() and lora.is_file()):
        s2 = s2_config(version)
        s2["model"].update(NARROW_V3, version=version)
        cfg = SoVITSV3Config.from_s2_config(s2, version, **NARROW_V3_WIDTHS)
        torch.manual_seed(seed)
        g = SoVITSV3Generator(cfg)
        sd = g.state_dict()
        sd["quantizer.vq.layers.0._codebook.inited"].fill_(1.0)
        sd["quantizer.vq.layers.0._codebook.embed"].normal_()
        fp16 = {k: v.detach().half() for k, v in sd.items()}
        atomic_write(base, lambda f: torch.save({"weight": fp16, "config": s2, "info": "pretrained"}, f))
        g.add_lora(lora_rank)
        with torch.no_grad():  # a trained adapter: B no longer zero
            for n, p in g.named_parameters():
                if ".lora_B." in n:
                    p.normal_(std=0.02)
        s2.update(name="demo", version=version)
        write_sovits_export(
            lora, lora_export_state_dict(g), config=s2, info="2epoch_40iteration", version=version, lora_rank=lora_rank
        )
    return {"data": data, "base": base, "init": lora}


def demo_root(size: DemoOptions) -> Path:
    """``--dir`` as a directory (created when missing), or one line saying why it cannot be one."""
    from gsv_ray.errors import usable_dir

    return usable_dir(size.dir, named="--dir", fix="give --dir a folder: a new one, or one where an earlier demo ran")


def demo_config(size: DemoOptions = DemoOptions()) -> tuple[TrainConfig, TuneOptions]:
    """The demo's training config and search (inputs made in ``size.dir`` on first use; a demo run
    again in the same folder is a new run beside the old one, never over it)."""
    from gsv_ray.train.config import load_config

    check(size)
    root = demo_root(size)

    name, n = ("demo" if size.version == "v2" else f"demo-{size.version}"), 1
    stem = name
    while (root / "runs" / name).exists():
        n += 1
        name = f"{stem}-{n}"
    if size.version == "v2":
        inputs = make_demo_inputs(root)
        files = dict(init=str(inputs["init"]), base_d=str(inputs["base_d"]))
    else:  # a LoRA export and its base, as GPT-SoVITS's v4 training leaves them
        inputs = make_v3_inputs(root, size.version)
        files = dict(init=str(inputs["init"]), base_g=str(inputs["base"]))
    cfg = load_config(
        None,
        **files,
        data=str(inputs["data"]),
        output_dir=str(root / "runs" / name),
        max_steps=size.max_steps,
        batch_size=4,
        val_every=size.val_every,
        val_fraction=0.15,
        audio_samples=1,
        wandb_mode=None,
    )
    opts = TuneOptions(
        num_samples=size.num_samples,
        lr_scale_range=(0.05, 1.0),
        warmup_choices=size.warmup_choices,
        max_concurrent=2,
        name=name,
    )
    return cfg, opts
