"""The SoVITS generator (GPT-SoVITS ``SynthesizerTrn`` for v1, v2, v2Pro and v2ProPlus).

A VITS model whose prior comes from semantic tokens and phonemes:

* ``ssl_proj`` + ``quantizer``: HuBERT features -> semantic codes / codebook vectors;
* ``ref_enc``: reference spectrogram -> timbre embedding ``ge`` (Pro: plus a projected speaker-
  verification embedding through ``sv_emb``, then ``prelu``; ``ge_to512`` gives the text side);
* ``enc_p``: prior ``(m_p, logs_p)`` from codebook vectors, phonemes and ``ge``;
* ``enc_q``: posterior ``z`` from the linear spectrogram (training only);
* ``flow``: ``z <-> z_p``; ``dec``: HiFi-GAN from ``z`` to waveform.

Submodule names, registration order and parameter shapes follow upstream so ``state_dict()`` has
upstream's keys in upstream's order. Randomness (posterior noise, the training window, decoding
noise) can be passed in explicitly; by default it is drawn with torch's RNG.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gsv_ray.models.sovits.commons import length_mask, rand_slice_segments
from gsv_ray.models.sovits.config import SoVITSConfig
from gsv_ray.models.sovits.hifigan import HiFiGANGenerator
from gsv_ray.models.sovits.reference import MelStyleEncoder
from gsv_ray.models.sovits.semantic import build_quantizer, build_ssl_proj
from gsv_ray.models.sovits.text_encoder import TextEncoder
from gsv_ray.models.sovits.wavenet import PosteriorEncoder, ResidualCouplingBlock

__all__ = ["SoVITSGenerator", "GeneratorOutput", "LatentStats", "DecodeTrace", "POSTERIOR_PREFIX"]

# State-dict prefix of the training-only posterior encoder; GPT-SoVITS exports drop these keys.
POSTERIOR_PREFIX = "enc_q."


class LatentStats(NamedTuple):
    z: torch.Tensor  # posterior sample [B, inter, T]
    z_p: torch.Tensor  # flow(z)
    m_p: torch.Tensor  # prior mean
    logs_p: torch.Tensor  # prior log-std
    m_q: torch.Tensor  # posterior mean
    logs_q: torch.Tensor  # posterior log-std


class GeneratorOutput(NamedTuple):
    """Training forward result; unpacks like upstream's 7-tuple."""

    y_hat: torch.Tensor  # [B, 1, segment_frames * hop] waveform of the sliced window
    kl_ssl: torch.Tensor  # quantizer commitment loss (0 when the quantizer is frozen)
    ids_slice: torch.Tensor  # [B] window start frames
    x_mask: torch.Tensor  # [B, 1, T]
    z_mask: torch.Tensor  # [B, 1, T] (same mask; upstream returns it twice)
    stats: LatentStats
    quantized: torch.Tensor  # codebook vectors fed to the prior, at the spectrogram frame rate


class DecodeTrace(NamedTuple):
    """Everything ``decode`` computes before the waveform (for inspection and tests)."""

    ge: torch.Tensor | None  # [B, gin, 1] conditioning of flow and decoder
    ge_text: torch.Tensor | None  # [B, mrte_hidden, 1] what the text encoder's MRTE receives
    x: torch.Tensor
    m_p: torch.Tensor
    logs_p: torch.Tensor
    y_mask: torch.Tensor
    z_p: torch.Tensor
    z: torch.Tensor  # flow^-1(z_p)


