"""The shared attention core: hand-computed scores, masking, shapes, the once-per-image key projection."""
import math

import pytest
import torch

from showattend.attention import SCORES, Attention, masked_softmax, sample_locations


def _set(linear, weight, bias=None):
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        if bias is not None:
            linear.bias.copy_(torch.tensor(bias, dtype=torch.float32))


def test_dot_score_by_hand():
    att = Attention(2, 2, score="dot")
    q = torch.tensor([[1.0, 2.0]])
    k = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    out = att(q, att.project_keys(k), k)
    e = torch.tensor([1.0, 2.0, 3.0])  # q.k_i
    expected = torch.exp(e) / torch.exp(e).sum()
    assert torch.allclose(out.alpha[0], expected, atol=1e-6)
    assert torch.allclose(out.context[0], expected @ k[0], atol=1e-6)


def test_general_score_by_hand():
    att = Attention(2, 3, score="general")
    _set(att.W, [[1.0, 0.0, 2.0], [0.0, -1.0, 0.0]])  # W: K=3 -> Q=2
    q = torch.tensor([[0.5, 1.0]])
    k = torch.tensor([[[1.0, 1.0, 1.0], [0.0, 2.0, 0.0]]])
    # q^T W k: W k_1 = [3, -1] -> 0.5*3 - 1 = 0.5 ; W k_2 = [0, -2] -> -2
    scores = att.scores(q, att.project_keys(k))
    assert torch.allclose(scores, torch.tensor([[0.5, -2.0]]), atol=1e-6)


def test_additive_score_by_hand():
    att = Attention(1, 1, attention_dim=2, score="additive")
    _set(att.U, [[1.0], [2.0]], [0.0, 0.5])
    _set(att.W, [[1.0], [-1.0]])
    _set(att.v, [[1.0, 3.0]])
    q = torch.tensor([[0.2]])
    k = torch.tensor([[[1.0], [-1.0]]])
    e = [1 * math.tanh(0.2 + a) + 3 * math.tanh(-0.2 + 2 * a + 0.5) for a in (1.0, -1.0)]
    assert torch.allclose(att.scores(q, att.project_keys(k)), torch.tensor([e]), atol=1e-6)


@pytest.mark.parametrize("score", SCORES)
def test_shapes_sum_to_one_and_mask(score):
    torch.manual_seed(0)
    B, L, D = 3, 5, 4
    att = Attention(D, D, attention_dim=6, score=score)
    keys = torch.randn(B, L, D)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 1, 0, 1, 0]], dtype=torch.bool)
    out = att(torch.randn(B, D), att.project_keys(keys), keys, mask)
    assert out.context.shape == (B, D) and out.alpha.shape == (B, L)
    assert torch.allclose(out.alpha.sum(-1), torch.ones(B), atol=1e-6)
    assert (out.alpha[~mask] == 0).all()
    # masked keys do not change the context: dropping them gives the same result
    row = 1
    sub = keys[row:row + 1, :2]
    q = torch.randn(1, D)
    full = att(q, att.project_keys(keys[row:row + 1]), keys[row:row + 1], mask[row:row + 1])
    short = att(q, att.project_keys(sub), sub)
    assert torch.allclose(full.context, short.context, atol=1e-6)
    assert torch.allclose(full.alpha[:, :2], short.alpha, atol=1e-6)


def test_fully_masked_row_gives_zeros_not_nan():
    alpha = masked_softmax(torch.randn(2, 3), torch.tensor([[0, 0, 0], [1, 0, 1]], dtype=torch.bool))
    assert torch.equal(alpha[0], torch.zeros(3))
    assert torch.allclose(alpha[1].sum(), torch.tensor(1.0))


def test_key_projection_not_recomputed_per_step():
    att = Attention(4, 4, score="additive")
    calls = []
    att.U.register_forward_hook(lambda *a: calls.append(1))
    keys = torch.randn(2, 3, 4)
    projected = att.project_keys(keys)
    for _ in range(5):
        att(torch.randn(2, 4), projected, keys)
    assert len(calls) == 1


def test_hard_attention_returns_the_sampled_annotation():
    torch.manual_seed(0)
    att = Attention(4, 4, score="dot")
    keys = torch.randn(6, 3, 4)
    out = att(torch.randn(6, 4), keys, keys, hard=True)
    assert out.location.shape == (6,)
    assert torch.equal(out.context, keys[torch.arange(6), out.location])


def test_sample_locations_follows_alpha():
    g = torch.Generator().manual_seed(0)
    alpha = torch.tensor([[0.1, 0.6, 0.3]]).expand(20000, 3)
    freq = torch.bincount(sample_locations(alpha, g), minlength=3).float() / 20000
    assert torch.allclose(freq, alpha[0], atol=0.015)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown attention score"):
        Attention(2, 2, score="cosine")
    with pytest.raises(ValueError, match="query_dim == key_dim"):
        Attention(2, 3, score="dot")


def test_the_additive_score_is_v_tanh_in_value_and_gradient():
    """The additive score computes v·tanh(x) as 2 v·σ(2x) − Σv in place (faster): the same function, and the
    same gradients, as the literal v·tanh(U a + W h)."""
    from showattend.attention import _additive_scores

    g = torch.Generator().manual_seed(0)
    k, q, v = (torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in ((3, 5, 4), (3, 4),
                                                                                           (1, 4)))
    literal = torch.nn.functional.linear(torch.tanh(k + q.unsqueeze(1)), v).squeeze(-1)
    assert torch.allclose(_additive_scores(k, q, v).double(), literal, atol=1e-12)
    assert torch.autograd.gradcheck(lambda k, q, v: _additive_scores(k, q, v).double(), (k, q, v))
    w = torch.randn(3, 5, dtype=torch.float64)
    ours = torch.autograd.grad((_additive_scores(k, q, v).double() * w).sum(), (k, q, v))
    theirs = torch.autograd.grad((literal * w).sum(), (k, q, v))
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(ours, theirs))
    x = torch.linspace(-12, 12, 2001)  # fp32 over the range tanh saturates in
    one = torch.ones(1, 1)
    assert (_additive_scores(x.view(1, -1, 1), torch.zeros(1, 1), one).double() - torch.tanh(x.double())).abs().max() < 3e-7




@pytest.mark.parametrize("score", ["additive", "general", "dot"])
def test_queries_sharing_a_key_set_equal_the_expanded_keys(score):
    """g queries per key set (the beams of a search) against keys and values given once per input: the same as
    repeating them for every query."""
    torch.manual_seed(0)
    B, g, L, Q, D = 3, 4, 5, 6, 6
    att = Attention(Q, D, 7, score)
    values = torch.randn(B, L, D)
    keys = att.project_keys(values)
    h = torch.randn(B * g, Q)
    mask = torch.rand(B, L) > 0.3
    mask[:, 0] = True
    shared = att(h, keys, values, mask)
    expanded = att(h, keys.repeat_interleave(g, 0), values.repeat_interleave(g, 0), mask.repeat_interleave(g, 0))
    assert torch.allclose(shared.alpha, expanded.alpha, atol=1e-6)
    assert torch.allclose(shared.context, expanded.context, atol=1e-5)
    where = torch.randint(0, L, (B * g,))
    hard = att(h, keys, values, hard=True, location=where)
    assert torch.equal(hard.context, values.repeat_interleave(g, 0)[torch.arange(B * g), where])
