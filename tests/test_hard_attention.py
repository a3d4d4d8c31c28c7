"""Stochastic hard attention (Xu et al. §4.1): the REINFORCE estimator, baseline, entropy bonus, training."""

import pytest
import torch

from showattend.attention import (Attention, attention_entropy, location_log_prob, masked_softmax,
                                  sample_locations)
from showattend.captioning.data import collate_captions
from showattend.captioning.decoder import (Decoder, MovingAverageBaseline, caption_loss, hard_attention_loss,
                                           reinforce_surrogate)
from showattend.captioning.model import Captioner, ModelConfig
from showattend.vocab import Vocab

REWARD = torch.tensor([5.0, 4.0, 6.5, 5.5])  # f(s) for L=4 locations; a large common offset, as log-likelihoods


def _estimates(theta, n, use_baseline, seed=0):
    """Per-sample REINFORCE gradients (n, L) of E_s[f(s)], through the library's own functions."""
    g = torch.Generator().manual_seed(seed)
    baseline = MovingAverageBaseline(0.9)
    grads = []
    for _ in range(n // 500):  # minibatches of 500 samples, the baseline updated between them (eq. 11)
        rows = theta.detach().repeat(500, 1).requires_grad_(True)  # one leaf row per sample
        alpha = masked_softmax(rows)  # (500, L)
        s = sample_locations(alpha, g)  # (500,)
        b = baseline.value if use_baseline else 0.0
        reinforce_surrogate(location_log_prob(alpha, s), REWARD[s], b).sum().backward()
        grads.append(rows.grad)  # row i: the gradient estimate of sample i
        if use_baseline:
            baseline.update(REWARD[s])
    return torch.cat(grads)


def test_reinforce_is_unbiased_and_the_baseline_reduces_variance():
    theta = torch.tensor([0.3, -0.5, 0.1, 0.8])
    t = theta.clone().requires_grad_(True)
    exact = torch.autograd.grad((torch.softmax(t, -1) * REWARD).sum(), t)[0]  # by enumeration of the L outcomes
    plain = _estimates(theta, 4000, use_baseline=False)
    based = _estimates(theta, 4000, use_baseline=True)
    for est in (plain, based):
        mean, sem = est.mean(0), est.std(0) / len(est) ** 0.5
        assert torch.all((mean - exact).abs() < 4 * sem + 1e-3), (mean, exact, sem)
    var_plain, var_based = plain.var(0).sum().item(), based.var(0).sum().item()
    print(f"REINFORCE gradient variance: no baseline {var_plain:.3f}, moving-average baseline {var_based:.3f}")
    assert var_based < 0.2 * var_plain


def test_no_gradient_reaches_the_baseline_or_through_the_sample():
    reward = torch.tensor([1.0, 2.0], requires_grad=True)
    logp = torch.tensor([-0.5, -1.0], requires_grad=True)
    reinforce_surrogate(logp, reward, 0.5).sum().backward()
    assert reward.grad is None and torch.allclose(logp.grad, torch.tensor([0.5, 1.5]))
    b = MovingAverageBaseline(0.9)
    b.update(torch.tensor([2.0], requires_grad=True))
    b.update(torch.tensor([4.0]))
    assert isinstance(b.value, float) and b.value == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)
    # the hard context is a selection: the attention parameters get no gradient from it
    att = Attention(4, 4, attention_dim=3)
    keys = torch.randn(5, 6, 4, requires_grad=True)
    out = att(torch.randn(5, 4), att.project_keys(keys), keys, hard=True)
    out.context.sum().backward()
    assert all(p.grad is None for p in att.parameters())
    assert keys.grad is not None


def test_entropy_by_hand():
    alpha = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    assert torch.allclose(attention_entropy(alpha), torch.tensor([0.6931472, 0.0]), atol=1e-6)


WORDS = ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "cat", "runs", "sleeps", "on", "grass", "sofa"]
SENTS = [["a", "dog", "runs", "on", "grass"], ["a", "cat", "sleeps", "on", "a", "sofa"],
         ["a", "dog", "sleeps"], ["a", "cat", "runs", "on", "grass"]]


def _toy(seed=0):
    torch.manual_seed(seed)
    vocab = Vocab(WORDS)
    feats = torch.randn(4, 6, 16)
    batch = collate_captions([(feats[i], torch.tensor(vocab.encode(s))) for i, s in enumerate(SENTS)])
    return vocab, feats, batch


def _train_hard(entropy_weight, steps, seed=0, expected_prob=0.0, sharpen=1.0):
    vocab, feats, batch = _toy(seed)
    dec = Decoder(len(vocab), 16, embed_dim=32, hidden_dim=32, attention_dim=16, dropout=0.0)
    with torch.no_grad():
        dec.attention.v.weight *= sharpen  # larger scores: a peaked α to start from
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    baseline = MovingAverageBaseline()
    for _ in range(steps):
        if torch.rand(()) < expected_prob:
            loss = caption_loss(dec(*batch), batch[1], 0.0)[0]
        else:
            out = dec(*batch, hard=True)
            loss, _, _, reward = hard_attention_loss(out, batch[1], baseline.value, 0.1, entropy_weight, 0.0)
            baseline.update(reward)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return dec, vocab, feats, batch


def test_entropy_bonus_raises_the_entropy_of_alpha():
    entropies = []
    for weight in (0.0, 0.5):
        dec, _, _, batch = _train_hard(weight, steps=15, sharpen=30.0)
        with torch.no_grad():
            out = dec(*batch)
        entropies.append(float((attention_entropy(out.alphas) * out.mask).sum() / out.mask.sum()))
    print(f"mean entropy of α after 15 steps: λ_e=0: {entropies[0]:.3f}, λ_e=0.5: {entropies[1]:.3f} nats")
    assert entropies[1] > entropies[0] + 0.1, entropies


def test_hard_decoder_overfits_a_tiny_batch():
    dec, vocab, feats, batch = _train_hard(0.002, steps=150, expected_prob=0.5)
    out = dec(*batch, hard=True)
    assert hard_attention_loss(out, batch[1], 0.0)[1].item() < 0.1
    cap = Captioner(dec, vocab, ModelConfig(attention="hard"), device="cpu")
    assert [r.words for r in cap.decode(feats, beam_size=3, max_len=10)] == SENTS


def test_hard_loss_needs_sampled_locations():
    _, _, batch = _toy()
    dec = Decoder(len(WORDS), 16, embed_dim=8, hidden_dim=8)
    with pytest.raises(ValueError, match="hard=True"):
        hard_attention_loss(dec(*batch), batch[1], 0.0)
