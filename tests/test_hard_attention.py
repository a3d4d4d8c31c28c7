"""Stochastic hard attention (Xu et al. §4.1): the REINFORCE estimator, baseline, entropy bonus, training."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from showattend.attention import (Attention, attention_entropy, location_log_prob, masked_softmax,
                                  sample_locations)
from showattend.captioning.data import collate_captions
from showattend.captioning.network import Decoder
from showattend.captioning.losses import (MovingAverageBaseline, caption_loss, hard_attention_loss,
                                          reinforce_surrogate)
from showattend.captioning.captioner import Captioner
from showattend.captioning.config import ModelConfig
from showattend.captioning.vocab import Vocab

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
    assert var_based < 0.2 * var_plain, (var_plain, var_based)


def _flat_grads(params):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])


def test_the_full_hard_loss_is_an_unbiased_estimate_of_the_gradient_of_eq_10():
    """On a tiny decoder (L = 3 locations, 2 predicted tokens) enumerate the 9 location sequences s, differentiate
    the lower bound L_s = Σ_s p(s | a) log p(y | s, a) (eq. 10) exactly, and compare the Monte-Carlo average of
    the gradient of :func:`hard_attention_loss` with it. With λ_r = |y| = 2 (the per-word reward times 2 is
    log p(y | s̃, a)), λ_e = 0 and any constant b, −|y| ∇loss estimates ∇L_s without bias (eq. 12). A flipped
    REINFORCE sign negates the attention parameters' gradient; a reward left in the graph adds
    log p(s̃) ∇ log p(y | s̃) to the decoder's."""
    torch.manual_seed(0)
    L, V, D = 3, 6, 4
    dec = Decoder(V, D, embed_dim=4, hidden_dim=5, attention_dim=4, dropout=0.0)
    with torch.no_grad():
        dec.attention.v.weight *= 4  # a peaked, location-dependent α
    feats = torch.randn(1, L, D) * 2
    caption, lengths = torch.tensor([[1, 4, 2]]), torch.tensor([3])  # <start> w <end>
    params = list(dec.parameters())
    bound = 0.0
    for s in itertools.product(range(L), repeat=2):
        out = dec(feats, caption, lengths, locations=torch.tensor([s]))
        log_lik = -F.cross_entropy(out.logits[0], caption[0, 1:], reduction="sum")  # log p(y | s, a)
        log_p_s = location_log_prob(out.alphas[0], torch.tensor(s)).sum()  # log p(s | a), α_2 depends on s_1
        bound = bound + log_p_s.exp() * log_lik
    bound.backward()
    exact = _flat_grads(params)
    baseline = float(bound.detach()) / 2  # a constant per-word baseline, near the mean reward
    N, R = 1000, 20  # R batches of N samples each
    estimates = []
    for _ in range(R):
        dec.zero_grad()
        out = dec(feats.expand(N, L, D), caption.expand(N, 3), lengths.expand(N), hard=True)
        loss, _, _, reward = hard_attention_loss(out, caption.expand(N, 3), baseline, reinforce_weight=2.0,
                                                 entropy_weight=0.0, ds_lambda=0.0)
        assert not reward.requires_grad
        loss.backward()
        estimates.append(-2 * _flat_grads(params))
    estimate = torch.stack(estimates).mean(0)
    is_att = torch.cat([torch.full((p.numel(),), any(p is q for q in dec.attention.parameters())) for p in params])
    assert exact[is_att].norm() > 0.2 * exact.norm()  # the attention's share (all from REINFORCE) is not negligible
    assert (estimate - exact).norm() < 0.03 * exact.norm()
    assert (estimate - exact)[is_att].norm() < 0.1 * exact[is_att].norm()


def test_no_gradient_reaches_the_baseline_or_through_the_sample():
    reward = torch.tensor([1.0, 2.0], requires_grad=True)
    logp = torch.tensor([-0.5, -1.0], requires_grad=True)
    reinforce_surrogate(logp, reward, 0.5).sum().backward()
    assert reward.grad is None and torch.allclose(logp.grad, torch.tensor([0.5, 1.5]))
    b = MovingAverageBaseline(0.9)
    b.update(torch.tensor([2.0], requires_grad=True))
    b.update(torch.tensor([4.0]))
    assert isinstance(b.value, torch.Tensor) and not b.value.requires_grad  # stays on the device, no sync
    assert float(b.value) == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)
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


# -- a synthetic pointing task -------------------------------------------------------------------------------
# Each image has L = 6 regions. For step t (t = 0, 1) one region, at a random place, holds a content word c_t
# (one-hot of K = 6) and a tag "for step t"; the other regions are blank. The caption is "c_0 c_1": the word at
# step t is whatever its tagged region contains, so a decoder must attend to that region to say it (chance is
# 1/K). f_init is zeroed and frozen so that h_0 cannot read the contents from the mean annotation vector.
P_L, P_K, P_T = 6, 6, 2


def _pointing_batch(n, g):
    content = torch.randint(0, P_K, (n, P_T), generator=g)  # (n, T) word ids - 4
    where = torch.stack([torch.randperm(P_L, generator=g)[:P_T] for _ in range(n)])  # (n, T) region of step t
    feats = torch.zeros(n, P_L, P_K + P_T + 1)
    feats[:, :, -1] = 1  # blank
    rows = torch.arange(n)
    for t in range(P_T):
        feats[rows, where[:, t]] = 0
        feats[rows, where[:, t], content[:, t]] = 1
        feats[rows, where[:, t], P_K + t] = 1
    batch = collate_captions([(feats[i], torch.tensor([1, *(4 + content[i]).tolist(), 2])) for i in range(n)])
    return batch, where  # all captions have the same length: collate keeps the order


