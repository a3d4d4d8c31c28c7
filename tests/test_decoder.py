"""The captioning decoder: shapes, gradients, the doubly stochastic term, padding, overfitting a tiny batch."""
import math

import pytest
import torch
import torch.nn.functional as F

from showattend.captioning.data import collate_captions
from showattend.captioning.network import Decoder, DecoderOutput, reference_forward
from showattend.captioning.losses import caption_loss, doubly_stochastic_penalty
from showattend.captioning.captioner import Captioner
from showattend.captioning.config import ModelConfig
from showattend.captioning.vocab import Vocab

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


# Two captions over L = 3 locations. Caption 0 has 2 real steps: totals per location (.75, .75, .5), deficits
# (1 - total)^2 = (.0625, .0625, .25). Caption 1 has 1 real step and 1 padded step (α = 0): totals (1, 0, 0),
# deficits (0, 1, 1). Σ_b Σ_i d_bi = 2.375 over B = 2 captions and N = 3 predicted words.
DS_ALPHAS = torch.tensor([[[0.5, 0.5, 0.0], [0.25, 0.25, 0.5]],
                          [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
DS_EXPECTED = {"mean": 2.375 / (2 * 3),  # mean over captions and locations
               "eq14": 2.375 / 3,  # Σ_i per caption, summed over the batch, per word
               "capgen": 2.375 * (2 / 3) / 3}  # (1/L) Σ_b Σ_i, times B/N


@pytest.mark.parametrize("normalisation", sorted(DS_EXPECTED))
def test_doubly_stochastic_penalty_by_hand(normalisation):
    assert doubly_stochastic_penalty(DS_ALPHAS, 3, normalisation).item() == pytest.approx(DS_EXPECTED[normalisation])


@pytest.mark.parametrize("normalisation", sorted(DS_EXPECTED))
def test_caption_loss_matches_each_definition(normalisation):
    """The loss (nats per word) times N is eq. 14 summed over the batch; times N/B it is capgen's cost."""
    lam = 0.7
    logits = torch.tensor([[[2.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0]], [[0, 0, 3.0, 0, 0], [9.0, 9, 9, 9, 9]]])
    mask = torch.tensor([[True, True], [True, False]])
    captions = torch.tensor([[1, 0, 1], [1, 2, 0]])  # targets: caption 0 -> (0, 1), caption 1 -> (2,)
    out = DecoderOutput(logits, DS_ALPHAS, mask, None, torch.zeros(2, 2))
    loss, ce, penalty = caption_loss(out, captions, lam, ds_normalisation=normalisation)
    nll = [-math.log(math.e ** 2 / (math.e ** 2 + 4)) - math.log(math.e / (math.e + 4)),  # caption 0
           -math.log(math.e ** 3 / (math.e ** 3 + 4))]  # caption 1 (its padded step is ignored)
    assert ce.item() == pytest.approx(sum(nll) / 3)
    assert penalty.item() == pytest.approx(DS_EXPECTED[normalisation])
    deficits = [0.375, 2.0]  # Σ_i d_bi per caption
    if normalisation == "eq14":  # Σ_b [-log p(y_b) + λ Σ_i d_bi]
        assert loss.item() * 3 == pytest.approx(sum(n + lam * d for n, d in zip(nll, deficits)))
    elif normalisation == "capgen":  # mean_b(-log p(y_b)) + λ (1/L) Σ_b Σ_i d_bi
        assert loss.item() * 3 / 2 == pytest.approx(sum(nll) / 2 + lam * sum(deficits) / 3)
    else:  # mean per word + λ mean over captions and locations
        assert loss.item() == pytest.approx(sum(nll) / 3 + lam * sum(deficits) / 6)
    with pytest.raises(ValueError, match="normalisation"):
        caption_loss(out, captions, lam, ds_normalisation="sum")


def test_gate_scales_the_context_by_a_scalar_beta():
    """§4.2.1: ẑ_t = β_t Σ_i α_ti a_i with one scalar β_t = σ(f_β(h_{t-1})) per step (not a vector gate)."""
    torch.manual_seed(0)
    dec = Decoder(12, 8, embed_dim=8, hidden_dim=8, attention_dim=5).eval()
    assert dec.f_beta.out_features == 1
    with torch.no_grad():
        dec.f_beta.weight.zero_()
        dec.f_beta.bias.fill_(math.log(0.25 / 0.75))  # β = σ(log(1/3)) = 0.25 exactly
    feats, caps, lengths = tiny_batch()
    keys = dec.attention.project_keys(feats)
    state = dec.init_state(feats)
    w = dec.step_weights()
    (h, c), z, att, beta = dec.recurrence(F.linear(dec.embedding(caps[:, 0]), w.words, w.bias), state, feats, keys, w)
    assert torch.allclose(beta, torch.full_like(beta, 0.25))
    assert torch.allclose(z, 0.25 * torch.bmm(att.alpha.unsqueeze(1), feats).squeeze(1), atol=1e-6)
    # the gated context is what the LSTM reads: feeding it the ungated context gives another h_t
    h_ungated, _ = dec.lstm(torch.cat([dec.embedding(caps[:, 0]), att.context], 1), state)
    h_gated, _ = dec.lstm(torch.cat([dec.embedding(caps[:, 0]), z], 1), state)
    assert torch.allclose(h, h_gated) and not torch.allclose(h, h_ungated, atol=1e-3)
    out = dec(feats, caps, lengths)
    assert torch.allclose(out.betas[out.mask], torch.full((int(out.mask.sum()),), 0.25))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_word_table_gives_the_steps_of_the_product_and_follows_the_weights(precision):
    """Decoding looks up W_e E_v + b in a (V, 4n) table instead of multiplying each embedding: every step's
    logits equal those of the product (fp32: to rounding; bf16: to bf16's), the table is made once, and it is
    made again when the embedding or the LSTM's input weights change in place (an optimizer step) or are
    loaded; it is refused where gradients are needed."""
    torch.manual_seed(0)
    dec = Decoder(12, 8, embed_dim=8, hidden_dim=8, attention_dim=5).eval()
    feats, caps, _ = tiny_batch()
    keys = dec.attention.project_keys(feats)

    def logits(word_table):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            w = dec.step_weights(word_table=word_table)
            return dec.step(caps[:, 1], dec.init_state(feats), feats, keys, weights=w)[0].float(), w.word_table

    plain, no_table = logits(False)
    looked_up, table = logits(True)
    assert no_table is None and table.shape == (12, 32)
    assert torch.allclose(plain, looked_up, atol=1e-5 if precision == "fp32" else 2e-2)
    assert logits(True)[1] is table  # cached
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "fp32"):
        dec.step_weights(word_table=True)  # a search in the other precision does not replace it
    assert logits(True)[1] is table
    with torch.no_grad():
        dec.lstm.bias_ih[0] += 1.0  # in place, as an optimizer does
    assert logits(True)[1] is not table
    assert torch.allclose(logits(False)[0], logits(True)[0], atol=1e-5 if precision == "fp32" else 2e-2)
    table = logits(True)[1]
    dec.load_state_dict({k: v + 0.1 for k, v in dec.state_dict().items()})
    assert logits(True)[1] is not table and torch.allclose(logits(False)[0], logits(True)[0],
                                                           atol=1e-5 if precision == "fp32" else 2e-2)
    with pytest.raises(RuntimeError, match="no_grad"):
        dec.step_weights(word_table=True)


def _word_table_of(dec):
    """W_e E + b computed directly, (V, 4n) fp32."""
    m = dec.embedding.embedding_dim
    return F.linear(dec.embedding.weight, dec.lstm.weight_ih[:, :m], dec.lstm.bias_ih + dec.lstm.bias_hh).detach()


@pytest.mark.parametrize("part", ["embedding.weight", "lstm.weight_ih", "lstm.bias_ih", "lstm.bias_hh"])
def test_the_word_table_follows_each_tensor_it_is_made_of(part):
    torch.manual_seed(0)
    dec = Decoder(12, 8, embed_dim=8, hidden_dim=8, attention_dim=5).eval()
    with torch.no_grad():
        table = dec.step_weights(word_table=True).word_table
        dec.get_parameter(part)[0] += 1.0
        new = dec.step_weights(word_table=True).word_table
    assert new is not table and torch.allclose(new, _word_table_of(dec), atol=1e-6)
    dec.get_parameter(part).data = dec.get_parameter(part).data + 1.0  # new storage, the same Parameter object
    with torch.no_grad():
        assert torch.allclose(dec.step_weights(word_table=True).word_table, _word_table_of(dec), atol=1e-6)


@pytest.mark.parametrize("update", ["adam-fused", "adam-foreach", "adam-for-loop", "sgd", "data-write"])
def test_the_word_table_follows_every_kind_of_parameter_update(update):
    """An optimizer step between two searches, whatever the optimizer: the fused Adam of the engine writes the
    parameters without bumping their version counters (a cache keyed on them kept a stale table), and so does
    a write through ``.data``."""
    torch.manual_seed(0)
    dec = Decoder(12, 8, embed_dim=8, hidden_dim=8, attention_dim=5)
    params = list(dec.parameters())
    kind = update.split("-")[-1]
    opt = (torch.optim.SGD(params, lr=0.5) if update == "sgd" else
           torch.optim.Adam(params, lr=0.1, fused=kind == "fused", foreach=kind == "foreach"))
    feats, caps, lengths = tiny_batch()
    for _ in range(3):
        with torch.no_grad():
            table = dec.step_weights(word_table=True).word_table.clone()
        if update == "data-write":
            dec.embedding.weight.data.add_(0.1)
        else:
            out = dec(feats, caps, lengths)
            out.logits.square().mean().backward()
            opt.step()
            opt.zero_grad()
        with torch.no_grad():
            new = dec.step_weights(word_table=True).word_table
        assert not torch.allclose(new, table, atol=1e-4)  # the weights moved, and the table with them
        assert torch.allclose(new, _word_table_of(dec), atol=1e-6)


def test_the_word_table_is_made_in_fp32_and_cast_per_dtype():
    """A bf16 search gets the fp32 table rounded to bf16 (not a bf16 product), and a later fp32 search gets the
    fp32 table (not the bf16 one)."""
    torch.manual_seed(0)
    dec = Decoder(12, 8, embed_dim=8, hidden_dim=8, attention_dim=5).eval()
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            t16 = dec.step_weights(word_table=True).word_table
        t32 = dec.step_weights(word_table=True).word_table
    assert t16.dtype == torch.bfloat16 and torch.equal(t16, _word_table_of(dec).to(torch.bfloat16))
    assert t32.dtype == torch.float32 and torch.allclose(t32, _word_table_of(dec), atol=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_captioner_decoding_uses_the_word_table(monkeypatch, precision):
    calls, real = [], Decoder._word_table
    monkeypatch.setattr(Decoder, "_word_table", lambda self, dtype: calls.append(dtype) or real(self, dtype))
    torch.manual_seed(0)
    vocab = Vocab(["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(8)])
    cap = Captioner(Decoder(12, 8, embed_dim=8, hidden_dim=8, attention_dim=5), vocab, ModelConfig(), device="cpu")
    cap.decode(torch.randn(2, 6, 8), beam_size=2, max_len=4, precision=precision)
    assert calls == [torch.bfloat16 if precision == "bf16" else torch.float32]


def test_unsorted_batch_is_rejected():
    feats, caps, lengths = tiny_batch()
    with pytest.raises(ValueError, match="sorted"):
        Decoder(12, 8, embed_dim=8, hidden_dim=8)(feats, caps.flip(0), lengths.flip(0))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_overfits_a_tiny_batch_and_decodes_it(precision):
    """Trained under bf16 autocast (what --precision bf16 does) the model fits the batch as in fp32 and decodes
    it in fp32."""
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
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
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


@pytest.mark.parametrize("score", ["additive", "general", "dot"])
@pytest.mark.parametrize("selector", [True, False])
@pytest.mark.parametrize("hard", [False, True])
def test_forward_equals_the_step_by_step_reference_in_values_and_gradients(score, selector, hard):
    """Decoder.forward arranges the arithmetic (word gates of all steps in one product, the products of h_{t-1}
    stacked, weight gradients formed once per batch); the literal per-step formulation with nn.LSTMCell must
    give the same logits, α, β and gradients of every parameter."""
    torch.manual_seed(0)
    D = 16
    dec = Decoder(30, D, embed_dim=12, hidden_dim=D if score == "dot" else 20, attention_dim=9, dropout=0.0,
                  score=score, selector=selector)
    feats = torch.randn(5, 7, D)
    caps = torch.randint(4, 30, (5, 9))
    lengths = [9, 8, 8, 5, 3]
    locs = torch.randint(0, 7, (5, 8)) if hard else None
    results = []
    for fn in (lambda: dec(feats, caps, lengths, locations=locs),
               lambda: reference_forward(dec, feats, caps, lengths, locations=locs)):
        dec.zero_grad()
        out = fn()
        loss = caption_loss(out, caps)[0] + (out.logits[out.mask] ** 2).mean()
        loss.backward()
        results.append((out, {k: p.grad.clone() for k, p in dec.named_parameters()}))
    (fast, g_fast), (ref, g_ref) = results
    for name in ("logits", "alphas", "betas"):
        assert torch.allclose(getattr(fast, name), getattr(ref, name), atol=1e-5), name
    assert torch.equal(fast.mask, ref.mask)
    if hard:
        assert torch.equal(fast.locations, ref.locations)
    for k in g_ref:
        assert torch.allclose(g_fast[k], g_ref[k], atol=1e-5, rtol=1e-4), k
