"""The shared attention core: score functions, masking, soft and hard attention.

Both applications of showattend use this module and nothing else for attention:

* captioning (Xu et al., "Show, Attend and Tell", ICML 2015): the keys and values are the annotation
  vectors a_1..a_L of an image, the query is the previous LSTM state h_{t-1};
* translation (Bahdanau et al. 2015; Luong et al. 2015): the keys and values are the encoder's per-token
  outputs, the query is the decoder state, and padded source positions are masked.

Notation (shapes in docstrings): B batch, L number of keys (image locations or source tokens), Q query
size, K key size, D value size, A attention (projection) size.

The key side of every score is projected **once** per image or sentence with :meth:`Attention.project_keys`;
the per-step call then only projects the query. (Recomputing U a_i at every step costs L·D·A multiply-adds per
image and step, 32 M at L = 49, D = 1280, A = 512: about five times the rest of the captioner's decoder step.)

Score functions, e_ti = f_att(a_i, h_{t-1}) (Xu et al. eq. 4):

* ``"dot"``:      e = q^T k                       (Luong et al. eq. 8, "dot"; needs Q == K)
* ``"general"``:  e = q^T W k                     (Luong et al. eq. 8, "general")
* ``"additive"``: e = v^T tanh(W q + U k)          (Bahdanau et al. eq. 6 / appendix A.1.2; Luong "concat";
                                                    the f_att MLP of Xu et al. §3.1.2)

Weights α_t = softmax(e_t) over the valid keys (Xu et al. eq. 5); soft attention's context vector is
ẑ_t = Σ_i α_ti a_i (Xu et al. eq. 13, the expectation of the context under α); hard attention samples a
location s_t ~ Multinoulli_L(α_t) and uses ẑ_t = a_{s_t} (Xu et al. eq. 8-9).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SCORES", "Attention", "AttentionOutput", "masked_softmax", "sample_locations", "location_log_prob",
           "attention_entropy"]

SCORES = ("dot", "general", "additive")


class AttentionOutput(NamedTuple):
    """What one attention step returns.

    Attributes:
        context: (B, D) context vector ẑ_t.
        alpha: (B, L) attention weights α_t; each row sums to 1 over valid keys, 0 at masked keys.
        location: (B,) long, the sampled location s_t for hard attention, else None.
    """

    context: torch.Tensor
    alpha: torch.Tensor
    location: Optional[torch.Tensor] = None


def masked_softmax(scores: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax over the last dimension that gives exactly 0 weight to masked positions.

    Args:
        scores: (B, L) float scores e.
        mask: (B, L) bool, True where the key is valid (not padding); None means all valid.

    Returns:
        (B, L) weights α; rows with at least one valid key sum to 1; a row with no valid key is all 0
        (rather than NaN).
    """
    if mask is None:
        return F.softmax(scores, dim=-1)
    scores = scores.masked_fill(~mask, float("-inf"))
    alpha = F.softmax(scores, dim=-1)
    return alpha.nan_to_num(0.0)  # all-masked rows: softmax of all -inf is NaN


