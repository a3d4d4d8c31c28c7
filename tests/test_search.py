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
        self.prefixes, self.codes = [()], {(): 0}
        return beam_search(self.step, (torch.zeros(B, dtype=torch.long),), (torch.arange(B),), BOS, EOS, **kw)

    def run_greedy(self, B=1, max_len=5):
        self.prefixes, self.codes = [()], {(): 0}
        return greedy_search(self.step, (torch.zeros(B, dtype=torch.long),), (torch.arange(B),), BOS, EOS, max_len)

    def brute_force(self, batch, max_len, length_penalty=0.0):
        """All sequences: ended by <end> within max_len, or max_len words with no <end>."""
        best = []
        for n in range(1, max_len + 1):
            for words in itertools.product(range(1, self.V), repeat=n):
                lp, prefix = 0.0, ()
                for w in words:
                    lp += math.log(self.probs(batch, prefix)[w])
                    prefix += (w,)
                if n < max_len:
                    lp_end = lp + math.log(self.probs(batch, prefix)[EOS])
                    best.append((lp_end / (n + 1) ** length_penalty, list(words)))
                else:
                    best.append((lp / max_len ** length_penalty, list(words)))
        # sequences that end straight away
        best.append((math.log(self.probs(batch, ())[EOS]), []))
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
    beams = [h[0] for h in m.run_beam(B=4, beam_size=1, max_len=6)]
    greedy = m.run_greedy(B=4, max_len=6)
    for b, g in zip(beams, greedy):
        assert b.tokens == g.tokens
        assert b.log_prob == pytest.approx(g.log_prob, abs=1e-5)
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
            assert not h.finished and len(h.tokens) == 5 and math.isfinite(h.log_prob)
    greedy = m.run_greedy(B=2, max_len=5)
    assert all(not g.finished and len(g.tokens) == 5 for g in greedy)


def test_extras_follow_the_hypothesis_path():
    m = TableModel(5, seed=7)
    for h in m.run_beam(B=2, beam_size=3, max_len=6, n_best=3)[1]:
        fed = [BOS] + h.tokens  # the token fed at each step, <end> step included when finished
        n = len(h.tokens) + (1 if h.finished else 0)
        assert h.extras.squeeze(1).tolist() == fed[:n]


def test_bad_settings():
    m = TableModel(3)
    with pytest.raises(ValueError):
        m.run_beam(beam_size=0)
    with pytest.raises(ValueError):
        m.run_beam(beam_size=2, n_best=3)