class SoVITSGenerator(nn.Module):
    # long: only declares upstream's layers, in upstream's order (the order of the state_dict's keys)
    def __init__(self, config: SoVITSConfig):
        super().__init__()
        c = config
        self.config = c
        self.version = c.version
        self.is_pro = c.is_pro
        self.freeze_quantizer = bool(c.freeze_quantizer)
        self.segment_frames = c.segment_frames
        self.semantic_frame_rate = c.semantic_frame_rate

        self.enc_p = TextEncoder(
            c.inter_channels,
            c.hidden_channels,
            c.filter_channels,
            c.n_heads,
            c.n_layers,
            c.kernel_size,
            c.p_dropout,
            n_symbols=c.n_symbols,
            ssl_dim=c.ssl_dim,
            mrte_hidden_channels=c.mrte_hidden_channels,
            mrte_heads=c.mrte_heads,
            window_size=c.attn_window_size,
        )
        self.dec = HiFiGANGenerator(
            c.inter_channels,
            c.resblock,
            c.resblock_kernel_sizes,
            c.resblock_dilation_sizes,
            c.upsample_rates,
            c.upsample_initial_channel,
            c.upsample_kernel_sizes,
            gin_channels=c.gin_channels,
        )
        self.enc_q = PosteriorEncoder(
            c.spec_channels,
            c.inter_channels,
            c.hidden_channels,
            c.posterior_kernel_size,
            c.posterior_dilation_rate,
            c.posterior_layers,
            gin_channels=c.gin_channels,
        )
        self.flow = ResidualCouplingBlock(
            c.inter_channels,
            c.hidden_channels,
            c.flow_kernel_size,
            c.flow_dilation_rate,
            c.flow_layers,
            n_flows=c.n_flows,
            gin_channels=c.gin_channels,
        )
        self.ref_enc = MelStyleEncoder(
            c.ref_in_channels, c.ref_hidden_channels, c.gin_channels, c.ref_kernel_size, c.ref_heads, c.ref_dropout
        )
        self.ssl_proj = build_ssl_proj(c.ssl_dim, c.semantic_frame_rate)
        self.quantizer = build_quantizer(
            c.ssl_dim,
            c.codebook_size,
            c.n_codebooks,
            c.kmeans_iters,
            c.vq_decay,
            c.vq_epsilon,
            c.vq_dead_code_threshold,
        )
        if self.is_pro:
            self.sv_emb = nn.Linear(c.sv_emb_channels, c.gin_channels)
            self.ge_to512 = nn.Linear(c.gin_channels, c.ge_text_channels)
            self.prelu = nn.PReLU(num_parameters=c.gin_channels)

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> SoVITSGenerator:
        """As ``nn.Module.train``, but with ``freeze_quantizer`` the semantic front end
        (``ssl_proj``, ``quantizer``) stays in eval mode: hard codewords, no EMA updates and a zero
        commitment loss, which is what upstream's training forward arranges.

        Its parameters keep ``requires_grad=True`` on purpose: upstream's optimizer holds them
        (they just never receive a gradient), and resuming needs the same parameter layout.
        """
        super().train(mode)
        if self.freeze_quantizer:
            self.ssl_proj.eval()
            self.quantizer.eval()
        return self

    # ----------------------------------------------------------- components
    def reference_embedding(
        self,
        refer: torch.Tensor,
        refer_lengths: torch.Tensor | None = None,
        sv_emb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear spectrogram ``[B, spec_channels, T]`` (+ Pro: ``sv_emb`` [B, 20480]) ->
        ``(ge [B, gin, 1], ge_text [B, mrte_hidden, 1])``; ``ge_text is ge`` for v1/v2."""
        if refer_lengths is None:
            refer_lengths = torch.full((refer.size(0),), refer.size(2), dtype=torch.long, device=refer.device)
        mask = length_mask(refer_lengths, refer.size(2), refer.dtype)
        ge = self.ref_enc(refer[:, : self.config.ref_in_channels] * mask, mask)
        if not self.is_pro:
            return ge, ge
        if sv_emb is None:
            raise ValueError(
                f"{self.version} needs a speaker-verification embedding (sv_emb [B, {self.config.sv_emb_channels}])"
            )
        ge = self.prelu(ge + self.sv_emb(sv_emb).unsqueeze(-1))
        return ge, self.project_ge_text(ge)

    def project_ge_text(self, ge: torch.Tensor) -> torch.Tensor:
        """Pro: ``ge_to512`` over the channel axis; v1/v2: identity."""
        if not self.is_pro:
            return ge
        return self.ge_to512(ge.transpose(1, 2)).transpose(1, 2)

    def quantize(self, ssl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """HuBERT features -> ``(codebook vectors [B, ssl_dim, T25], codes [n_q, B, T25], commit_loss)``.

        Runs in float32 outside autocast; with ``freeze_quantizer`` without gradient, in eval mode.
        """
        if self.freeze_quantizer and (self.ssl_proj.training or self.quantizer.training):
            self.ssl_proj.eval()
            self.quantizer.eval()
        with (
            torch.autocast(device_type=ssl.device.type, enabled=False),
            torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_quantizer),
        ):
            x = self.ssl_proj(ssl.to(self.ssl_proj.weight.dtype))
            quantized, codes, commit_loss, _ = self.quantizer(x, layers=[0])
        return quantized, codes, commit_loss

    def _to_frame_rate(self, quantized: torch.Tensor) -> torch.Tensor:
        if self.semantic_frame_rate == "25hz":
            return F.interpolate(quantized, size=int(quantized.shape[-1] * 2), mode="nearest")
        return quantized

    @torch.no_grad()
    def extract_latent(self, ssl: torch.Tensor) -> torch.Tensor:
        """HuBERT features ``[B, 768, T50]`` -> semantic codes ``[B, n_q, T25]``.

        Note the axis order differs from what ``decode`` takes (``[n_q, B, T]``), as upstream.
        """
        x = self.ssl_proj(ssl.to(self.ssl_proj.weight.dtype))
        _, codes, _, _ = self.quantizer(x)
        return codes.transpose(0, 1)

    # -------------------------------------------------------------- training
    def forward(
        self,
        ssl: torch.Tensor,
        spec: torch.Tensor,
        spec_lengths: torch.Tensor,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        sv_emb: torch.Tensor | None = None,
        *,
        eps: torch.Tensor | None = None,
        slice_u: torch.Tensor | None = None,
    ) -> GeneratorOutput:
        """Training step of upstream's ``SynthesizerTrn.forward``.

        ``ssl`` [B, 768, T] HuBERT features (T = spectrogram frames), ``spec`` [B, 1025, T],
        ``text`` [B, L] phone ids, ``sv_emb`` [B, 20480] for Pro. ``eps`` ([B, inter, T]) replaces
        the posterior's normal draw, ``slice_u`` ([B] in [0, 1)) the uniform draw of the window.
        """
        y_mask = length_mask(spec_lengths, spec.size(2), spec.dtype)
        ge = self.ref_enc(spec[:, : self.config.ref_in_channels] * y_mask, y_mask)
        ge_text = ge
        if self.is_pro:
            if sv_emb is None:
                raise ValueError(f"{self.version} training needs sv_emb [B, {self.config.sv_emb_channels}]")
            ge = self.prelu(ge + self.sv_emb(sv_emb).unsqueeze(-1))
            ge_text = self.project_ge_text(ge)

        quantized, _, commit_loss = self.quantize(ssl)
        quantized = self._to_frame_rate(quantized)

        _, m_p, logs_p, y_mask = self.enc_p(quantized, spec_lengths, text, text_lengths, ge_text)
        z, m_q, logs_q, y_mask = self.enc_q(spec, spec_lengths, g=ge, eps=eps)
        z_p = self.flow(z, y_mask, g=ge)
        z_slice, ids_slice = rand_slice_segments(z, spec_lengths, self.segment_frames, u=slice_u)
        y_hat = self.dec(z_slice, g=ge)
        return GeneratorOutput(
            y_hat, commit_loss, ids_slice, y_mask, y_mask, LatentStats(z, z_p, m_p, logs_p, m_q, logs_q), quantized
        )

    # ------------------------------------------------------------- inference
    def decode_condition(
        self,
        refer: torch.Tensor | Sequence[torch.Tensor] | None,
        sv_emb: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(ge, ge_text)`` of one reference or the mean over several (one ``sv_emb`` each for Pro)."""
        if refer is None:
            return None, None
        if isinstance(refer, torch.Tensor):
            return self.reference_embedding(refer, sv_emb=sv_emb)
        if self.is_pro:
            if sv_emb is None or isinstance(sv_emb, torch.Tensor) or len(sv_emb) != len(refer):
                raise ValueError("with several references, pass one sv_emb per reference")
            ges = [self.reference_embedding(r, sv_emb=s)[0] for r, s in zip(refer, sv_emb)]
        else:
            ges = [self.reference_embedding(r)[0] for r in refer]
        ge = torch.stack(ges, 0).mean(0)
        return ge, self.project_ge_text(ge)

    @torch.no_grad()
    def decode_latent(
        self,
        codes: torch.Tensor,
        text: torch.Tensor,
        refer: torch.Tensor | Sequence[torch.Tensor] | None,
        noise_scale: float = 0.5,
        speed: float = 1.0,
        sv_emb: torch.Tensor | Sequence[torch.Tensor] | None = None,
        *,
        noise: torch.Tensor | None = None,
    ) -> DecodeTrace:
        """Everything of ``decode`` up to the flow's output (see ``decode``)."""
        ge, ge_text = self.decode_condition(refer, sv_emb)
        batch = codes.size(1)
        quantized = self._to_frame_rate(self.quantizer.decode(codes))
        y_lengths = torch.full((batch,), quantized.size(2), dtype=torch.long, device=codes.device)
        text_lengths = torch.full((batch,), text.size(-1), dtype=torch.long, device=text.device)
        x, m_p, logs_p, y_mask = self.enc_p(quantized, y_lengths, text, text_lengths, ge_text, speed)
        if noise is None:
            noise = torch.randn_like(m_p)
        z_p = m_p + noise * torch.exp(logs_p) * noise_scale
        z = self.flow(z_p, y_mask, g=ge, reverse=True)
        return DecodeTrace(ge, ge_text, x, m_p, logs_p, y_mask, z_p, z)

    @torch.no_grad()
    def decode(
        self,
        codes: torch.Tensor,
        text: torch.Tensor,
        refer: torch.Tensor | Sequence[torch.Tensor] | None,
        noise_scale: float = 0.5,
        speed: float = 1.0,
        sv_emb: torch.Tensor | Sequence[torch.Tensor] | None = None,
        *,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Semantic codes + phonemes + reference(s) -> waveform ``[B, 1, samples]``.

        ``codes`` are ``[n_q, B, T25]`` (upstream's convention; ``extract_latent`` returns
        ``[B, n_q, T]``, the same thing for B = 1). ``refer``: one spectrogram ``[B, 1025, T]`` or a
        list (their embeddings are averaged); Pro also takes ``sv_emb`` (one per reference).
        ``noise`` replaces the standard-normal draw scaled by ``noise_scale``; ``speed`` > 1 is faster.
        """
        trace = self.decode_latent(codes, text, refer, noise_scale, speed, sv_emb, noise=noise)
        return self.dec(trace.z * trace.y_mask, g=trace.ge)
