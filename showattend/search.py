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

import numpy as np
import torch

__all__ = ["Hypothesis", "beam_search", "greedy_search", "sample_search"]

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
            on the host, or None.
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
    if beam_size < 1 or not 1 <= n_best <= beam_size or max_len < 1 or length_penalty < 0 or sync_every < 1:
        raise ValueError(f"bad search settings: beam_size={beam_size}, n_best={n_best}, max_len={max_len}, "
                         f"length_penalty={length_penalty}, sync_every={sync_every}")
    B, k = state[0].size(0), beam_size
    device = state[0].device
    state = _expand(state, k)  # (B*k, ...)
    context = tuple(context) if shared_context else _expand(context, k)
    tokens = torch.full((B * k,), bos, dtype=torch.long, device=device)
    scores = torch.full((B, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # at t=0 all beams are the same: expand only the first
    # per step t: the token of each surviving beam, its log-prob, the beam it extends, the step's extra
    tok_buf = torch.zeros(max_len, B, k, dtype=torch.long, device=device)
    lp_buf = torch.zeros(max_len, B, k, device=device)
    src_buf = torch.zeros(max_len, B, k, dtype=torch.long, device=device)
    ext_buf: Optional[torch.Tensor] = None  # (max_len, B, k, ...)
    # the hypotheses that end, per input in the order they end: step, beam, <end>'s log-prob and extra, scores;
    # slot number `slots` is a spare that takes the writes of the candidates that do not end
    slots = k * max_len
    fin_score = torch.full((B, slots + 1), float("-inf"), device=device)  # ranking score
    fin_lp = torch.zeros(B, slots + 1, device=device)  # log-prob, <end> included
    fin_end_lp = torch.zeros(B, slots + 1, device=device)
    fin_t = torch.zeros(B, slots + 1, dtype=torch.long, device=device)
    fin_src = torch.zeros(B, slots + 1, dtype=torch.long, device=device)
    fin_ext: Optional[torch.Tensor] = None  # (B, slots + 1, ...)
    count = torch.zeros(B, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    unfinished = torch.zeros(B, k, dtype=torch.bool, device=device)  # live at max_len without a possible <end>
    arange_b = torch.arange(B, device=device).unsqueeze(1)  # (B, 1)
    first_k = torch.arange(2 * k, device=device).unsqueeze(0) < k  # (1, 2k)
    t_last = 0

    for t in range(max_len):
        t_last = t
        log_probs, state, extra = step(tokens, tuple(state), context)  # (B*k, V)
        last = t == max_len - 1
        cand, top_scores, top_lps, beam_idx, top_tokens, is_eos = _candidates(log_probs, scores, eos, last)
        if extra is not None:
            extra = extra.view(B, k, *extra.shape[1:])
            if ext_buf is None:
                ext_buf = extra.new_zeros(max_len, B, k, *extra.shape[2:])
                fin_ext = extra.new_zeros(B, slots + 1, *extra.shape[2:])

        # Hypotheses that end here: <end> candidates among the k best (as in fairseq, so that k=1 is greedy), of
        # inputs not done. Each beam has one <end> candidate, so at most k of the 2k candidates end and >= k
        # continue. They go to the next free slots of their input, in candidate order.
        ends = is_eos & first_k[:, :is_eos.size(1)] & torch.isfinite(top_scores) & ~done.unsqueeze(1)  # (B, 2k)
        slot = (count.unsqueeze(1) + ends.long().cumsum(1) - 1).clamp_min(0)  # (B, 2k)
        slot = torch.where(ends, slot, torch.full_like(slot, slots))  # candidates that do not end: a spare slot
        n_tokens = t + 1
        normed = top_scores / (n_tokens ** length_penalty) if length_penalty else top_scores

        def put(buf: torch.Tensor, values: torch.Tensor) -> None:  # buf[b, slot[b, j]] = values[b, j]
            buf.scatter_(1, slot.view(B, -1, *([1] * (buf.dim() - 2))).expand(-1, -1, *buf.shape[2:]), values)

        put(fin_score, normed)
        put(fin_lp, top_scores)
        put(fin_end_lp, top_lps)
        put(fin_t, torch.full_like(slot, t))
        put(fin_src, beam_idx)
        if extra is not None:
            put(fin_ext, extra[arange_b, beam_idx])
        count = count + ends.sum(1)

        if last:
            # <end> was the only choice. A live beam that could not take it (p(<end>) = 0) is returned unfinished.
            unfinished = ~done.unsqueeze(1) & torch.isfinite(scores) & ~torch.isfinite(cand[:, :, eos])
            break

        # The k best candidates that do not end continue (there are always >= k of them).
        order = torch.argsort(is_eos.int() * (2 * k) + torch.arange(is_eos.size(1), device=device), dim=1)[:, :k]
        scores = top_scores.gather(1, order)  # (B, k)
        src_beam = beam_idx.gather(1, order)  # (B, k)
        new_tokens = top_tokens.gather(1, order)  # (B, k)
        tok_buf[t], lp_buf[t], src_buf[t] = new_tokens, top_lps.gather(1, order), src_beam
        if extra is not None:
            ext_buf[t] = extra[arange_b, src_beam]
        flat_src = (arange_b * k + src_beam).view(-1)  # (B*k,) rows of the surviving beams
        state = tuple(s.index_select(0, flat_src) for s in state)
        tokens = new_tokens.view(-1)

        # An input is done when k hypotheses ended and no live beam can beat the worst of them: a live beam's
        # log-prob only falls, and its length (<end> included) can grow to max_len at most, so its best possible
        # ranking score is score / max_len^p.
        kth = fin_score[:, :slots].topk(k, dim=1).values[:, k - 1]  # −inf while fewer than k ended
        best_live = scores.max(dim=1).values
        bound = torch.where(best_live < 0, best_live / (max_len ** length_penalty), best_live) \
            if length_penalty else best_live
        done = done | (torch.isfinite(kth) & (bound <= kth))
        if (t + 1) % sync_every == 0 and bool(done.all()):
            break
    return _trace_back((tok_buf, lp_buf, src_buf, fin_score, fin_lp, fin_end_lp, fin_t, fin_src, count, unfinished,
                        scores), (ext_buf, fin_ext) if ext_buf is not None else None, t_last, n_best)


def _to_host(*tensors: torch.Tensor) -> List[np.ndarray]:
    """The tensors as host arrays, in one device-to-host transfer (one wait for the device instead of one per
    tensor): they travel as one float64 vector, which holds every int below 2^53 (token ids, steps, counts),
    every bool and every float32/bf16 value exactly."""
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors]).cpu().numpy()
    out, at = [], 0
    for t in tensors:
        out.append(flat[at:at + t.numel()].reshape(t.shape))
        at += t.numel()
    return out


def _trace_back(bufs: Tuple[torch.Tensor, ...], ext_bufs: Optional[Tuple[torch.Tensor, torch.Tensor]], t_last: int,
                n_best: int) -> List[List[Hypothesis]]:
    """The hypotheses of :func:`beam_search`, read from its buffers in one transfer: for each input its
    ``n_best`` best (stable: in the order they ended among equal scores), each traced back through the beams it
    extended.

    Args:
        bufs: the search's buffers (tok, lp, src: (max_len, B, k); fin_score, fin_lp, fin_end_lp, fin_t,
            fin_src: (B, slots + 1); count (B,); unfinished, scores: (B, k)).
        ext_bufs: (ext (max_len, B, k, ...), fin_ext (B, slots + 1, ...)) the extras, or None.
    """
    host = _to_host(*bufs, *(ext_bufs or ()))
    tok, lps, src, f_score, f_lp, f_end, f_t, f_src, count, unfin, live = host[:11]
    ext, f_ext = (torch.from_numpy(host[11]), torch.from_numpy(host[12])) if ext_bufs else (None, None)
    dtype = ext_bufs[0].dtype if ext_bufs else None
    tok, src, f_t, f_src, count = (a.astype(np.int64) for a in (tok, src, f_t, f_src, count))

    def path(b: int, beam: int, t: int):
        """Tokens, log-probs and extras ((t, ...) or None) of beam ``beam`` of input ``b`` after step t - 1."""
        words, token_lps, beams = [0] * t, [0.0] * t, [0] * t
        for s in range(t - 1, -1, -1):
            words[s], token_lps[s], beams[s] = int(tok[s, b, beam]), float(lps[s, b, beam]), beam
            beam = int(src[s, b, beam])
        rows = ext[torch.arange(t), b, torch.tensor(beams, dtype=torch.long)] if ext is not None else None
        return words, token_lps, rows

    def joined(rows, last):  # a finished hypothesis's extras: its path's rows, then its <end> step's
        if last is None:
            out = rows if rows is not None and len(rows) else None
        else:
            out = torch.cat([rows, last.unsqueeze(0)]) if rows is not None else last.unsqueeze(0)
        return out.to(dtype) if out is not None else None

    out = []
    for b in range(len(count)):
        # the n_best, chosen before tracing (stable: finished in the order they ended, then the unfinished)
        scored = [(float(f_score[b, i]), "finished", i) for i in range(count[b])]
        scored += [(float("-inf"), "unfinished", int(j)) for j in np.flatnonzero(unfin[b])]
        hyps = []
        for score, kind, i in sorted(scored, key=lambda x: x[0], reverse=True)[:n_best]:
            if kind == "finished":
                words, token_lps, rows = path(b, int(f_src[b, i]), int(f_t[b, i]))
                hyps.append(Hypothesis(words, score, float(f_lp[b, i]),
                                       joined(rows, f_ext[b, i] if f_ext is not None else None), True,
                                       token_lps + [float(f_end[b, i])]))
            else:
                words, token_lps, rows = path(b, i, t_last)
                hyps.append(Hypothesis(words, score, float(live[b, i]), joined(rows, None), False, token_lps))
        out.append(hyps)
    return out


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
    host = _to_host(*parts)  # one transfer
    seq, lps = host[0].astype(np.int64), host[1]
    ext = torch.from_numpy(host[2]).to(out_extra[0].dtype) if out_extra else None
    results = []
    for b in range(B):
        n = int(np.argmax(seq[b] == eos)) + 1  # tokens generated, <end> included (always emitted by max_len)
        fin = bool(np.isfinite(lps[b, n - 1]))  # False only when p(<end>) = 0 at the last step
        m = n if fin else n - 1
        token_lps = [float(x) for x in lps[b, :m]]
        log_prob = float(sum(token_lps))
        score = _normalise(log_prob, n, length_penalty) if fin else float("-inf")
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
