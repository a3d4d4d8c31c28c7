"""The searches' results: :class:`Hypothesis`, and reading them back from the device.

A search keeps its work on the device (:mod:`showattend.search`); at the end, every buffer it wrote travels to
the host in one transfer (:func:`to_host`), and the hypotheses are assembled there (:func:`trace_back` for beam
search: each hypothesis followed back through the beams it extended).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import torch

__all__ = ["Hypothesis", "to_host", "trace_back", "normalise"]


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


def normalise(log_prob: float, length: int, length_penalty: float) -> float:
    return log_prob / (length ** length_penalty) if length_penalty else log_prob


def to_host(*tensors: torch.Tensor) -> List[np.ndarray]:
    """The tensors as host arrays, in one device-to-host transfer (one wait for the device instead of one per
    tensor): they travel as one float64 vector, which holds every int below 2^53 (token ids, steps, counts),
    every bool and every float32/bf16 value exactly."""
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors]).cpu().numpy()
    out, at = [], 0
    for t in tensors:
        out.append(flat[at:at + t.numel()].reshape(t.shape))
        at += t.numel()
    return out


def trace_back(bufs: Tuple[torch.Tensor, ...], ext_bufs: Optional[Tuple[torch.Tensor, torch.Tensor]], t_last: int,
                n_best: int) -> List[List[Hypothesis]]:
    """The hypotheses of :func:`beam_search`, read from its buffers in one transfer: for each input its
    ``n_best`` best (stable: in the order they ended among equal scores), each traced back through the beams it
    extended.

    Args:
        bufs: the search's buffers (tok, lp, src: (max_len, B, k); fin_score, fin_lp, fin_end_lp, fin_t,
            fin_src: (B, slots + 1); count (B,); unfinished, scores: (B, k)).
        ext_bufs: (ext (max_len, B, k, ...), fin_ext (B, slots + 1, ...)) the extras, or None.
    """
    host = to_host(*bufs, *(ext_bufs or ()))
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
