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

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch

__all__ = ["Hypothesis", "beam_search", "greedy_search"]

StepFn = Callable[[torch.Tensor, Tuple[torch.Tensor, ...], Tuple[torch.Tensor, ...]],
                  Tuple[torch.Tensor, Tuple[torch.Tensor, ...], Optional[torch.Tensor]]]


@dataclass
class Hypothesis:
    """One decoded sequence.

    Attributes:
        tokens: generated token ids, without ``<bos>`` and ``<end>``.
        score: ranking score: log_prob / n^length_penalty, n the number of generated tokens (``<end>``
            included); −inf for an unfinished hypothesis.
        log_prob: sum of the log-probabilities of the generated tokens (``<end>`` included when finished).
        extras: (n, ...) the step function's per-step extras (one row per generated token, ``<end>`` included),
            or None.
        finished: True when the sequence ended with ``<end>``; False only when ``<end>`` had probability 0 at
            the last allowed step (see the module docstring).
        token_log_probs: log p of each generated token given its prefix (``<end>`` included when finished);
            they sum to ``log_prob``.
    """

    tokens: List[int]
    score: float
    log_prob: float
    extras: Optional[torch.Tensor]
    finished: bool
    token_log_probs: List[float] = field(default_factory=list)


def _normalise(log_prob: float, length: int, length_penalty: float) -> float:
    return log_prob / (length ** length_penalty) if length_penalty else log_prob


def _expand(tensors: Sequence[torch.Tensor], k: int) -> Tuple[torch.Tensor, ...]:
    return tuple(t.repeat_interleave(k, dim=0) for t in tensors)


def _force_end(log_probs: torch.Tensor, eos: int) -> torch.Tensor:
    """(N, V) log-probs with every token but ``eos`` at −inf: the last allowed step must end the sequence."""
    forced = torch.full_like(log_probs, float("-inf"))
    forced[:, eos] = log_probs[:, eos]
    return forced


def _path(history: torch.Tensor, token_lps: torch.Tensor, extras: Optional[torch.Tensor], b: int, src: int,
          end_lp: Optional[float] = None, end_extra: Optional[torch.Tensor] = None):
    """Tokens, per-token log-probs and extras of beam ``src`` of input ``b``, with an ``<end>`` step appended
    when ``end_lp`` (its log-prob) is given. ``history``/``token_lps`` are (B, k, t), ``extras`` (B, k, t, ...)."""
    lps = token_lps[b, src].tolist()
    ext = extras[b, src] if extras is not None else None
    if end_lp is not None:
        lps.append(end_lp)
        if end_extra is not None:
            ext = end_extra.unsqueeze(0) if ext is None else torch.cat([ext, end_extra.unsqueeze(0)])
    return history[b, src].tolist(), lps, ext


