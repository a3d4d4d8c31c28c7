"""The two decoders that ``scripts/benchmark.py --only decode`` times beside showattend's own (speed baselines
only; not part of the package):

* :func:`old_decode`: showattend's beam search as it was before it moved onto the device (0.5, stop 19): the
  token history and attention weights re-concatenated every step, ``torch.nonzero`` and ``float``/``tolist``
  reads per ended hypothesis, a per-input Python loop for the pruning bound, a step that masks the
  never-generated tokens with a CPU index list, and the additive score as v·tanh(·) (:func:`literal_score`).
  Same captions as today's search.
* :func:`per_image_decode`: the per-image loop of the most used public implementation (sgrvinod's
  "a-PyTorch-Tutorial-to-Image-Captioning", ``caption.py``: ``caption_image_beam_search``), driving showattend's
  decoder step: one image at a time, k rows per step, completed sequences moved out by Python lists; run for
  exactly ``steps`` steps here so that both do the same work; the score as v·tanh(·), as there.
"""
import contextlib
import functools
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from showattend import attention
from showattend.hypotheses import Hypothesis
from showattend.hypotheses import normalise as _normalise
from showattend.search import StepFn, _candidates, _expand


@contextlib.contextmanager
def literal_score():
    """Within it, the additive score is computed literally, v·tanh(U a + W h) with ``torch.tanh``, as showattend
    did before 0.5 (and as the public implementations do): the baselines' step."""
    fast = attention._additive_scores
    attention._additive_scores = lambda k, q, v: F.linear(torch.tanh(k + q.unsqueeze(1)), v).squeeze(-1)
    try:
        yield
    finally:
        attention._additive_scores = fast


def _path(history, token_lps, extras, b, src, end_lp=None, end_extra=None):
    lps = token_lps[b, src].tolist()
    ext = extras[b, src] if extras is not None else None
    if end_lp is not None:
        lps.append(end_lp)
        if end_extra is not None:
            ext = end_extra.unsqueeze(0) if ext is None else torch.cat([ext, end_extra.unsqueeze(0)])
    return history[b, src].tolist(), lps, ext


@torch.no_grad()
def old_beam_search(step: StepFn, state: Sequence[torch.Tensor], context: Sequence[torch.Tensor], bos: int, eos: int,
                beam_size: int = 3, max_len: int = 20, length_penalty: float = 0.0,
                n_best: int = 1) -> List[List[Hypothesis]]:
    """showattend 0.5's batched beam search (see the module docstring)."""
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
        last = t == max_len - 1
        cand, top_scores, top_lps, beam_idx, top_tokens, is_eos = _candidates(log_probs, scores, eos, last)
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



def _old_step(cap, tokens, state, context, weights=None):
    annotations, keys = context
    logits, state, att, beta = cap.decoder.step(tokens, state, annotations, keys, weights=weights)
    log_probs = F.log_softmax(logits.float(), dim=-1)
    log_probs[:, [cap.vocab.pad, cap.vocab.start]] = float("-inf")  # a CPU index list every step
    log_probs[:, cap.vocab.unk] = float("-inf")
    return log_probs, state, torch.cat([att.alpha, beta.unsqueeze(1)], dim=1)


@torch.no_grad()
@literal_score()
def old_decode(cap, annotations: torch.Tensor, beam_size: int, max_len: int) -> List[Hypothesis]:
    """The best hypothesis per image from showattend 0.5's search, fp32."""
    step = functools.partial(_old_step, cap, weights=cap.decoder.step_weights())
    keys = cap.decoder.attention.project_keys(annotations)
    state = cap.decoder.init_state(annotations)
    return [h[0] for h in old_beam_search(step, state, (annotations, keys), cap.vocab.start, cap.vocab.end,
                                          beam_size, max_len)]


@torch.no_grad()
@literal_score()
def per_image_decode(cap, annotations: torch.Tensor, beam_size: int, steps: int) -> List[List[int]]:
    """sgrvinod's ``caption_image_beam_search`` for each image in turn, ``steps`` steps each."""
    dec, V, end = cap.decoder, len(cap.vocab), cap.vocab.end
    weights = dec.step_weights()
    captions = []
    for image in annotations:
        k = beam_size
        enc = image.unsqueeze(0).expand(k, *image.shape)
        keys = dec.attention.project_keys(enc)
        prev = torch.full((k,), cap.vocab.start, dtype=torch.long, device=image.device)
        seqs = prev.unsqueeze(1)
        top_scores = torch.zeros(k, 1, device=image.device)
        complete, complete_scores = [], []
        h, c = dec.init_state(enc)
        for step in range(1, steps + 1):
            logits, (h, c), _, _ = dec.step(prev, (h, c), enc, keys, weights=weights)
            scores = top_scores.expand(k, V) + F.log_softmax(logits, dim=1)
            top_scores, top_words = (scores[0] if step == 1 else scores.view(-1)).topk(k, 0)
            prev_inds, next_inds = top_words // V, top_words % V
            seqs = torch.cat([seqs[prev_inds], next_inds.unsqueeze(1)], dim=1)
            incomplete = [i for i, w in enumerate(next_inds) if w != end]
            done = list(set(range(len(next_inds))) - set(incomplete))
            if done:
                complete.extend(seqs[done].tolist())
                complete_scores.extend(top_scores[done])
            k -= len(done)
            if k == 0 or step == steps:
                break
            seqs = seqs[incomplete]
            h, c = h[prev_inds[incomplete]], c[prev_inds[incomplete]]
            enc, keys = enc[prev_inds[incomplete]], keys[prev_inds[incomplete]]
            top_scores = top_scores[incomplete].unsqueeze(1)
            prev = next_inds[incomplete]
        if not complete:
            complete, complete_scores = seqs.tolist(), list(top_scores.view(-1))
        captions.append(complete[max(range(len(complete)), key=lambda i: float(complete_scores[i]))])
    return captions
