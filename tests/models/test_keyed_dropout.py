"""KeyedDropout is nn.Dropout until given per-item generators; then each item's masks depend on its
generator only, whatever batch it is in (what makes accumulation and N workers equal one batch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gsv_ray.models.dropout import KeyedDropout, utterance_dropout
from gsv_ray.models.gpt.modules import SelfAttention, TransformerStack


def _gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_without_keys_it_is_nn_dropout_bit_for_bit():
    """Same draws from the global RNG, same output, no state_dict entries, identity in eval."""
    x = torch.randn(3, 5, 7)
    ours, theirs = KeyedDropout(0.3), nn.Dropout(0.3)
    torch.manual_seed(11)
    a = ours(x)
    torch.manual_seed(11)
    assert torch.equal(a, theirs(x)) and not torch.equal(a, x)
    assert ours.state_dict() == {} and ours.extra_repr() == theirs.extra_repr()
    assert torch.equal(ours.eval()(x), x)


def test_an_items_mask_is_the_same_in_any_batch():
    """Item b's mask comes from generator b alone: a batch of 4 equals two batches of 2; masks are
    drawn in call order (the second call differs from the first); eval and p = 0 ignore the keys."""
    drop = nn.Sequential(KeyedDropout(0.5), KeyedDropout(0.5))
    x = torch.ones(4, 6, 8)
    rng = torch.get_rng_state()
    with utterance_dropout(drop, _gens(1, 2, 3, 4)):
        whole = drop(x)
    with utterance_dropout(drop, _gens(1, 2)):
        first = drop(x[:2])
    with utterance_dropout(drop, _gens(3, 4)):
        second = drop(x[2:])
    assert torch.equal(whole, torch.cat([first, second])) and set(whole.unique().tolist()) <= {0.0, 4.0}
    assert torch.equal(torch.get_rng_state(), rng)  # nothing drawn from the global RNG
    assert all(m.generators is None for m in drop)  # cleared on exit
    with utterance_dropout(drop.eval(), _gens(1, 2, 3, 4)):
        assert torch.equal(drop(x), x)


def test_gpt_attention_with_keys_computes_what_sdpa_computes():
    """The explicit attention used for keyed masks is SDPA's (without dropout: eval mode)."""
    torch.manual_seed(0)
    attn = SelfAttention(16, 4, 0.1).eval()
    x = torch.randn(2, 5, 16)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    q, k, v = (attn._heads(t) for t in F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1))
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(attn._explicit_attention(q, k, v, mask), want, atol=1e-6)


def test_gpt_layers_with_keys_train_each_item_alike_in_any_batch():
    """The whole stack (attention probabilities, FFN, residual dropouts) in training with keys: items
    0-1 of a batch of 4 get exactly the outputs of a batch of 2."""
    torch.manual_seed(0)
    stack = TransformerStack(16, 4, 32, 2, 0.1).train()
    x = torch.randn(4, 5, 16)
    with utterance_dropout(stack, _gens(7, 8, 9, 10)):
        whole, _ = stack(x)
    with utterance_dropout(stack, _gens(7, 8)):
        part, _ = stack(x[:2])
    assert torch.allclose(whole[:2], part, atol=1e-6)
    plain, _ = stack.eval()(x)
    assert not torch.allclose(whole, plain, atol=1e-3)  # dropout really applied
