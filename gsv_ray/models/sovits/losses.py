"""Stage-2 (SoVITS v1/v2/v2Pro/v2ProPlus) training losses, numerically as GPT-SoVITS computes them.

GPT-SoVITS trains the decoder as a least-squares GAN (HiFi-GAN/VITS recipe): the discriminator
pushes real logits to 1 and generated ones to 0, the generator pushes generated logits to 1 and
matches the discriminator's intermediate features, a mel L1 term (weight ``c_mel`` = 45) keeps the
audio on target, and the VITS KL term (weight ``c_kl`` = 1) ties the posterior to the text prior.

Sums run sub-discriminator by sub-discriminator in the same order as upstream (not via one
reduction) so float32 results match upstream bit for bit. Every term is computed in float32
(as upstream's ``.float()`` casts do), so the functions are safe to call on fp16/bf16 outputs.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from gsv_ray.models.sovits.config import C_KL, C_MEL

__all__ = [
    "C_MEL",
    "C_KL",
    "discriminator_loss",
    "generator_loss",
    "feature_loss",
    "kl_loss",
    "mel_l1_loss",
    "GeneratorLosses",
    "generator_total_loss",
]


def discriminator_loss(
    real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """LSGAN discriminator loss: sum over sub-discriminators of ``mean((1 - D(y))^2) + mean(D(y_hat)^2)``.

    Returns ``(total, real_terms, fake_terms)``. Unlike upstream (which returns Python floats via
    ``.item()``, a device sync per sub-discriminator every step) the per-term lists hold detached
    0-d tensors; call ``float()`` on them when logging.
    """
    total: torch.Tensor | float = 0.0
    r_terms, g_terms = [], []
    for dr, dg in zip(real_logits, fake_logits):
        r = torch.mean((1 - dr.float()) ** 2)
        g = torch.mean(dg.float() ** 2)
        total = total + (r + g)
        r_terms.append(r.detach())
        g_terms.append(g.detach())
    return total, r_terms, g_terms  # type: ignore[return-value]


def generator_loss(fake_logits: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """LSGAN generator loss: sum of ``mean((1 - D(y_hat))^2)``; also the per-discriminator terms."""
    total: torch.Tensor | float = 0.0
    terms = []
    for dg in fake_logits:
        term = torch.mean((1 - dg.float()) ** 2)
        terms.append(term)
        total = total + term
    return total, terms  # type: ignore[return-value]


def feature_loss(
    fmap_real: Sequence[Sequence[torch.Tensor]], fmap_fake: Sequence[Sequence[torch.Tensor]]
) -> torch.Tensor:
    """Feature matching: ``2 * sum`` over discriminators and layers of ``mean|f_real - f_fake|``.

    The real features are detached (they are targets, the discriminator is not trained by this
    term); the factor 2 is upstream's fixed weight.
    """
    total: torch.Tensor | float = 0.0
    for layers_r, layers_g in zip(fmap_real, fmap_fake):
        for fr, fg in zip(layers_r, layers_g):
            total = total + torch.mean(torch.abs(fr.float().detach() - fg.float()))
    return total * 2  # type: ignore[return-value]


def kl_loss(
    z_p: torch.Tensor, logs_q: torch.Tensor, m_p: torch.Tensor, logs_p: torch.Tensor, z_mask: torch.Tensor
) -> torch.Tensor:
    """VITS KL between the flowed posterior sample and the text prior, averaged over valid frames.

    ``sum[(logs_p - logs_q - 0.5) + 0.5 (z_p - m_p)^2 exp(-2 logs_p)] / sum(z_mask)``: a one-sample
    estimate of KL(q || p), since ``z_p`` is a sample of ``q`` pushed through the flow. Shapes
    ``[B, C, T]`` with ``z_mask`` ``[B, 1, T]``; note the divisor counts frames, not channels.
    """
    z_p, logs_q, m_p, logs_p, z_mask = (t.float() for t in (z_p, logs_q, m_p, logs_p, z_mask))
    kl = logs_p - logs_q - 0.5
    kl = kl + 0.5 * ((z_p - m_p) ** 2) * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * z_mask) / torch.sum(z_mask)


def mel_l1_loss(y_mel: torch.Tensor, y_hat_mel: torch.Tensor) -> torch.Tensor:
    """Unweighted mean absolute log-mel error. ``s2_train.py`` multiplies it by ``c_mel`` (45);
    :func:`generator_total_loss` does that, callers logging the raw L1 use this directly.

    ``y_mel`` is the real mel (from the linear spectrogram) sliced to the generated segment,
    ``y_hat_mel`` the mel of the generated audio; both ``[B, n_mels, segment_frames]``.
    """
    return F.l1_loss(y_mel, y_hat_mel)


class GeneratorLosses(NamedTuple):
    """Generator-step losses; ``mel`` and ``kl`` already carry their weights, as upstream logs them."""

    total: torch.Tensor
    gen: torch.Tensor
    fm: torch.Tensor
    mel: torch.Tensor
    kl: torch.Tensor
    gen_terms: list[torch.Tensor]


def generator_total_loss(
    fake_logits: Sequence[torch.Tensor],
    fmap_real: Sequence[Sequence[torch.Tensor]],
    fmap_fake: Sequence[Sequence[torch.Tensor]],
    y_mel: torch.Tensor,
    y_hat_mel: torch.Tensor,
    z_p: torch.Tensor,
    logs_q: torch.Tensor,
    m_p: torch.Tensor,
    logs_p: torch.Tensor,
    z_mask: torch.Tensor,
    kl_ssl: torch.Tensor | float = 0.0,
    c_mel: float = C_MEL,
    c_kl: float = C_KL,
) -> GeneratorLosses:
    """``loss_gen + loss_fm + c_mel * L1(mel) + kl_ssl + c_kl * KL``, summed in ``s2_train.py``'s order.

    ``kl_ssl`` is the quantizer commitment loss returned by the generator's forward; with the
    frozen quantizer GPT-SoVITS always uses it is 0, but it is added (weight 1) as upstream does.
    Call with the discriminator outputs of the *non-detached* generated audio.
    """
    loss_mel = mel_l1_loss(y_mel, y_hat_mel) * c_mel
    loss_kl = kl_loss(z_p, logs_q, m_p, logs_p, z_mask) * c_kl
    loss_fm = feature_loss(fmap_real, fmap_fake)
    loss_gen, gen_terms = generator_loss(fake_logits)
    total = loss_gen + loss_fm + loss_mel + kl_ssl * 1 + loss_kl
    return GeneratorLosses(total, loss_gen, loss_fm, loss_mel, loss_kl, gen_terms)