@torch.no_grad()
def beam_search(step: StepFn, state: Sequence[torch.Tensor], context: Sequence[torch.Tensor], bos: int, eos: int,
                beam_size: int = 3, max_len: int = 20, length_penalty: float = 0.0,
                n_best: int = 1) -> List[List[Hypothesis]]:
    """Beam search for a batch of B inputs at once (B·k rows through ``step`` per time step).

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

    Returns:
        a list of B lists of (at most) ``n_best`` :class:`Hypothesis`, best first.

    Raises:
        ValueError: beam_size < 1, n_best > beam_size, max_len < 1 or length_penalty < 0.
    """
    if beam_size < 1 or not 1 <= n_best <= beam_size or max_len < 1 or length_penalty < 0:
        raise ValueError(f"bad search settings: beam_size={beam_size}, n_best={n_best}, max_len={max_len}, "
                         f"length_penalty={length_penalty}")
    B, k = state[0].size(0), beam_size
    device = state[0].device
    state, context = _expand(state, k), _expand(context, k)  # (B*k, ...)
    tokens = torch.full((B * k,), bos, dtype=torch.long, device=device)
    scores = torch.full((B, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # at t=0 all beams are the same: expand only the first
    history = torch.zeros(B, k, 0, dtype=torch.long, device=device)  # (B, k, t) token ids
    token_lps = torch.zeros(B, k, 0, device=device)  # (B, k, t) log p of each token given its prefix
    extras: Optional[torch.Tensor] = None  # (B, k, t, ...)
    finished: List[List[Hypothesis]] = [[] for _ in range(B)]
    done = [False] * B
    arange_b = torch.arange(B, device=device).unsqueeze(1)  # (B, 1)

    for t in range(max_len):
        log_probs, state, extra = step(tokens, tuple(state), context)  # (B*k, V)
        log_probs = log_probs.float()
        last = t == max_len - 1
        if last:
            log_probs = _force_end(log_probs, eos)
        V = log_probs.size(-1)
        cand = scores.unsqueeze(-1) + log_probs.view(B, k, V)  # (B, k, V)
        top_scores, top_idx = cand.view(B, k * V).topk(min(2 * k, k * V), dim=1)  # (B, 2k)
        top_lps = log_probs.view(B, k * V).gather(1, top_idx)  # (B, 2k) the new token's own log-prob
        beam_idx = torch.div(top_idx, V, rounding_mode="floor")  # (B, 2k) integer division
        top_tokens = top_idx % V
        is_eos = top_tokens == eos
        if extra is not None:
            extra = extra.view(B, k, *extra.shape[1:])

        # Hypotheses that end here: <end> candidates among the k best (as in fairseq, so that k=1 is greedy).
        # Each beam has one <end> candidate, so at most k of the 2k candidates end and >= k continue.
        in_top_k = torch.arange(is_eos.size(1), device=device).unsqueeze(0) < k
        for b, j in zip(*torch.nonzero(is_eos & in_top_k & torch.isfinite(top_scores), as_tuple=True)):
            b, j = int(b), int(j)
            if done[b]:
                continue
            src = int(beam_idx[b, j])
            words, lps, ext = _path(history, token_lps, extras, b, src, float(top_lps[b, j]),
                                    extra[b, src] if extra is not None else None)
            lp = float(top_scores[b, j])
            finished[b].append(Hypothesis(words, _normalise(lp, t + 1, length_penalty), lp, ext, True, lps))

        if last:
            # <end> was the only choice. A live beam that could not take it (p(<end>) = 0) is returned unfinished.
            for b in range(B):
                for j in range(k):
                    if done[b] or not torch.isfinite(scores[b, j]) or torch.isfinite(cand[b, j, eos]):
                        continue
                    words, lps, ext = _path(history, token_lps, extras, b, j)
                    finished[b].append(Hypothesis(words, float("-inf"), float(scores[b, j]), ext, False, lps))
            break

        # The k best candidates that do not end continue (there are always >= k of them).
        order = torch.argsort(is_eos.int() * (2 * k) + torch.arange(is_eos.size(1), device=device), dim=1)[:, :k]
        scores = top_scores.gather(1, order)  # (B, k)
        src_beam = beam_idx.gather(1, order)  # (B, k)
        new_tokens = top_tokens.gather(1, order)  # (B, k)
        history = torch.cat([history[arange_b, src_beam], new_tokens.unsqueeze(-1)], dim=2)  # (B, k, t+1)
        token_lps = torch.cat([token_lps[arange_b, src_beam], top_lps.gather(1, order).unsqueeze(-1)], dim=2)
        if extra is not None:
            step_extra = extra[arange_b, src_beam].unsqueeze(2)  # (B, k, 1, ...)
            extras = step_extra if extras is None else torch.cat([extras[arange_b, src_beam], step_extra], dim=2)
        flat_src = (arange_b * k + src_beam).view(-1)  # (B*k,) rows of the surviving beams
        state = tuple(s.index_select(0, flat_src) for s in state)
        tokens = new_tokens.view(-1)

        # An input is done when k hypotheses finished and no live beam can beat the worst of them:
        # a live beam's log-prob only falls, and its length (<end> included) can grow to max_len at most,
        # so its best possible ranking score is score / max_len^p.
        for b in range(B):
            if done[b] or len(finished[b]) < k:
                continue
            kth = sorted((h.score for h in finished[b]), reverse=True)[k - 1]
            best_live = float(scores[b].max())
            bound = _normalise(best_live, max_len, length_penalty) if best_live < 0 else best_live
            if bound <= kth:
                done[b] = True
        if all(done):
            break
    return [sorted(f, key=lambda h: h.score, reverse=True)[:n_best] for f in finished]


@torch.no_grad()
def greedy_search(step: StepFn, state: Sequence[torch.Tensor], context: Sequence[torch.Tensor], bos: int, eos: int,
                  max_len: int = 20, length_penalty: float = 0.0) -> List[Hypothesis]:
    """Greedy decoding (argmax at every step) for a batch; the same result as beam search with k=1.

    As in :func:`beam_search`, the ``max_len``-th token is always ``<end>``.

    Args:
        step, state, context, bos, eos, max_len: as for :func:`beam_search`.
        length_penalty: p of the returned ranking score log_prob / n^p (it does not change the argmax path).

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
        if not alive.any():
            break
    seq = torch.stack(out_tokens, dim=1).cpu()  # (B, T)
    lps = torch.stack(out_lps, dim=1).cpu()  # (B, T)
    ext = torch.stack(out_extra, dim=1) if out_extra else None  # (B, T, ...)
    results = []
    for b in range(B):
        n = int((seq[b] == eos).nonzero()[0]) + 1  # tokens generated, <end> included (always emitted by max_len)
        fin = bool(torch.isfinite(lps[b, n - 1]))  # False only when p(<end>) = 0 at the last step
        m = n if fin else n - 1
        token_lps = lps[b, :m].tolist()
        log_prob = float(sum(token_lps))
        score = _normalise(log_prob, n, length_penalty) if fin else float("-inf")
        results.append(Hypothesis(seq[b, : n - 1].tolist(), score, log_prob,
                                  ext[b, :m] if ext is not None else None, fin, token_lps))
    return results
