"""Beam search and greedy decoding against fixed probability tables and brute-force enumeration.

The step functions here are driven by tables keyed by the prefix generated so far, like fairseq's
test_sequence_generator: a row's state carries an integer code of its prefix.
"""
import itertools
import math

import pytest
import torch

from showattend.search import beam_search, greedy_search

EOS, BOS = 0, 9  # BOS is only ever fed, never generated


class TableModel:
    """log p(next | prefix) from a table; unknown prefixes draw a fixed random distribution."""

    def __init__(self, vocab, table=None, seed=0, eos_prob=None):
        self.V, self.table, self.seed, self.eos_prob = vocab, table or {}, seed, eos_prob

    def probs(self, batch, prefix):
        if prefix in self.table:
            return torch.tensor(self.table[prefix], dtype=torch.float64)
        g = torch.Generator().manual_seed(hash((self.seed, batch, prefix)) % (2 ** 31))
        p = torch.rand(self.V, generator=g, dtype=torch.float64) ** 3 + 1e-3
        if self.eos_prob is not None:
            p[EOS] = 0.0
            p = p / p.sum() * (1 - self.eos_prob)
            p[EOS] = self.eos_prob
        return p / p.sum()

    def step(self, tokens, state, context):
        self.calls += 1
        (codes,) = state  # (N,) long: index into self.prefixes
        (batch_ids,) = context
        out, new_codes = [], []
        for tok, code, b in zip(tokens.tolist(), codes.tolist(), batch_ids.tolist()):
            prefix = self.prefixes[code] + ((tok,) if tok != BOS else ())
            new_codes.append(self._code(prefix))
            out.append(torch.log(self.probs(b, prefix)))
        extra = tokens.float().unsqueeze(1)  # record the token fed at this step
        return torch.stack(out).float(), (torch.tensor(new_codes),), extra

    def _code(self, prefix):
        if prefix not in self.codes:
            self.codes[prefix] = len(self.prefixes)
            self.prefixes.append(prefix)
        return self.codes[prefix]

    def run_beam(self, B=1, **kw):
        self.prefixes, self.codes, self.calls = [()], {(): 0}, 0
        return beam_search(self.step, (torch.zeros(B, dtype=torch.long),), (torch.arange(B),), BOS, EOS, **kw)

    def run_greedy(self, B=1, max_len=5, length_penalty=0.0):
        self.prefixes, self.codes, self.calls = [()], {(): 0}, 0
        return greedy_search(self.step, (torch.zeros(B, dtype=torch.long),), (torch.arange(B),), BOS, EOS, max_len,
                             length_penalty)

    def brute_force(self, batch, max_len, length_penalty=0.0):
        """(score, words) of the best complete sequence: n < max_len words, then <end> (max_len tokens at most)."""
        best = []
        for n in range(0, max_len):
            for words in itertools.product(range(1, self.V), repeat=n):
                lp, prefix = 0.0, ()
                for w in words + (EOS,):
                    p = float(self.probs(batch, prefix)[w])
                    lp += math.log(p) if p > 0 else float("-inf")
                    prefix += (w,)
                best.append((lp / (n + 1) ** length_penalty, list(words)))
        return max(best, key=lambda x: x[0])