def _train_pointing(attention, steps, reinforce_weight=0.1, seed=0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    dec = Decoder(4 + P_K, P_K + P_T + 1, embed_dim=16, hidden_dim=32, attention_dim=16, dropout=0.0)
    for layer in (dec.init_h, dec.init_c):
        torch.nn.init.zeros_(layer.weight)
        layer.weight.requires_grad_(False)
    opt = torch.optim.Adam([p for p in dec.parameters() if p.requires_grad], lr=1e-2)
    baseline = MovingAverageBaseline()
    for _ in range(steps):
        (feats, caps, lengths), _ = _pointing_batch(64, g)
        if attention == "soft":
            loss = caption_loss(dec(feats, caps, lengths), caps, ds_lambda=0.0)[0]
        else:  # pure REINFORCE: no expected-context minibatches that could teach α by backpropagation
            out = dec(feats, caps, lengths, hard=True)
            loss, _, _, reward = hard_attention_loss(out, caps, baseline.value, reinforce_weight, 0.002, 0.0)
            baseline.update(reward)
        opt.zero_grad()
        loss.backward()
        opt.step()
    (feats, caps, lengths), where = _pointing_batch(500, torch.Generator().manual_seed(99))
    with torch.no_grad():
        out = dec(feats, caps, lengths, hard=attention == "hard")  # a hard model reads its sampled region
    accuracy = (out.logits[:, :P_T].argmax(-1) == caps[:, 1:P_T + 1]).float().mean().item()
    pointing = (out.alphas[:, :P_T].argmax(-1) == where).float().mean().item()
    return accuracy, pointing


@pytest.mark.slow
@pytest.mark.parametrize("attention, steps, reinforce_weight, learns", [
    ("soft", 300, 0.0, True),
    ("hard", 800, 0.1, True),  # the authors' λ_r
    ("hard", 800, 0.0, False),  # without the REINFORCE term α never learns where to look
    ("hard", 800, -0.1, False),  # a REINFORCE term of the wrong sign learns to look away
])
def test_soft_and_hard_attention_learn_to_point(attention, steps, reinforce_weight, learns):
    accuracy, pointing = _train_pointing(attention, steps, reinforce_weight)
    if learns:
        assert accuracy > 0.95 and pointing > 0.95, (accuracy, pointing)
    else:
        assert accuracy < 0.5 and pointing < 0.5, (accuracy, pointing)  # chance: 1/6 (+ lucky samples)


def test_label_smoothing_reaches_the_hard_likelihood_term_but_not_the_reward():
    vocab, feats, batch = _toy()
    torch.manual_seed(0)
    dec = Decoder(len(vocab), 16, embed_dim=8, hidden_dim=8, attention_dim=8, dropout=0.0)
    torch.manual_seed(1)
    out = dec(*batch, hard=True)
    caps = batch[1]
    plain = hard_attention_loss(out, caps, 0.0, reinforce_weight=0.0, entropy_weight=0.0, ds_lambda=0.0)
    smooth = hard_attention_loss(out, caps, 0.0, reinforce_weight=0.0, entropy_weight=0.0, ds_lambda=0.0,
                                 label_smoothing=0.1)
    logits, gold = out.logits[out.mask], caps[:, 1:][out.mask]
    assert plain[0].item() == pytest.approx(F.cross_entropy(logits, gold).item(), rel=1e-5)
    assert smooth[0].item() == pytest.approx(F.cross_entropy(logits, gold, label_smoothing=0.1).item(), rel=1e-5)
    assert smooth[0].item() > plain[0].item()
    assert torch.equal(smooth[3], plain[3]) and smooth[1].item() == pytest.approx(plain[1].item())  # reward, CE


def test_sampled_searches_are_ranked_by_their_length_penalised_score(monkeypatch):
    """Of the sampled searches, a hard model keeps the caption with the best score (log p / n^p), not log p."""
    from showattend.captioning.captioner import CaptionResult

    vocab, feats, _ = _toy()
    cap = Captioner(Decoder(len(vocab), 16, embed_dim=8, hidden_dim=8), vocab, ModelConfig(), device="cpu")
    short = CaptionResult(["a", "dog"], -3.0, torch.zeros(3, 6), torch.zeros(3), (1, 6), True, -3.0 / 3)
    long = CaptionResult(["a", "dog", "runs", "on", "grass"], -3.6, torch.zeros(6, 6), torch.zeros(6), (1, 6),
                         True, -3.6 / 6)
    runs = iter([[short], [long]])
    calls = []

    def fake_decode(annotations, beam_size, max_len, length_penalty, allow_unk, generator):
        calls.append((length_penalty, isinstance(generator, torch.Generator)))
        return next(runs)

    monkeypatch.setattr(cap, "_decode", fake_decode)
    (best,) = cap.decode(feats[:1], beam_size=3, length_penalty=1.0, attention="hard", samples=2)
    assert best is long and calls == [(1.0, True), (1.0, True)]  # the shorter one has the higher log p
