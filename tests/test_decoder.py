"""The captioning decoder: shapes, gradients, the doubly stochastic term, padding, overfitting a tiny batch."""
import pytest
import torch

from showattend.captioning.data import collate_captions
from showattend.captioning.decoder import Decoder, caption_loss, doubly_stochastic_penalty
from showattend.captioning.model import Captioner, ModelConfig
from showattend.vocab import Vocab

VARIANTS = [dict(score="additive", selector=True), dict(score="general", selector=True),
            dict(score="dot", selector=False)]


def tiny_batch(B=4, L=6, D=8, V=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, L, D, generator=g)
    caps = []
    for b in range(B):
        n = 3 + b % 3
        caps.append((feats[b], torch.tensor([1] + torch.randint(4, V, (n,), generator=g).tolist() + [2])))
    return collate_captions(caps)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v["score"])
def test_forward_shapes_and_backward_reaches_every_parameter(variant):
    feats, caps, lengths = tiny_batch()
    dec = Decoder(12, 8, embed_dim=8, hidden_dim=8, attention_dim=5, **variant)
    out = dec(feats, caps, lengths)
    B, T = caps.shape
    assert out.logits.shape == (B, T - 1, 12) and out.alphas.shape == (B, T - 1, 6)
    assert torch.equal(out.mask.sum(1), lengths - 1)
    assert torch.allclose(out.alphas.sum(-1)[out.mask], torch.ones(int(out.mask.sum())), atol=1e-5)
    assert (out.alphas[~out.mask] == 0).all() and (out.betas[~out.mask] == 0).all()
    loss, _, _ = caption_loss(out, caps)
    loss.backward()
    for name, p in dec.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_padding_does_not_change_the_loss():
    """Appending a longer caption (more padding for the others) leaves their per-word loss unchanged."""
    torch.manual_seed(0)
    dec = Decoder(12, 8, embed_dim=8, hidden_dim=8, attention_dim=5, dropout=0.0).eval()
    feats, caps, lengths = tiny_batch(B=3)
    out = dec(feats, caps, lengths)
    padded = torch.cat([caps, torch.zeros(3, 4, dtype=torch.long)], 1)  # extra padding columns
    out2 = dec(feats, padded, lengths)
    assert torch.allclose(caption_loss(out, caps)[1], caption_loss(out2, padded)[1], atol=1e-6)
    # garbage in the padded positions must not matter either
    garbage = padded.clone()
    garbage[garbage == 0] = 7
    out3 = dec(feats, garbage, lengths)
    assert torch.allclose(caption_loss(out, caps)[1], caption_loss(out3, garbage)[1], atol=1e-6)


def test_doubly_stochastic_penalty_by_hand():
    # one caption, 2 steps, 3 locations: totals per location (0.5+0.25, 0.5+0.25, 0+0.5) = (.75, .75, .5)
    alphas = torch.tensor([[[0.5, 0.5, 0.0], [0.25, 0.25, 0.5]]])
    expected = ((1 - 0.75) ** 2 + (1 - 0.75) ** 2 + (1 - 0.5) ** 2) / 3
    assert doubly_stochastic_penalty(alphas).item() == pytest.approx(expected)
    # its floor with T=2, L=3 is (1 - 2/3)^2, reached by uniform attention
    assert doubly_stochastic_penalty(torch.full((1, 2, 3), 1 / 3)).item() == pytest.approx((1 / 3) ** 2)


def test_gate_is_a_scalar_per_step():
    dec = Decoder(12, 8, embed_dim=8, hidden_dim=8, attention_dim=5)
    assert dec.f_beta.out_features == 1  # the paper's scalar β, not a vector gate


def test_unsorted_batch_is_rejected():
    feats, caps, lengths = tiny_batch()
    with pytest.raises(ValueError, match="sorted"):
        Decoder(12, 8, embed_dim=8, hidden_dim=8)(feats, caps.flip(0), lengths.flip(0))


def test_overfits_a_tiny_batch_and_decodes_it():
    torch.manual_seed(0)
    words = ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "cat", "runs", "sleeps", "on", "grass", "sofa"]
    vocab = Vocab(words)
    sents = [["a", "dog", "runs", "on", "grass"], ["a", "cat", "sleeps", "on", "a", "sofa"],
             ["a", "dog", "sleeps"], ["a", "cat", "runs", "on", "grass"]]
    feats = torch.randn(4, 6, 16)
    batch = collate_captions([(feats[i], torch.tensor(vocab.encode(s))) for i, s in enumerate(sents)])
    dec = Decoder(len(vocab), 16, embed_dim=32, hidden_dim=32, attention_dim=16, dropout=0.0)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    for _ in range(150):
        out = dec(*batch)
        loss, ce, _ = caption_loss(out, batch[1], ds_lambda=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ce.item() < 0.05
    cap = Captioner(dec, vocab, ModelConfig(), device="cpu")
    for beam in (1, 3):
        got = [r.words for r in cap.decode(feats, beam_size=beam, max_len=10)]
        assert got == sents
