"""How far one GPT optimizer step moves each weight, per choice of ``--optimizer`` and ``--lr-scale``,
relative to upstream's stage 1 (ScaledAdam at the 0.002 it really trains with).

Run: ``python benchmarks/gpt_step_size.py [--init GPT.ckpt] [--steps 8]``. Every choice trains the
same model from the same weights on the same batches (dropout off, fp32, CPU); after ``--steps``
optimizer steps the mean per-element |update| of the last half of the steps is taken per tensor,
and the median over the tensors of each kind is divided by upstream's. Without ``--init`` the model
is a freshly initialised full-size v2 GPT (24 layers, 512 wide); with it, your own weights (the
ratio for AdamW is about ``lr / (upstream lr x RMS of the tensor)``, so it depends on them). The
warmup is left out: these are the steps at the peak LR.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from gsv_ray.models.gpt import T2SConfig, Text2SemanticDecoder
from gsv_ray.train.config import UPSTREAM_BASE_LR
from gsv_ray.train.gpt import make_gpt_optimizer

CHOICES = (
    ("upstream (ScaledAdam, 0.002)", "scaledadam", 1.0),
    ("scaledadam, --lr-scale 1", "scaledadam", 1.0),
    ("scaledadam, --lr-scale 0.1", "scaledadam", 0.1),
    ("adamw, --lr-scale 1", "adamw", 1.0),
    ("adamw, --lr-scale 0.1", "adamw", 0.1),
)
KINDS = ("weight matrices", "embeddings", "LayerNorm weights", "biases")


def kind(name: str, p: torch.Tensor) -> str | None:
    if "embeddings" in name:
        return "embeddings"
    if p.ndim >= 2:
        return "weight matrices"
    if p.numel() == 1:
        return None  # the two positional scalars: not a kind
    return "biases" if name.endswith("bias") else "LayerNorm weights"


def model_and_weights(init: str | None) -> tuple[T2SConfig, dict[str, torch.Tensor]]:
    if init is None:
        cfg = T2SConfig.default("v2")
        torch.manual_seed(0)
        return cfg, Text2SemanticDecoder(cfg).state_dict()
    from gsv_ray.rebuild import rebuild

    rebuilt = rebuild(init, task="train")
    return rebuilt.resolved.gpt.model, rebuilt.gpt


def batches(cfg: T2SConfig, n: int = 4, size: int = 4) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        phones, semantic = 40, 120
        out.append(
            (
                torch.randint(1, cfg.phoneme_vocab_size, (size, phones), generator=g),
                torch.full((size,), phones),
                torch.randint(0, cfg.vocab_size - 1, (size, semantic), generator=g),
                torch.full((size,), semantic),
                torch.randn(size, 1024, phones, generator=g) * 0.1,
            )
        )
    return out


def per_element_steps(cfg, weights, data, optimizer: str, lr: float, steps: int) -> dict[str, float]:
    """Mean |update| per element over the last half of ``steps``, per tensor."""
    import dataclasses

    model = Text2SemanticDecoder(dataclasses.replace(cfg, fixed_dropout=0.0, embedding_dropout=0.0)).train()
    model.load_state_dict(weights)
    opt = make_gpt_optimizer(optimizer, list(model.parameters()), lr)
    moved = {n: 0.0 for n, _ in model.named_parameters()}
    for s in range(steps):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        model(*data[s % len(data)]).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if s >= steps // 2:
            for n, p in model.named_parameters():
                moved[n] += float((p.detach() - before[n]).abs().mean()) / (steps - steps // 2)
    return moved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--init", help="a GPT .ckpt to measure on (default: a fresh full-size v2 GPT)")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg, weights = model_and_weights(args.init)
    data = batches(cfg)
    base = UPSTREAM_BASE_LR["gpt"]
    names = {n: kind(n, p) for n, p in Text2SemanticDecoder(cfg).named_parameters()}
    results = {
        label: per_element_steps(cfg, weights, data, opt, base * scale, args.steps) for label, opt, scale in CHOICES
    }
    upstream = results[CHOICES[0][0]]
    print(
        f"model: {args.init or 'fresh full-size v2 GPT'}; {args.steps} steps; per-element step / upstream's "
        "(median over the tensors of each kind)"
    )
    print("| choice | " + " | ".join(KINDS) + " |")
    print("|---|" + "---|" * len(KINDS))
    for label, _, _ in CHOICES[1:]:
        cells = []
        for k in KINDS:
            ratios = [results[label][n] / upstream[n] for n, kk in names.items() if kk == k and upstream[n] > 0]
            cells.append(f"{statistics.median(ratios):.2g}x" if ratios else "-")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