def sample_locations(alpha: torch.Tensor, generator: Optional[torch.Generator] = None,
                     uniform: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sample one location per row, s_t ~ Multinoulli_L(α_t) (Xu et al. eq. 8).

    The sample is a discrete index and carries no gradient; the REINFORCE term of eq. 12 reaches α through
    ``log α_{s_t}``, which the caller computes from the returned indices.

    With ``uniform`` the sample is the inverse CDF at the given u ~ U[0, 1): the first i with
    Σ_{j≤i} α_j ≥ u (a location with α_i = 0 is never chosen, except i = 0 at u = 0 exactly). Training draws
    the uniforms of a whole global batch from one seeded generator, so a caption gets the same location
    whichever process of a distributed run holds it.

    Args:
        alpha: (B, L) probabilities, rows summing to 1.
        generator: optional torch.Generator (on alpha's device) of the uniforms drawn when none are given.
        uniform: optional (B,) uniforms in [0, 1) to invert (None: drawn from ``generator``).

    Returns:
        (B,) long tensor of locations.
    """
    if uniform is None:  # drawn on alpha's device: no host read (torch.multinomial may check on the host)
        uniform = torch.rand(alpha.size(0), generator=generator, device=alpha.device)
    cdf = alpha.detach().float().cumsum(-1)  # (B, L)
    return (cdf < uniform.unsqueeze(-1)).sum(-1).clamp_max(alpha.size(-1) - 1)


def location_log_prob(alpha: torch.Tensor, location: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """log p(s_t | a) = log α_{t, s_t} of sampled locations, differentiable with respect to α.

    This is the ``∂ log p(s̃ | a) / ∂W`` factor of the REINFORCE term of Xu et al. eq. 12; the sample itself
    (``location``) is an integer and carries no gradient.

    Args:
        alpha: (..., L) attention weights.
        location: (...) long sampled locations.
        eps: floor inside the log.

    Returns:
        (...) log-probabilities.
    """
    return torch.log(alpha.gather(-1, location.unsqueeze(-1)).squeeze(-1).clamp_min(eps))


def attention_entropy(alpha: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Entropy H = −Σ_i α_i log α_i of the location distribution (the H[s̃] of Xu et al. eq. 12), in nats.

    Args:
        alpha: (..., L) attention weights (masked keys have α = 0 and add nothing).

    Returns:
        (...) entropies.
    """
    return -(alpha * torch.log(alpha.clamp_min(eps))).sum(-1)


def _additive_scores(projected_keys: torch.Tensor, projected_query: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The additive score e_i = v · tanh(U a_i + W h) over (B, L, A), computed as 2 v · σ(2x) − Σ_a v_a (the
    same function: tanh x = 2σ(2x) − 1).

    It is the largest elementwise cost of a decoding or training step. Written this way it makes one (B, L, A)
    tensor and works on it in place: on a 2-core x86 CPU (AVX-512, torch 2.13) it took 4 ms for (150, 49, 512)
    where ``v(torch.tanh(x))`` took 25 ms. torch.tanh is slow there and every large temporary is fresh memory
    to fault in.

    Args:
        projected_keys: (B, L, A) U a_i + b; projected_query: (B, A) W h; v: (1, A) the score's weight. (Keys
            (B, 1, L, A) and queries (B, g, A) give (B, g, L): g queries per key set.)

    Returns:
        (B, L) scores, in fp32 or v's wider dtype (under autocast the product runs in autocast's dtype).
    """
    hidden = (projected_keys + projected_query.unsqueeze(-2)).mul_(2).sigmoid_()  # (B, L, A) σ(2x)
    dtype = torch.promote_types(v.dtype, torch.float32)  # fp32 for a bf16 product (fp64 stays fp64)
    return 2 * F.linear(hidden, v).squeeze(-1).to(dtype) - v.to(dtype).sum()


class Attention(nn.Module):
    """Attention with a choice of score function, a key padding mask, and soft or hard read-out.

    Usage::

        att = Attention(query_dim=512, key_dim=1280, attention_dim=512, score="additive")
        keys = att.project_keys(annotations)          # (B, L, A), once per image
        for t in ...:
            out = att(h, keys, annotations, mask)      # out.context (B, D), out.alpha (B, L)

    Args:
        query_dim: Q, size of the query (decoder state).
        key_dim: K, size of each key (annotation vector).
        attention_dim: A, size of the additive score's hidden layer (ignored by "dot" and "general").
        score: one of ``"dot"``, ``"general"``, ``"additive"`` (see the module docstring for the equations).

    Raises:
        ValueError: unknown score, or ``"dot"`` with ``query_dim != key_dim``.
    """

    def __init__(self, query_dim: int, key_dim: int, attention_dim: int = 512, score: str = "additive"):
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"unknown attention score {score!r}; choose one of {SCORES}")
        if score == "dot" and query_dim != key_dim:
            raise ValueError(f"dot attention needs query_dim == key_dim, got {query_dim} and {key_dim}")
        self.score, self.query_dim, self.key_dim = score, query_dim, key_dim
        if score == "general":
            self.W = nn.Linear(key_dim, query_dim, bias=False)  # applied to the keys once: W k
        elif score == "additive":
            self.U = nn.Linear(key_dim, attention_dim)  # U a_i (+ bias), once per image
            self.W = nn.Linear(query_dim, attention_dim, bias=False)  # W h_{t-1}, every step
            self.v = nn.Linear(attention_dim, 1, bias=False)

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """Project the keys once, before the decoding loop.

        Args:
            keys: (B, L, K) keys (annotation vectors or encoder outputs).

        Returns:
            (B, L, K) for "dot" (unchanged), (B, L, Q) for "general" (W k), (B, L, A) for "additive" (U k).
        """
        if self.score == "dot":
            return keys
        return self.U(keys) if self.score == "additive" else self.W(keys)

    @property
    def query_weight(self) -> Optional[torch.Tensor]:
        """(A, Q) the per-step query projection W of the additive score, None for "dot" and "general" (their
        query enters the score as it is). A caller that multiplies h_{t-1} by several matrices at every step
        (the captioner's decoder) stacks this one with its others into one product and passes the result to
        :meth:`forward` as ``projected_query``."""
        return self.W.weight if self.score == "additive" else None

    def scores(self, query: torch.Tensor, projected_keys: torch.Tensor,
               projected_query: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Unnormalised scores e (Xu et al. eq. 4).

        Args:
            query: (N, Q), N = B·g: g queries per key set (e.g. the beams of a search), rows b·g .. b·g + g − 1
                reading key set b; g = 1 usually.
            projected_keys: (B, L, ·) from :meth:`project_keys`.
            projected_query: (N, A) ``query @ query_weight.T`` when the caller computed it (additive only).

        Returns:
            (N, L) scores.
        """
        B, L = projected_keys.shape[:2]
        g = query.size(0) // B if B else 1
        if self.score == "additive":
            q = self.W(query) if projected_query is None else projected_query  # (N, A)
            if g == 1:
                return _additive_scores(projected_keys, q, self.v.weight)  # (B, L)
            return _additive_scores(projected_keys.unsqueeze(1), q.view(B, g, q.size(-1)),
                                    self.v.weight).reshape(B * g, L)  # (B, g, L) -> (N, L)
        return torch.bmm(query.view(B, g, query.size(-1)), projected_keys.transpose(1, 2)).reshape(B * g, L)  # (N, L)

    def forward(
        self,
        query: torch.Tensor,
        projected_keys: torch.Tensor,
        values: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        hard: bool = False,
        generator: Optional[torch.Generator] = None,
        location: Optional[torch.Tensor] = None,
        uniform: Optional[torch.Tensor] = None,
        projected_query: Optional[torch.Tensor] = None,
    ) -> AttentionOutput:
        """One attention step.

        Args:
            query: (N, Q) query, e.g. h_{t-1}; N = B usually, or B·g for g queries per key set (the beams of a
                search: rows b·g .. b·g + g − 1 attend over keys and values b, which are then not copied per
                beam).
            projected_keys: (B, L, ·) from :meth:`project_keys`.
            values: (B, L, D) values (the annotation vectors a_i).
            mask: (B, L) bool, True for valid keys; None means all valid.
            hard: False for soft attention, ẑ_t = Σ_i α_ti a_i (Xu et al. eq. 13); True to sample
                s_t ~ Multinoulli(α_t) and return ẑ_t = a_{s_t} (eq. 8-9).
            generator: optional torch.Generator for the hard sample.
            location: (B,) long, with ``hard``: attend to these locations instead of sampling them (to evaluate
                log p(y | s, a) for a given s, e.g. when enumerating every s).
            uniform: (B,) with ``hard``: sample by inverting α's CDF at these uniforms (see
                :func:`sample_locations`).
            projected_query: (B, A) the additive score's W h_{t-1}, when the caller computed it (see
                :attr:`query_weight`).

        Returns:
            :class:`AttentionOutput` (context (N, D), alpha (N, L), location (N,) or None).
        """
        B = values.size(0)
        g = query.size(0) // B if B else 1  # queries per key set (beams sharing an input's keys), usually 1
        if mask is not None and g > 1:
            mask = mask.repeat_interleave(g, 0)
        alpha = masked_softmax(self.scores(query, projected_keys, projected_query), mask)  # (N, L)
        if hard:
            if location is None:
                location = sample_locations(alpha, generator, uniform)  # (N,)
            rows = torch.arange(alpha.size(0), device=values.device) // g
            return AttentionOutput(values[rows, location], alpha, location)  # (N, D)
        context = torch.bmm(alpha.view(B, g, alpha.size(-1)), values).view(B * g, values.size(-1))  # (N, D)
        return AttentionOutput(context, alpha, None)
