"""The stage-1 GPT of GPT-SoVITS: phonemes (+ BERT features) -> semantic tokens.

One sequence per item: ``[text positions | semantic positions]``. Text positions see every text
position; semantic positions see every text position and the semantic positions up to their
own (causal). Each part has its own sine positions starting at 0. The last text position predicts
the first semantic token, each semantic position the next one, the last one EOS.

Keys are bare (``bert_proj.weight`` ...); upstream files prefix them with ``model.`` (see
:func:`gsv_ray.models.gpt.to_upstream_keys` / :func:`~gsv_ray.models.gpt.from_upstream_keys`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gsv_ray.resources import BERT_DIM

from .config import T2SConfig
from .modules import KV, SinePositionalEmbedding, TokenEmbedding, TransformerStack
from .sampling import sample_next_token

#: Upstream forbids EOS during the first 11 decoding steps (so at least ~0.4 s is generated).
MIN_STEPS_BEFORE_EOS = 11
#: Upstream's hard cap on decoding steps.
MAX_DECODE_STEPS = 1500


def attention_mask(
    text_len: int,
    semantic_len: int,
    *,
    text_pad: torch.Tensor | None = None,
    semantic_pad: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Bool mask [B or 1, 1, L, L] (True = may attend) over ``[text | semantic]``, L = sum of lengths.

    ``text_pad`` / ``semantic_pad`` ([B, len], True = padding) hide those *keys* from every query.
    """
    total = text_len + semantic_len
    idx = torch.arange(total, device=device)
    query, key = idx[:, None], idx[None, :]
    # Text queries see the text; semantic queries see the text and earlier/same semantic positions.
    allowed = (key < text_len) | ((query >= text_len) & (key <= query))
    allowed = allowed[None, None]
    if text_pad is not None or semantic_pad is not None:
        b = (text_pad if text_pad is not None else semantic_pad).shape[0]
        if text_pad is None:
            text_pad = torch.zeros(b, text_len, dtype=torch.bool, device=device)
        if semantic_pad is None:
            semantic_pad = torch.zeros(b, semantic_len, dtype=torch.bool, device=device)
        key_pad = torch.cat([text_pad, semantic_pad], dim=1)
        allowed = allowed & ~key_pad[:, None, None, :]
    return allowed


def right_padding(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[B, width] True where position >= length (items padded at the end)."""
    return torch.arange(width, device=lengths.device)[None, :] >= lengths[:, None]


def left_padding(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[B, width] True where position < width - length (items padded at the start)."""
    return torch.arange(width, device=lengths.device)[None, :] < (width - lengths)[:, None]


def top_k_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int, ignore_index: int) -> torch.Tensor:
    """Micro top-k accuracy over all positions whose target is not ``ignore_index`` (float32).

    Same number as torchmetrics' ``MulticlassAccuracy(top_k=k, average="micro",
    ignore_index=...)`` on ``logits`` [B, N, V] and ``targets`` [B, N]; 0 when nothing is counted.
    """
    with torch.no_grad():
        top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
        hit = (top == targets.unsqueeze(-1)).any(dim=-1)
        valid = targets != ignore_index
        counted = valid.sum()
        if counted == 0:
            return torch.zeros((), dtype=torch.float32, device=logits.device)
        return (hit & valid).sum().to(torch.float32) / counted.to(torch.float32)


@dataclass
class T2SOutput:
    """Teacher-forced pass: ``loss`` (summed CE), ``acc`` (top-3, EOS ignored, detached),
    ``logits`` [B, T_sem + 1, vocab] and ``targets`` [B, T_sem + 1]."""

    loss: torch.Tensor
    acc: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor


@dataclass
class T2SDecodeResult:
    """Decoding result: ``tokens`` [1, prompt + new] int64 (prompt included), ``idx`` the last
    step index as upstream returns it (0 without prompt), ``step_logits`` raw per-step logits
    [1, vocab] (only with ``keep_logits=True``)."""

    tokens: torch.Tensor
    idx: int
    step_logits: list[torch.Tensor] = field(default_factory=list)


