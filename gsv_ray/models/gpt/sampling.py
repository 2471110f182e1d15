"""Next-token sampling of the stage-1 GPT, in GPT-SoVITS's order of operations.

Order (upstream ``logits_to_probs`` + ``multinomial_sample_one_no_sync``): repetition penalty on
every token already in the sequence, top-p, temperature, top-k, softmax, then the "exponential
race" ``argmax(p / q)`` with ``q ~ Exp(1)``, which is an exact draw from ``p`` and becomes a plain
argmax when only one token survives (``top_k=1``).
"""

from __future__ import annotations

import torch


def apply_repetition_penalty(logits: torch.Tensor, previous: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make every token in ``previous`` less likely: negative logits times ``penalty``, others divided.

    Each distinct token is penalised once, however often it occurs. Returns a new tensor.
    """
    logits = logits.clone()
    if penalty == 1.0 or previous.numel() == 0:
        return logits
    previous = previous.long()
    score = logits.gather(1, previous)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(1, previous, score)


def filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter: drop tokens once the cumulative probability before them exceeds ``top_p``.

    Upstream's rule: a token goes when the cumulative probability *including* it is above
    ``top_p``, except the most likely token, which always stays.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=True)
    cum_probs = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
    remove_sorted = cum_probs > top_p
    remove_sorted[:, 0] = False
    remove = remove_sorted.scatter(1, sorted_idx, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def filter_top_k(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Keep tokens whose logit is at least the ``top_k``-th largest (ties kept); ``None``/<=0: all."""
    if top_k is None or top_k <= 0:
        return logits
    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
    return torch.where(logits < kth, float("-inf"), logits)


def sample_next_token(
    logits: torch.Tensor,
    previous: torch.Tensor | None = None,
    *,
    top_k: int | None = None,
    top_p: float = 1.0,
    temperature: float = 1.0,
    repetition_penalty: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row of ``logits`` [B, V].

    Returns ``(tokens [B, 1] int64, penalised_logits [B, V])``. The penalised logits are what
    upstream's EOS check looks at (its sampler applies the penalty in place).
    """
    penalised = logits if previous is None else apply_repetition_penalty(logits, previous, repetition_penalty)
    scores = filter_top_p(penalised, top_p)
    scores = scores / max(temperature, 1e-5)
    scores = filter_top_k(scores, top_k)
    probs = torch.softmax(scores, dim=-1)
    q = torch.empty_like(probs).exponential_(1.0, generator=generator)
    tokens = torch.argmax(probs / q, dim=-1, keepdim=True)
    return tokens.long(), penalised
