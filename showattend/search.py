"""Batched beam search and greedy decoding over a step function, shared by captioning and translation.

A model plugs in through one callable::

    step(tokens (N,) long, state: tuple of (N, ...) tensors, context: tuple of (N, ...) tensors)
        -> log_probs (N, V), new state (tuple), extra (N, ...) tensor or None

``state`` (e.g. the LSTM's h and c) is reordered after every step to follow the surviving beams; ``context``
(e.g. the annotation vectors and their projected keys) is the same for every beam of one input, so it is
expanded once and never copied again. ``extra`` (e.g. the attention weights α_t) is recorded per step and
returned with each hypothesis. Scores are sums of log-probabilities; with ``length_penalty`` p > 0 a
hypothesis of n tokens (``<end>`` included) is ranked by log_prob / n^p.

Every hypothesis is scored as a complete sequence, ``<end>`` included: at the last step (the ``max_len``-th
token) only ``<end>`` may be chosen, as in fairseq, so a sequence cut at the maximum length pays
log p(``<end>`` | prefix) like any other and cannot outrank a finished one for free. A sequence therefore has at
most ``max_len - 1`` words. Only when ``<end>`` has probability 0 at that last step is a hypothesis returned
unfinished (``finished=False``, ranking score −inf, ``log_prob`` of its words alone), so that every input still
gets an answer.

The search is exact in one sense that the tests check against brute-force enumeration: an input stops only
when ``beam_size`` hypotheses have finished and no live beam can still beat the worst of them (log-probs are
<= 0, so a live beam's score can only fall; under a length penalty its best possible ranking score is
score / max_len^p). With a beam as wide as the number of possible prefixes it returns the most probable
sequence.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .hypotheses import Hypothesis, normalise, to_host, trace_back

__all__ = ["Hypothesis", "beam_search", "greedy_search", "sample_search"]

StepFn = Callable[[torch.Tensor, Tuple[torch.Tensor, ...], Tuple[torch.Tensor, ...]],
                  Tuple[torch.Tensor, Tuple[torch.Tensor, ...], Optional[torch.Tensor]]]


def _expand(tensors: Sequence[torch.Tensor], k: int) -> Tuple[torch.Tensor, ...]:
    return tuple(t.repeat_interleave(k, dim=0) for t in tensors)


def _force_end(log_probs: torch.Tensor, eos: int) -> torch.Tensor:
    """(N, V) log-probs with every token but ``eos`` at −inf: the last allowed step must end the sequence."""
    forced = torch.full_like(log_probs, float("-inf"))
    forced[:, eos] = log_probs[:, eos]
    return forced


def _candidates(log_probs: torch.Tensor, scores: torch.Tensor, eos: int, last: bool):
    """The 2k best extensions of each input's k beams at one step of :func:`beam_search`.

    Args:
        log_probs: (B·k, V) the step's log-probabilities; scores: (B, k) the beams' scores so far (−inf for an
            unused beam); last: the max_len-th step, where only ``eos`` may follow.

    Returns:
        cand (B, k, V) the candidates' scores; and over the 2k best per input, (B, 2k) each: their scores, the
        new token's own log-prob, the beam extended, the token, whether it is ``eos``.
    """
    B, k = scores.shape
    log_probs = log_probs.float()
    if last:
        log_probs = _force_end(log_probs, eos)
    V = log_probs.size(-1)
    cand = scores.unsqueeze(-1) + log_probs.view(B, k, V)  # (B, k, V)
    top_scores, top_idx = cand.view(B, k * V).topk(min(2 * k, k * V), dim=1)  # (B, 2k)
    top_lps = log_probs.view(B, k * V).gather(1, top_idx)  # (B, 2k) the new token's own log-prob
    beam_idx = torch.div(top_idx, V, rounding_mode="floor")  # (B, 2k) integer division
    top_tokens = top_idx % V
    return cand, top_scores, top_lps, beam_idx, top_tokens, top_tokens == eos


@torch.no_grad()
def beam_search(step: StepFn, state: Sequence[torch.Tensor], context: Sequence[torch.Tensor], bos: int, eos: int,
                beam_size: int = 3, max_len: int = 20, length_penalty: float = 0.0, n_best: int = 1,
                sync_every: int = 4, shared_context: bool = False) -> List[List[Hypothesis]]:
    """Beam search for a batch of B inputs at once (B·k rows through ``step`` per time step).

    Everything stays on the device until the end: each step writes its tokens, their log-probs, the beams they
    extend and the step's extras into buffers preallocated for ``max_len`` steps (no history is copied), the
    hypotheses that end are written into a per-input buffer, and which inputs are done is a boolean mask. The
    host reads the device once every ``sync_every`` steps (whether every input is done) and once at the end,
    when the hypotheses are traced back through the buffers.

    Args:
        step: the model's step function (see the module docstring).
        state: tuple of (B, ...) tensors, the initial decoder state.
        context: tuple of (B, ...) tensors constant over time (keys/values of attention).
        bos: id fed at the first step.
        eos: id that ends a hypothesis.
        beam_size: k >= 1.
        max_len: maximum number of generated tokens, ``<end>`` included (so at most ``max_len - 1`` words);
            the ``max_len``-th token is always ``<end>``.
        length_penalty: p >= 0; 0 ranks by the summed log-probability.
        n_best: hypotheses returned per input (<= beam_size), best first.
        sync_every: steps between the checks whether every input is done (the results do not depend on it:
            a done input takes no more hypotheses; only the number of ``step`` calls does).
        shared_context: pass ``context`` to ``step`` as it is, B rows, instead of one copy per beam (B·k rows):
            a step that reads row b of the context for its rows b·k .. b·k + k − 1 (the beams of input b, which
            stay in that range when the beams are reordered) then needs no copies of it.

    Returns:
        a list of B lists of (at most) ``n_best`` :class:`Hypothesis`, best first.

    Raises:
        ValueError: beam_size < 1, n_best > beam_size, max_len < 1, length_penalty < 0 or sync_every < 1.
    """
    bad = [f"{name} must be {rule}, got {value}" for name, value, rule, ok in [
        ("beam_size", beam_size, "at least 1", beam_size >= 1),
        ("n_best", n_best, f"between 1 and beam_size ({beam_size})", 1 <= n_best <= beam_size),
        ("max_len", max_len, "at least 1", max_len >= 1),
        ("length_penalty", length_penalty, ">= 0 (0: no penalty)", length_penalty >= 0),
        ("sync_every", sync_every, "at least 1", sync_every >= 1)] if not ok]
    if bad:
        raise ValueError("beam search: " + "; ".join(bad))
    B, k = state[0].size(0), beam_size
    state = _expand(state, k)  # (B*k, ...)
    context = tuple(context) if shared_context else _expand(context, k)
    beams = _Beams(B, k, max_len, bos, state[0].device)
    ended = _Ended(B, k, max_len, length_penalty, state[0].device)
    for t in range(max_len):
        log_probs, state, extra = step(beams.tokens, tuple(state), context)  # (B*k, V)
        last = t == max_len - 1
        cand, top_scores, top_lps, beam_idx, top_tokens, is_eos = _candidates(log_probs, beams.scores, eos, last)
        extra = extra.view(B, k, *extra.shape[1:]) if extra is not None else None
        ended.add(t, is_eos, top_scores, top_lps, beam_idx, extra)
        if last:  # <end> was the only choice; a live beam that could not take it (p = 0) is returned unfinished
            ended.unfinished = ~ended.done.unsqueeze(1) & torch.isfinite(beams.scores) & \
                ~torch.isfinite(cand[:, :, eos])
            break
        rows = beams.advance(t, is_eos, top_scores, top_lps, beam_idx, top_tokens, extra)
        state = tuple(s.index_select(0, rows) for s in state)
        ended.update_done(beams.scores)
        if (t + 1) % sync_every == 0 and bool(ended.done.all()):
            break
    return trace_back(beams.buffers() + ended.buffers() + (beams.scores,), beams.extras(ended), t, n_best)


class _Beams:
    """The live beams of :func:`beam_search`: each one's last token and score, and per step t the token of each
    surviving beam, its log-prob, the beam it extends and the step's extra, in buffers made for ``max_len``
    steps (no history is copied)."""

    def __init__(self, B: int, k: int, max_len: int, bos: int, device):
        self.B, self.k, self.max_len = B, k, max_len
        self.tokens = torch.full((B * k,), bos, dtype=torch.long, device=device)
        self.scores = torch.full((B, k), float("-inf"), device=device)
        self.scores[:, 0] = 0.0  # at t=0 all beams are the same: expand only the first
        self.tok = torch.zeros(max_len, B, k, dtype=torch.long, device=device)
        self.lp = torch.zeros(max_len, B, k, device=device)
        self.src = torch.zeros(max_len, B, k, dtype=torch.long, device=device)
        self.ext: Optional[torch.Tensor] = None  # (max_len, B, k, ...)
        self.arange_b = torch.arange(B, device=device).unsqueeze(1)  # (B, 1)

    def advance(self, t, is_eos, top_scores, top_lps, beam_idx, top_tokens, extra) -> torch.Tensor:
        """The k best candidates that do not end continue (there are always >= k); returns the (B*k,) rows of
        the beams they extend."""
        n = is_eos.size(1)
        order = torch.argsort(is_eos.int() * n + torch.arange(n, device=is_eos.device), dim=1)[:, :self.k]
        self.scores = top_scores.gather(1, order)  # (B, k)
        src_beam = beam_idx.gather(1, order)  # (B, k)
        new_tokens = top_tokens.gather(1, order)  # (B, k)
        self.tok[t], self.lp[t], self.src[t] = new_tokens, top_lps.gather(1, order), src_beam
        if extra is not None:
            if self.ext is None:
                self.ext = extra.new_zeros(self.max_len, *extra.shape)
            self.ext[t] = extra[self.arange_b, src_beam]
        self.tokens = new_tokens.view(-1)
        return (self.arange_b * self.k + src_beam).view(-1)

    def buffers(self) -> tuple:
        return self.tok, self.lp, self.src

    def extras(self, ended: "_Ended"):
        """(per-step extras, ended hypotheses' extras), or None without extras."""
        if ended.ext is None:
            return None
        ext = self.ext if self.ext is not None else ended.ext.new_zeros(self.max_len, self.B, self.k,
                                                                         *ended.ext.shape[2:])
        return ext, ended.ext


class _Ended:
    """The hypotheses of :func:`beam_search` that have ended, per input in the order they end (step, beam,
    ``<end>``'s log-prob and extra, scores) in ``k * max_len`` slots per input, the last slot a spare that
    takes the writes of the candidates that do not end; and which inputs are done."""

    def __init__(self, B: int, k: int, max_len: int, length_penalty: float, device):
        self.B, self.k, self.max_len, self.penalty = B, k, max_len, length_penalty
        self.slots = slots = k * max_len
        self.score = torch.full((B, slots + 1), float("-inf"), device=device)  # ranking score
        self.lp = torch.zeros(B, slots + 1, device=device)  # log-prob, <end> included
        self.end_lp = torch.zeros(B, slots + 1, device=device)
        self.t = torch.zeros(B, slots + 1, dtype=torch.long, device=device)
        self.src = torch.zeros(B, slots + 1, dtype=torch.long, device=device)
        self.ext: Optional[torch.Tensor] = None  # (B, slots + 1, ...)
        self.count = torch.zeros(B, dtype=torch.long, device=device)
        self.done = torch.zeros(B, dtype=torch.bool, device=device)
        self.unfinished = torch.zeros(B, k, dtype=torch.bool, device=device)  # live at max_len, no <end> possible
        self.first_k = torch.arange(2 * k, device=device).unsqueeze(0) < k  # (1, 2k)
        self.arange_b = torch.arange(B, device=device).unsqueeze(1)

    def add(self, t, is_eos, top_scores, top_lps, beam_idx, extra) -> None:
        """Hypotheses that end at step t: ``<end>`` candidates among the k best (as in fairseq, so that k=1 is
        greedy), of inputs not done. Each beam has one ``<end>`` candidate, so at most k of the 2k candidates
        end and >= k continue. They go to the next free slots of their input, in candidate order."""
        ends = is_eos & self.first_k[:, :is_eos.size(1)] & torch.isfinite(top_scores) & ~self.done.unsqueeze(1)
        slot = (self.count.unsqueeze(1) + ends.long().cumsum(1) - 1).clamp_min(0)  # (B, 2k)
        slot = torch.where(ends, slot, torch.full_like(slot, self.slots))  # the others: the spare slot

        def put(buf: torch.Tensor, values: torch.Tensor) -> None:  # buf[b, slot[b, j]] = values[b, j]
            buf.scatter_(1, slot.view(self.B, -1, *([1] * (buf.dim() - 2))).expand(-1, -1, *buf.shape[2:]), values)

        put(self.score, top_scores / ((t + 1) ** self.penalty) if self.penalty else top_scores)
        put(self.lp, top_scores)
        put(self.end_lp, top_lps)
        put(self.t, torch.full_like(slot, t))
        put(self.src, beam_idx)
        if extra is not None:
            if self.ext is None:
                self.ext = extra.new_zeros(self.B, self.slots + 1, *extra.shape[2:])
            put(self.ext, extra[self.arange_b, beam_idx])
        self.count = self.count + ends.sum(1)

    def update_done(self, live_scores: torch.Tensor) -> None:
        """An input is done when k hypotheses ended and no live beam can beat the worst of them: a live beam's
        log-prob only falls, and its length (<end> included) can grow to max_len at most, so its best possible
        ranking score is score / max_len^p."""
        kth = self.score[:, :self.slots].topk(self.k, dim=1).values[:, self.k - 1]  # −inf while fewer ended
        best = live_scores.max(dim=1).values
        bound = torch.where(best < 0, best / (self.max_len ** self.penalty), best) if self.penalty else best
        self.done = self.done | (torch.isfinite(kth) & (bound <= kth))

    def buffers(self) -> tuple:
        return self.score, self.lp, self.end_lp, self.t, self.src, self.count, self.unfinished


@torch.no_grad()
def greedy_search(step: StepFn, state: Sequence[torch.Tensor], context: Sequence[torch.Tensor], bos: int, eos: int,
                  max_len: int = 20, length_penalty: float = 0.0, sync_every: int = 4) -> List[Hypothesis]:
    """Greedy decoding (argmax at every step) for a batch; the same result as beam search with k=1.

    As in :func:`beam_search`, the ``max_len``-th token is always ``<end>``.

    Args:
        step, state, context, bos, eos, max_len: as for :func:`beam_search`.
        length_penalty: p of the returned ranking score log_prob / n^p (it does not change the argmax path).
        sync_every: steps between the checks whether every sequence has ended (the one read of the device
            inside the loop; the results do not depend on it).

    Returns:
        a list of B :class:`Hypothesis` (score −inf when unfinished).
    """
    B = state[0].size(0)
    tokens = torch.full((B,), bos, dtype=torch.long, device=state[0].device)
    state, context = tuple(state), tuple(context)
    out_tokens, out_lps, out_extra = [], [], []  # per step: (B,) tokens, (B,) log-probs, extras
    alive = torch.ones(B, dtype=torch.bool, device=tokens.device)
    for t in range(max_len):
        log_probs, state, extra = step(tokens, state, context)  # (B, V)
        if t == max_len - 1:  # the last allowed token is <end>
            tokens = torch.full_like(tokens, eos)
            lp = log_probs.float()[:, eos]
        else:
            lp, tokens = log_probs.float().max(dim=-1)  # (B,)
        out_tokens.append(tokens)
        out_lps.append(lp)
        if extra is not None:
            out_extra.append(extra)
        alive = alive & (tokens != eos)
        if (t + 1) % sync_every == 0 and not bool(alive.any()):
            break
    parts = [torch.stack(out_tokens, dim=1), torch.stack(out_lps, dim=1)]  # (B, T) each
    if out_extra:
        parts.append(torch.stack(out_extra, dim=1))  # (B, T, ...)
    host = to_host(*parts)  # one transfer
    seq, lps = host[0].astype(np.int64), host[1]
    ext = torch.from_numpy(host[2]).to(out_extra[0].dtype) if out_extra else None
    results = []
    for b in range(B):
        n = int(np.argmax(seq[b] == eos)) + 1  # tokens generated, <end> included (always emitted by max_len)
        fin = bool(np.isfinite(lps[b, n - 1]))  # False only when p(<end>) = 0 at the last step
        m = n if fin else n - 1
        token_lps = [float(x) for x in lps[b, :m]]
        log_prob = float(sum(token_lps))
        score = normalise(log_prob, n, length_penalty) if fin else float("-inf")
        results.append(Hypothesis([int(x) for x in seq[b, : n - 1]], score, log_prob,
                                  ext[b, :m] if ext is not None else None, fin, token_lps))
    return results


@torch.no_grad()
def sample_search(step: StepFn, state: Sequence[torch.Tensor], context: Sequence[torch.Tensor], bos: int, eos: int,
                  max_len: int = 20, samples: int = 1, greedy: bool = False,
                  generator: Optional[torch.Generator] = None, sync_every: int = 4,
                  rows: Optional[torch.Tensor] = None, total_rows: Optional[int] = None
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draw sequences from the model, y_t ~ p(y_t | y_<t, x), or take the argmax (``greedy``), for a batch,
    on the device: the sampling of self-critical sequence training (Rennie et al. 2017).

    Unlike :func:`greedy_search`, nothing is forced at the last step (every token is a draw of the model, which
    a policy gradient needs): a sequence that has not drawn ``<end>`` within ``max_len`` tokens is cut there.

    Args:
        step, state, context, bos, eos: as for :func:`beam_search` (state and context of B inputs).
        max_len: the most tokens drawn per sequence, ``<end>`` included.
        samples: k sequences per input (rows b·k .. b·k + k − 1 belong to input b).
        greedy: argmax instead of sampling (then ``samples`` is usually 1).
        generator: the random stream of the draws (None: the global one).
        sync_every: steps between the checks whether every sequence has ended (the results do not depend on it).
        rows: (B·k,) long, each sequence's row among ``total_rows`` (e.g. its place in a global batch split over
            processes): at each step the uniforms of all ``total_rows`` rows are drawn and each sequence takes
            its row's, so its draws do not depend on which process or batch holds it. None: rows 0 .. B·k − 1.

    Sampling is Gumbel-max on the device: y_t = argmax_v (log p_v + g_v), g_v = −log(−log u_v), u ~ U[0, 1),
    which draws y_t from p exactly (tokens with p = 0 never), without a host read.

    Returns:
        tokens (B·k, T) long, the drawn tokens (``<end>`` included when drawn, then ``eos`` as padding), T ≤
        ``max_len``; lengths (B·k,) long, the tokens drawn, ``<end>`` included.
    """
    state, context = _expand(state, samples), _expand(context, samples)
    N = state[0].size(0)
    tokens = torch.full((N,), bos, dtype=torch.long, device=state[0].device)
    out, alive = [], torch.ones(N, dtype=torch.bool, device=tokens.device)
    lengths = torch.zeros(N, dtype=torch.long, device=tokens.device)
    for t in range(max_len):
        log_probs, state, _ = step(tokens, state, context)  # (N, V)
        if greedy:
            tokens = log_probs.argmax(dim=-1)
        else:
            u = torch.rand(total_rows or N, log_probs.size(-1), generator=generator, device=tokens.device)
            if rows is not None:
                u = u[rows]
            tokens = (log_probs.float() - torch.log(-torch.log(u))).argmax(dim=-1)  # Gumbel-max
        tokens = torch.where(alive, tokens, eos)
        lengths += alive
        out.append(tokens)
        alive = alive & (tokens != eos)
        if (t + 1) % sync_every == 0 and not bool(alive.any()):
            break
    return torch.stack(out, dim=1), lengths
