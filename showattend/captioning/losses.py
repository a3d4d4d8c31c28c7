"""The training objectives of the captioner (Xu et al. 2015): per-word cross-entropy plus the doubly stochastic
penalty of eq. 14 (soft attention, §4.2.1), and the Monte-Carlo objective of eq. 12 with the moving-average
REINFORCE baseline of eq. 11 (hard attention, §4.1). They read a :class:`~showattend.captioning.network.
DecoderOutput`.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

from ..attention import attention_entropy, location_log_prob
from .config import DS_NORMALISATIONS, SCST_BASELINES
from .network import DecoderOutput

__all__ = ["doubly_stochastic_penalty", "caption_loss", "MovingAverageBaseline", "reinforce_surrogate",
           "hard_attention_loss", "self_critical_baseline", "scst_loss"]




def doubly_stochastic_penalty(alphas: torch.Tensor, words: Union[torch.Tensor, int],
                              normalisation: str = "mean", captions: Optional[Union[torch.Tensor, int]] = None
                              ) -> torch.Tensor:
    """Doubly stochastic regularization (Xu et al. eq. 14), scaled to be added to a per-word cross-entropy.

    With the deficit d_bi = (1 − Σ_t α_bti)² of location i in caption b (B captions, L locations, N words
    predicted in the batch, ``<end>`` included), and a training loss written as the mean cross-entropy per word
    plus λ times this penalty P, the three normalisations are (implementations differ; they are not the same
    strength):

    * ``"mean"``: P = (1/(B·L)) Σ_b Σ_i d_bi, the mean over captions and locations. This is showattend's
      original choice; per caption it weighs (N/B)/L ≈ T/L of eq. 14 (≈ 0.25 for 12-word captions at L = 49).
    * ``"eq14"``: P = (1/N) Σ_b Σ_i d_bi. Eq. 14 exactly, per caption −log p(y|x) + λ Σ_i d_i, summed over the
      batch and divided by N so that the loss stays in nats per word (the ratio of the two terms is eq. 14's).
    * ``"capgen"``: P = (B/(L·N)) Σ_b Σ_i d_bi. The authors' Theano code (``capgen.py``: the batch mean of the
      per-caption summed NLL plus λ ``((1 - alphas.sum(0))**2).sum(0).mean()``, summed over the batch and
      averaged over locations), multiplied by B/N like ``"eq14"``. One difference remains: capgen computes α
      at padded steps too and sums them into Σ_t; here padded steps carry α = 0 and add nothing.

    With T words and L > T locations, d_bi summed over i cannot fall below L(1 − T/L)², reached when every
    location gets the same total attention T/L; the gradient pushes towards that even spread.

    Args:
        alphas: (B, T, L) attention weights, 0 at padded steps.
        words: N, the number of predicted (non-padded) tokens in the batch.
        normalisation: ``"mean"``, ``"eq14"`` or ``"capgen"``.
        captions: B, the number of captions (default: ``alphas.size(0)``). A distributed step passes the global
            N and B, so that the penalties of the processes' shares of a batch add up to the whole batch's.

    Returns:
        () the penalty P (add λ·P to the mean per-word cross-entropy).

    Raises:
        ValueError: unknown ``normalisation``.
    """
    deficit = (1.0 - alphas.float().sum(dim=1)) ** 2  # (B, L)
    L = deficit.size(1)
    B = deficit.size(0) if captions is None else captions
    if normalisation == "mean":
        return deficit.sum() / (B * L)
    if normalisation == "eq14":
        return deficit.sum() / words
    if normalisation == "capgen":
        return deficit.sum() * (B / L) / words
    raise ValueError(f"unknown doubly stochastic normalisation {normalisation!r}; choose one of {DS_NORMALISATIONS}")


def caption_loss(out: DecoderOutput, captions: torch.Tensor, ds_lambda: float = 1.0,
                 label_smoothing: float = 0.0, ds_normalisation: str = "mean",
                 words: Optional[Union[torch.Tensor, int]] = None,
                 num_captions: Optional[Union[torch.Tensor, int]] = None):
    """Cross-entropy over real words plus λ times the doubly stochastic penalty (Xu et al. eq. 14).

    Padded positions are excluded by ``ignore_index`` (no boolean indexing, so nothing is read back from the
    device). By default the sums are divided by this batch's N words and B captions; a distributed step
    passes the global N and B so that the processes' losses add up to the whole batch's.

    Args:
        out: :class:`DecoderOutput` of ``decoder(annotations, captions, lengths)``.
        captions: (B, T) the same captions (targets are ``captions[:, 1:]``).
        ds_lambda: λ of eq. 14 (1.0; the paper and the authors' code use 1, each with its own normalisation).
        label_smoothing: ε of label-smoothed cross-entropy (0: the paper's plain likelihood).
        ds_normalisation: how the penalty is scaled against the likelihood, see :func:`doubly_stochastic_penalty`.
        words: N, the words the sums are divided by (default: this batch's, ``out.mask.sum()``).
        num_captions: B of the penalty's normalisation (default: this batch's).

    Returns:
        (loss, cross_entropy, penalty): scalars; cross-entropy is the summed NLL of the non-padded target words
        divided by N (nats per word, without smoothing), the penalty is :func:`doubly_stochastic_penalty`
        (before λ).
    """
    words = out.mask.sum() if words is None else words
    targets = captions[:, 1:].masked_fill(~out.mask, -100).reshape(-1)  # (B·(T-1),), -100 = padding
    logits = out.logits.float().reshape(targets.size(0), -1)  # (B·(T-1), V)
    ce = F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum") / words
    fit = F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum",
                          label_smoothing=label_smoothing) / words if label_smoothing else ce
    penalty = doubly_stochastic_penalty(out.alphas, words, ds_normalisation, num_captions)
    return fit + ds_lambda * penalty, ce, penalty


# --------------------------------------------------------------------------------------------------------
# Stochastic "hard" attention (Xu et al. §4.1)


class MovingAverageBaseline:
    """The REINFORCE baseline of Xu et al. eq. 11: b_k = decay · b_{k-1} + (1 − decay) · r_k.

    b is a detached 0-d tensor on the rewards' device (a float before the first update), outside the autograd
    graph, so it never receives gradient and updating it never waits for the device.

    Args:
        decay: 0.9 in the paper.
        value: b_0.
    """

    def __init__(self, decay: float = 0.9, value: float = 0.0):
        self.decay, self.value, self.steps = decay, value, 0

    def update(self, reward: torch.Tensor) -> torch.Tensor:
        """Fold in the mean of a minibatch's rewards (any shape; a 0-d tensor is taken as that mean, e.g. an
        all-reduced one); returns the new b. The first call sets b = r."""
        r = reward.detach().float().mean()
        self.value = r if self.steps == 0 else self.decay * self.value + (1 - self.decay) * r
        self.steps += 1
        return self.value

    def state_dict(self) -> dict:
        v = self.value.detach().cpu() if isinstance(self.value, torch.Tensor) else torch.tensor(float(self.value))
        return {"decay": self.decay, "value": v, "steps": self.steps}

    def load_state_dict(self, d: dict, device: Union[str, torch.device] = "cpu") -> None:
        self.decay, self.steps = d["decay"], d["steps"]
        self.value = torch.as_tensor(d["value"], dtype=torch.float32).to(device)


def reinforce_surrogate(log_prob_sample: torch.Tensor, reward: torch.Tensor,
                        baseline: Union[float, torch.Tensor]) -> torch.Tensor:
    """A surrogate whose gradient is the REINFORCE estimate (r − b) ∇ log p(s̃) (Xu et al. eq. 12).

    The reward is detached (no gradient flows through the sampled outcome or the baseline), so only
    ``log_prob_sample`` carries gradient.

    Args:
        log_prob_sample: (B,) log p(s̃ | a) of each sample, differentiable.
        reward: (B,) the sample's reward, e.g. log p(y | s̃, a).
        baseline: the scalar b (a float or a 0-d tensor).

    Returns:
        (B,) surrogate values, to be *maximised* (sum them into the objective).
    """
    return (reward.detach() - baseline) * log_prob_sample


def hard_attention_loss(out: DecoderOutput, captions: torch.Tensor, baseline: Union[float, torch.Tensor],
                        reinforce_weight: float = 0.1, entropy_weight: float = 0.002, ds_lambda: float = 1.0,
                        label_smoothing: float = 0.0, ds_normalisation: str = "mean",
                        words: Optional[Union[torch.Tensor, int]] = None,
                        num_captions: Optional[Union[torch.Tensor, int]] = None):
    """Negative of the Monte-Carlo objective of Xu et al. eq. 12 for a batch decoded with sampled locations.

    For each caption with sampled locations s̃ (``out.locations``), the objective is

        log p(y | s̃, a) + λ_r (r − b) log p(s̃ | a) + λ_e H[s̃],   r = log p(y | s̃, a) / |y|

    where log p(s̃ | a) = Σ_t log α_{t, s̃_t} and H[s̃] = Σ_t H(α_t). Its gradient is the estimate of eq. 12 of
    the gradient of the variational lower bound L_s = Σ_s p(s | a) log p(y | s, a) (eq. 10): unbiased for any
    constant b when λ_e = 0 and λ_r·r = log p(y | s̃, a) (λ_r = |y|). As in the authors' code, the reward is the
    per-word log-likelihood (their ``masked_cost.mean(0)``) and λ_r = 0.1 (their ``/10.``); b is the
    :class:`MovingAverageBaseline` of that reward (eq. 11). The gradient of log p(y | s̃, a) reaches the
    decoder but not α (ẑ_t = a_{s̃_t} is a selection); α learns through the REINFORCE and entropy terms and the
    doubly stochastic penalty. The loss is divided by the number of words, like :func:`caption_loss`.

    With ``label_smoothing`` ε > 0 the likelihood term is the label-smoothed cross-entropy (as in
    :func:`caption_loss`); the reward stays the plain log-likelihood.

    Args:
        out: :class:`DecoderOutput` of ``decoder(..., hard=True)``.
        captions: (B, T) the captions.
        baseline: current b (the caller updates it afterwards with the returned reward).
        reinforce_weight: λ_r.
        entropy_weight: λ_e.
        ds_lambda: λ of the doubly stochastic penalty (eq. 14).
        label_smoothing: ε of the likelihood term.
        ds_normalisation: see :func:`doubly_stochastic_penalty`.
        words, num_captions: the N and B the sums are divided by (default: this batch's; a distributed step
            passes the global ones, see :func:`caption_loss`).

    Returns:
        (loss, cross_entropy per word, penalty, reward (B,) detached).

    Raises:
        ValueError: ``out`` has no sampled locations.
    """
    if out.locations is None:
        raise ValueError("hard_attention_loss needs a decoder output with sampled locations (hard=True)")
    mask = out.mask.float()  # (B, T-1)
    logits, targets = out.logits.float().transpose(1, 2), captions[:, 1:]  # (B, V, T-1), (B, T-1)
    nll = F.cross_entropy(logits, targets, reduction="none") * mask  # (B, T-1)
    fit = F.cross_entropy(logits, targets, reduction="none", label_smoothing=label_smoothing) * mask \
        if label_smoothing else nll
    per_caption = mask.sum(1)  # (B,) words of each caption
    words = per_caption.sum() if words is None else words
    log_lik = -nll.sum(1)  # (B,) log p(y | s̃, a)
    reward = log_lik.detach() / per_caption  # (B,) per-word log-likelihood, a constant for the gradient
    alphas = out.alphas.float()
    log_p_s = (location_log_prob(alphas, out.locations.clamp_min(0)) * mask).sum(1)  # (B,) log p(s̃ | a)
    entropy = (attention_entropy(alphas) * mask).sum(1)  # (B,) H[s̃]
    objective = -fit.sum() + reinforce_weight * reinforce_surrogate(log_p_s, reward, baseline).sum() \
        + entropy_weight * entropy.sum()
    penalty = doubly_stochastic_penalty(alphas, words, ds_normalisation, num_captions)
    loss = -objective / words + ds_lambda * penalty
    return loss, nll.sum() / words, penalty, reward


# --------------------------------------------------------------------------------------------------------
# Self-critical sequence training (Rennie et al. 2017)




def self_critical_baseline(rewards: torch.Tensor, kind: str = "mean",
                           greedy_rewards: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The baseline b of each sampled caption in self-critical sequence training.

    Args:
        rewards: (B, k) the rewards of k sampled captions of each of B images.
        kind: ``"mean"``, the mean reward of the image's other k − 1 samples (Luo 2020, "A better variant of
            self-critical sequence training"; needs k ≥ 2), or ``"greedy"``, the reward of the image's greedy
            caption (Rennie et al. 2017, the "self-critical" baseline of test-time inference).
        greedy_rewards: (B,) with ``kind="greedy"``.

    Returns:
        (B, k) baselines, detached.

    Raises:
        ValueError: unknown ``kind``, ``"mean"`` with k < 2, ``"greedy"`` without ``greedy_rewards``.
    """
    rewards = rewards.detach()
    if kind == "mean":
        k = rewards.size(1)
        if k < 2:
            raise ValueError("the mean-of-the-other-samples baseline needs at least 2 samples per image")
        return (rewards.sum(1, keepdim=True) - rewards) / (k - 1)
    if kind == "greedy":
        if greedy_rewards is None:
            raise ValueError("the greedy baseline needs the greedy captions' rewards")
        return greedy_rewards.detach().unsqueeze(1).expand_as(rewards)
    raise ValueError(f"unknown SCST baseline {kind!r}; choose one of {SCST_BASELINES}")


def scst_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, reward: torch.Tensor,
              baseline: torch.Tensor, banned: Optional[torch.Tensor] = None,
              tokens: Optional[Union[torch.Tensor, int]] = None):
    """Self-critical policy gradient (Rennie et al. 2017, eq. 7-9): −Σ_s (r(w^s) − b) log p(w^s), the REINFORCE
    surrogate of :func:`reinforce_surrogate` with the caption as the sampled outcome, divided by the number of
    sampled tokens (the token mean of common SCST code).

    Args:
        logits: (S, T, V) teacher-forced scores of the S sampled captions' tokens (the decoder run on them).
        targets: (S, T) the sampled tokens (``<end>`` included when drawn).
        mask: (S, T) bool, True at drawn tokens.
        reward, baseline: (S,) r(w^s) and b.
        banned: (V,) bool, the tokens the sampler could not draw (their probability is 0 in the policy).
        tokens: the normaliser (default: ``mask.sum()``; a distributed step passes the global count).

    Returns:
        (loss, log p(w^s) (S,) detached).
    """
    logits = logits.float()
    if banned is not None:
        logits = logits.masked_fill(banned, float("-inf"))
    token_lp = torch.log_softmax(logits, dim=-1).gather(2, targets.unsqueeze(2)).squeeze(2)  # (S, T)
    seq_lp = token_lp.masked_fill(~mask, 0.0).sum(1)  # (S,) log p(w^s)
    tokens = mask.sum() if tokens is None else tokens
    return -reinforce_surrogate(seq_lp, reward, baseline).sum() / tokens, seq_lp.detach()