class Text2SemanticDecoder(nn.Module):
    """GPT-SoVITS's ``Text2SemanticDecoder`` (stage 1), post-norm, key-compatible (bare keys)."""

    def __init__(self, config: T2SConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.hidden_dim
        p = config.fixed_dropout
        # Registration order = upstream state_dict order.
        self.bert_proj = nn.Linear(BERT_DIM, config.embedding_dim)
        emb, emb_p = config.embedding_dim, config.embedding_dropout
        self.ar_text_embedding = TokenEmbedding(config.phoneme_vocab_size, emb, emb_p)
        self.ar_text_position = SinePositionalEmbedding(emb, p)
        self.ar_audio_embedding = TokenEmbedding(config.vocab_size, emb, emb_p)
        self.ar_audio_position = SinePositionalEmbedding(emb, p)
        self.h = TransformerStack(dim, config.num_heads, config.ffn_dim, config.num_layers, p)
        self.ar_predict_layer = nn.Linear(dim, config.vocab_size, bias=False)

    @property
    def eos(self) -> int:
        return self.config.eos

    # ------------------------------------------------------------------ embeddings

    def embed_text(self, phoneme_ids: torch.Tensor, bert_feature: torch.Tensor) -> torch.Tensor:
        """Phoneme ids [B, T] and BERT features [B, 1024, T] -> [B, T, dim]."""
        x = self.ar_text_embedding(phoneme_ids)
        x = x + self.bert_proj(bert_feature.transpose(1, 2))
        return self.ar_text_position(x)

    def embed_semantic(self, semantic_ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Semantic ids [B, T] (first one at semantic position ``start``) -> [B, T, dim]."""
        return self.ar_audio_position(self.ar_audio_embedding(semantic_ids), start)

    # ------------------------------------------------------------------ training

    def teacher_forced_logits(
        self,
        phoneme_ids: torch.Tensor,
        phoneme_lens: torch.Tensor,
        semantic_ids: torch.Tensor,
        semantic_lens: torch.Tensor,
        bert_feature: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, T_sem + 1, vocab] from position ``T_text - 1`` on, and targets [B, T_sem + 1].

        Inputs are what the s1 collate makes: phonemes right-padded with 0, semantic ids
        right-padded (with anything; padding becomes EOS here), BERT [B, 1024, T_text] zero-padded.
        Targets are the semantic ids with EOS appended and at every padded position; padded
        positions are *not* excluded from the loss (upstream behaviour).

        Mask quirk, reproduced on purpose: upstream's ``forward_old`` hides text keys as if the
        phonemes were **left**-padded (``make_pad_mask_left``), although the collate pads them on
        the **right**. So for a shorter item the first ``T_text - len`` real phonemes are hidden
        and its padding positions (phoneme 0 + zero BERT + position) are visible. Models trained
        by GPT-SoVITS were trained this way; changing it would change the loss.
        """
        text_len, semantic_len = phoneme_ids.shape[1], semantic_ids.shape[1]
        x = self.embed_text(phoneme_ids, bert_feature)

        sem_pad = right_padding(semantic_lens, semantic_len)
        inputs = semantic_ids.long().masked_fill(sem_pad, self.eos)
        eos_col = torch.full_like(inputs[:, :1], self.eos)
        targets = torch.cat([inputs, eos_col], dim=1)
        y = self.embed_semantic(inputs)

        mask = attention_mask(
            text_len,
            semantic_len,
            text_pad=left_padding(phoneme_lens, text_len),  # the quirk, see docstring
            semantic_pad=sem_pad,
            device=x.device,
        )
        hidden, _ = self.h(torch.cat([x, y], dim=1), mask)
        logits = self.ar_predict_layer(hidden[:, text_len - 1 :])
        return logits, targets

    def forward(
        self,
        phoneme_ids: torch.Tensor,
        phoneme_lens: torch.Tensor,
        semantic_ids: torch.Tensor,
        semantic_lens: torch.Tensor,
        bert_feature: torch.Tensor,
    ) -> T2SOutput:
        """Upstream ``forward_old`` (the default, non-DPO training step): summed cross-entropy
        (loud on long utterances by design) and top-3 accuracy ignoring EOS targets."""
        logits, targets = self.teacher_forced_logits(
            phoneme_ids, phoneme_lens, semantic_ids, semantic_lens, bert_feature
        )
        loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="sum")
        acc = top_k_accuracy(logits.detach(), targets, k=3, ignore_index=self.eos)
        return T2SOutput(loss=loss, acc=acc, logits=logits, targets=targets)

    # ------------------------------------------------------------------ decoding

    def _next_hidden_full(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Last hidden state by running the whole ``[text | semantic]`` sequence (no cache)."""
        seq = torch.cat([x, self.embed_semantic(y)], dim=1)
        mask = attention_mask(x.shape[1], y.shape[1], device=x.device)
        hidden, _ = self.h(seq, mask)
        return hidden[:, -1]

    # long: upstream infer_panel's sampling rules, kept in its order so the two can be compared step by step
    @torch.no_grad()
    def generate(
        self,
        phoneme_ids: torch.Tensor,
        bert_feature: torch.Tensor,
        prompts: torch.Tensor | None = None,
        *,
        top_k: int | None = None,
        top_p: float = 1.0,
        temperature: float = 1.0,
        repetition_penalty: float = 1.35,
        early_stop_num: int = -1,
        max_steps: int = MAX_DECODE_STEPS,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        keep_logits: bool = False,
    ) -> T2SDecodeResult:
        """Autoregressive decoding with upstream ``infer_panel``'s rules (batch size 1).

        Per step: EOS is not allowed during the first 11 steps; the repetition penalty applies
        to every token already in the sequence (prompt included); then top-p, temperature,
        top-k and a draw (see :mod:`.sampling`); ``top_k=1`` is greedy and deterministic. The
        drawn token is appended; decoding stops when more than ``early_stop_num`` tokens are new
        (keeping that token), when the drawn token or the arg-max of the penalised logits is
        EOS (dropping the drawn token), or after ``max_steps`` steps. An empty result becomes
        one token ``0``. ``use_cache=False`` recomputes the whole sequence each step (reference).
        """
        if phoneme_ids.shape[0] != 1:
            raise ValueError(f"decoding handles one item at a time, got batch {phoneme_ids.shape[0]}")
        x = self.embed_text(phoneme_ids, bert_feature)
        if prompts is None:
            y = torch.zeros(1, 0, dtype=torch.long, device=x.device)
        else:
            y = prompts.to(device=x.device, dtype=torch.long)
        prefix_len = y.shape[1]

        past: list[KV] | None = None
        if use_cache:
            seq = torch.cat([x, self.embed_semantic(y)], dim=1)
            hidden, past = self.h(seq, attention_mask(x.shape[1], prefix_len, device=x.device))
            last = hidden[:, -1]
        else:
            last = self._next_hidden_full(x, y)

        step_logits: list[torch.Tensor] = []
        idx = 0
        for idx in range(max_steps):
            logits = self.ar_predict_layer(last)
            if keep_logits:
                step_logits.append(logits)
            if idx < MIN_STEPS_BEFORE_EOS:
                logits = logits[:, : self.eos]
            token, penalised = sample_next_token(
                logits,
                y,
                top_k=top_k,
                top_p=top_p,
                temperature=temperature,
                repetition_penalty=repetition_penalty,
                generator=generator,
            )
            y = torch.cat([y, token], dim=1)

            stop = early_stop_num != -1 and y.shape[1] - prefix_len > early_stop_num
            if int(penalised.argmax(dim=-1)[0]) == self.eos or int(token[0, 0]) == self.eos:
                stop = True
                y = y[:, :-1]
            if stop or idx == max_steps - 1:
                if y.shape[1] == 0:
                    y = torch.zeros_like(token)
                break

            if use_cache:
                step = self.embed_semantic(y[:, -1:], start=y.shape[1] - 1)
                hidden, past = self.h(step, None, past)
                last = hidden[:, -1]
            else:
                last = self._next_hidden_full(x, y)

        return T2SDecodeResult(tokens=y, idx=0 if prompts is None else idx, step_logits=step_logits)

    def infer_panel(
        self,
        phoneme_ids: torch.Tensor,
        phoneme_lens: torch.Tensor | None,
        prompts: torch.Tensor | None,
        bert_feature: torch.Tensor,
        top_k: int | None = None,
        top_p: float = 1.0,
        early_stop_num: int = -1,
        temperature: float = 1.0,
        repetition_penalty: float = 1.35,
        **kwargs,
    ) -> tuple[torch.Tensor, int]:
        """Upstream's call shape: returns ``(tokens, idx)``. ``phoneme_lens`` is unused there too."""
        result = self.generate(
            phoneme_ids,
            bert_feature,
            prompts,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            repetition_penalty=repetition_penalty,
            early_stop_num=early_stop_num,
            **kwargs,
        )
        return result.tokens, result.idx