def test_fixed_table_beam2_exact_tokens_and_scores():
    # vocabulary: 0=<end>, 1=a, 2=b
    table = {
        (): [0.1, 0.6, 0.3],
        (1,): [0.2, 0.3, 0.5],
        (2,): [0.9, 0.05, 0.05],
        (1, 2): [0.6, 0.2, 0.2],
        (1, 1): [0.5, 0.25, 0.25],
    }
    m = TableModel(3, table)
    (hyps,) = m.run_beam(beam_size=2, max_len=3, n_best=2)
    # step 1 keeps a (.6), b (.3); step 2: a b (.30) and b <end> (.27) are the best two: "b" finishes;
    # step 3: a b <end> (.18) and a a <end> (.09) finish; no live beam (<= .06) beats .18: stop.
    assert hyps[0].tokens == [2] and hyps[0].finished
    assert hyps[0].log_prob == pytest.approx(math.log(0.3 * 0.9), abs=1e-6)
    assert hyps[1].tokens == [1, 2]
    assert hyps[1].log_prob == pytest.approx(math.log(0.6 * 0.5 * 0.6), abs=1e-6)
    assert hyps[1].token_log_probs == pytest.approx([math.log(0.6), math.log(0.5), math.log(0.6)], abs=1e-6)
    assert m.calls == 3
    # greedy takes a (.6), then b (.5), then <end> (.6): the worse caption
    (g,) = m.run_greedy(max_len=3)
    assert g.tokens == [1, 2] and g.log_prob == pytest.approx(math.log(0.18), abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_wide_beam_equals_brute_force(seed, length_penalty):
    V, max_len = 4, 4  # 3 words + <end>
    m = TableModel(V, seed=seed)
    (hyp,) = m.run_beam(beam_size=V ** max_len, max_len=max_len, length_penalty=length_penalty)[0:1][0][:1]
    score, tokens = m.brute_force(0, max_len, length_penalty)
    assert hyp.tokens == tokens
    assert hyp.score == pytest.approx(score, abs=1e-4)


@pytest.mark.parametrize("seed", range(10))
def test_beam_size_one_equals_greedy(seed):
    m = TableModel(5, seed=seed)
    beams = [h[0] for h in m.run_beam(B=4, beam_size=1, max_len=6, length_penalty=0.7)]
    greedy = m.run_greedy(B=4, max_len=6, length_penalty=0.7)
    for b, g in zip(beams, greedy):
        assert b.tokens == g.tokens
        assert b.log_prob == pytest.approx(g.log_prob, abs=1e-5)
        assert b.score == pytest.approx(g.score, abs=1e-5)
        assert b.token_log_probs == pytest.approx(g.token_log_probs, abs=1e-5)
        assert b.finished == g.finished


def test_batch_equals_one_at_a_time():
    m = TableModel(5, seed=3)
    batched = [h[0] for h in m.run_beam(B=3, beam_size=3, max_len=6)]
    for b in range(3):
        m.prefixes, m.codes = [()], {(): 0}
        (single,) = beam_search(m.step, (torch.zeros(1, dtype=torch.long),), (torch.tensor([b]),), BOS, EOS,
                                beam_size=3, max_len=6)
        assert single[0].tokens == batched[b].tokens
        assert single[0].log_prob == pytest.approx(batched[b].log_prob, abs=1e-5)


def test_no_end_token_returns_unfinished_hypotheses():
    m = TableModel(4, seed=1, eos_prob=0.0)  # <end> has probability 0 everywhere
    hyps = m.run_beam(B=2, beam_size=3, max_len=5, n_best=3)
    for per_input in hyps:
        assert len(per_input) == 3
        for h in per_input:
            assert not h.finished and len(h.tokens) == 4 and math.isfinite(h.log_prob)
            assert h.score == float("-inf") and h.log_prob == pytest.approx(sum(h.token_log_probs), abs=1e-5)
    greedy = m.run_greedy(B=2, max_len=5)
    assert all(not g.finished and len(g.tokens) == 4 and g.score == float("-inf") for g in greedy)


def test_a_caption_cut_at_max_len_pays_for_its_end_token():
    """At max_len the live beam "a a" (p = .6 · .99) must pay log p(<end> | a a) = log .01: the finished empty
    caption (.4) wins. Scoring the cut beam without its <end> would have ranked it first (.594 > .4)."""
    table = {(): [0.4, 0.6, 0.0], (1,): [0.01, 0.99, 0.0]}
    m = TableModel(3, table)
    beams = m.run_beam(beam_size=2, max_len=2, n_best=2)[0]
    assert beams[0].tokens == [] and beams[0].finished
    assert beams[0].log_prob == pytest.approx(math.log(0.4), abs=1e-6)
    assert beams[1].tokens == [1] and beams[1].finished  # "a" was forced to end at the last step
    assert beams[1].token_log_probs == pytest.approx([math.log(0.6), math.log(0.01)], abs=1e-6)
    (g,) = m.run_greedy(max_len=2)  # greedy takes "a" (.6), then must end: .006 < .4 is not its concern
    assert g.tokens == [1] and g.finished and g.log_prob == pytest.approx(math.log(0.006), abs=1e-6)


# () -> <end> .5 | a .4 | b .1;  a -> <end> .05 | a .95;  a a -> <end> .95 | a .05.
# Without a length penalty the empty caption (.5) wins at once. With p = 1, "a a <end>" (.361 over 3 tokens,
# -0.340) beats it (-0.693), although at step 1 the live beam "a" (log .4 = -0.916) is below the finished one.
FLIP = {(): [0.5, 0.4, 0.1], (1,): [0.05, 0.95, 0.0], (1, 1): [0.95, 0.05, 0.0]}


@pytest.mark.parametrize("length_penalty, tokens, log_prob, calls",
                         [(0.0, [], math.log(0.5), 1), (1.0, [1, 1], math.log(0.4 * 0.95 * 0.95), 3)])
def test_length_penalty_flips_the_winner_and_the_bound_prunes(length_penalty, tokens, log_prob, calls):
    """fairseq-style table. The early-stopping bound must use the longest possible length (score / max_len^p):
    a bound normalised by the current length stops at step 1 and returns the empty caption; a looser bound
    (never stopping) still finds "a a" but calls the model max_len = 4 times instead of 3."""
    m = TableModel(3, FLIP)
    (hyp,) = m.run_beam(beam_size=1, max_len=4, length_penalty=length_penalty, sync_every=1)[0]
    assert hyp.tokens == tokens and hyp.finished
    assert hyp.log_prob == pytest.approx(log_prob, abs=1e-6)
    assert hyp.score == pytest.approx(log_prob / (len(tokens) + 1) ** length_penalty, abs=1e-6)
    assert m.calls == calls  # stopped as soon as no live beam could win, not at max_len
    # checking for completion only every 4 steps costs calls, never the result
    (late,) = m.run_beam(beam_size=1, max_len=4, length_penalty=length_penalty)[0]
    assert (late.tokens, late.score, late.log_prob) == (hyp.tokens, hyp.score, hyp.log_prob) and m.calls == 4
    assert m.brute_force(0, 4, length_penalty)[1] == tokens


def test_extras_follow_the_hypothesis_path():
    m = TableModel(5, seed=7)
    for h in m.run_beam(B=2, beam_size=3, max_len=6, n_best=3)[1]:
        fed = [BOS] + h.tokens  # the token fed at each step, <end> step included when finished
        n = len(h.tokens) + (1 if h.finished else 0)
        assert h.extras.squeeze(1).tolist() == fed[:n]


def test_bad_settings_are_named():
    m = TableModel(3)
    with pytest.raises(ValueError, match=r"^beam search: beam_size must be at least 1, got 0; n_best must be "
                                         r"between 1 and beam_size \(0\), got 1$"):
        m.run_beam(beam_size=0)
    with pytest.raises(ValueError, match=r"^beam search: n_best must be between 1 and beam_size \(2\), got 3$"):
        m.run_beam(beam_size=2, n_best=3)
    with pytest.raises(ValueError, match=r"^beam search: sync_every must be at least 1, got 0$"):
        m.run_beam(beam_size=2, sync_every=0)
    with pytest.raises(ValueError, match=r"^beam search: length_penalty must be >= 0 \(0: no penalty\), got -1$"):
        m.run_beam(beam_size=2, length_penalty=-1)
