"""The LSTM decoder of "Show, Attend and Tell" (Xu et al., ICML 2015, §3.1.2 and §4.2.1).

Read top to bottom like the paper. At step t, with the previous word y_{t-1} and state (h_{t-1}, c_{t-1}):

1. attention weights over the L annotation vectors, α_t = softmax(f_att(a_i, h_{t-1}))      (eq. 4-5)
2. context vector ẑ_t = φ({a_i}, {α_i}): Σ_i α_ti a_i (soft, eq. 13) or a_{s_t} (hard, eq. 8-9)
3. gating scalar β_t = σ(f_β(h_{t-1})), ẑ_t <- β_t ẑ_t                                     (§4.2.1; a scalar)
4. LSTM step on [E y_{t-1}; ẑ_t]                                                            (eq. 1-3)
5. deep output p(y_t) ∝ exp(L_o(E y_{t-1} + L_h h_t + L_z ẑ_t))                            (eq. 7)

The initial state is h_0 = tanh(f_init,h(mean_i a_i)), c_0 = tanh(f_init,c(mean_i a_i)) (§3.1.2). As in the
authors' code (``capgen.py``), the deep output sums the three terms, applies tanh, then dropout, then L_o,
and dropout is also applied to h_t before L_h.

How the arithmetic is arranged (the equations are unchanged; the weights are ``nn.LSTMCell``'s, so checkpoints
are too). Only what depends on the recurrence runs inside the loop over t:

* the word part of the LSTM input, W_e E y_{t-1} + b, of every step is one matrix product before the loop, and
  the deep output of every step one after it;
* inside the loop, everything computed from h_{t-1} (the additive score's W h_{t-1}, f_β's w_β h_{t-1} and
  the LSTM's W_hh h_{t-1}) is one matrix product, and the context part W_z ẑ_t another;
* the matrices are gathered once per batch (:meth:`Decoder.step_weights`), and under autocast cast once to its
  dtype (autocast would cast them again at every step); the LSTM cell's gates are summed and applied in fp32.

The training objectives (cross-entropy with the doubly stochastic penalty, hard attention's REINFORCE) are in
:mod:`showattend.captioning.losses`.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import Attention
from .config import ModelConfig
from .encoders import ENCODERS, Encoder
from .recurrent import RecurrentWeight

__all__ = ["Decoder", "DecoderOutput", "StepWeights", "FineTuned", "build_decoder", "reference_forward"]


class DecoderOutput(NamedTuple):
    """Teacher-forced decoder outputs.

    Attributes:
        logits: (B, T-1, V) unnormalised scores of y_1..y_{T-1}; meaningless at padded steps (see mask).
        alphas: (B, T-1, L) attention weights; 0 at padded steps.
        mask: (B, T-1) bool, True at real (non-padded) steps.
        locations: (B, T-1) long sampled locations (hard attention), -1 at padded steps; None for soft.
        betas: (B, T-1) gating scalars β_t; 0 at padded steps.
    """

    logits: torch.Tensor
    alphas: torch.Tensor
    mask: torch.Tensor
    locations: Optional[torch.Tensor]
    betas: torch.Tensor


class StepWeights(NamedTuple):
    """The decoder's matrices as the recurrence uses them (see :meth:`Decoder.step_weights`).

    Attributes:
        hidden: the products of h_{t-1} stacked, (Aq + Sb + 4n, n): the additive score's W (Aq = A rows, 0 for
            other scores), f_β's w_β (Sb = 1 row with the gate, 0 without) and the LSTM's W_hh.
        context: the LSTM input weights of the context ẑ_t, (4n, D).
        words: (4n, m) the LSTM input weights of the word embedding E y_{t-1}.
        bias: (4n,) b_ih + b_hh.
        query_rows: Aq.
        word_table: (V, 4n) W_e E_v + b for every word v, or None: the word part of the LSTM input looked up
            instead of multiplied (decoding only; see :meth:`Decoder.step_weights`).
    """

    hidden: RecurrentWeight
    context: RecurrentWeight
    words: torch.Tensor
    bias: torch.Tensor
    query_rows: int
    word_table: Optional[torch.Tensor] = None


class Decoder(nn.Module):
    """LSTM decoder with attention over annotation vectors.

    Args:
        vocab_size: V.
        annotation_dim: D.
        embed_dim: m, size of the word embedding E y (and of the deep output's hidden layer).
        hidden_dim: n, size of the LSTM state.
        attention_dim: A, hidden size of the additive score f_att.
        dropout: dropout probability of the deep output.
        score: attention score function: "additive" (the paper's f_att), "general" or "dot".
        selector: use the gating scalar β (§4.2.1).
    """

    def __init__(self, vocab_size: int, annotation_dim: int, embed_dim: int = 512, hidden_dim: int = 512,
                 attention_dim: int = 512, dropout: float = 0.5, score: str = "additive", selector: bool = True):
        super().__init__()
        self.vocab_size, self.annotation_dim = vocab_size, annotation_dim
        self.embedding = nn.Embedding(vocab_size, embed_dim)  # E
        self.init_h = nn.Linear(annotation_dim, hidden_dim)  # f_init,h
        self.init_c = nn.Linear(annotation_dim, hidden_dim)  # f_init,c
        self.attention = Attention(hidden_dim, annotation_dim, attention_dim, score)  # f_att
        self.f_beta = nn.Linear(hidden_dim, 1) if selector else None  # gating scalar β
        self.lstm = nn.LSTMCell(embed_dim + annotation_dim, hidden_dim)
        self.L_h = nn.Linear(hidden_dim, embed_dim)
        self.L_z = nn.Linear(annotation_dim, embed_dim)
        self.L_o = nn.Linear(embed_dim, vocab_size)
        self.dropout = nn.Dropout(dropout)
        # the per-step products' weight gradients in one product per batch (RecurrentWeight); off when the
        # recurrence is compiled (``--compile``), which traces plain autograd
        self.defer_weight_grads = True

    def init_state(self, annotations: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """h_0, c_0 from the mean annotation vector (§3.1.2).

        Args:
            annotations: (B, L, D).

        Returns:
            h_0, c_0, each (B, n).
        """
        mean = annotations.mean(dim=1)  # (B, D)
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))

    def step_weights(self, word_table: bool = False) -> StepWeights:
        """Gather the matrices of one step (:class:`StepWeights`) once per batch, in autocast's dtype when it is
        on for this module's device (so that it does not cast them again at every step). Gradients flow back to
        the parameters, those of the per-step products in one product per batch (:class:`~showattend.captioning.recurrent.
        RecurrentWeight`).

        Args:
            word_table: also give the (V, 4n) table of the word part of the LSTM input, W_e E_v + b for every
                word v (computed in fp32, then cast), so that a step looks its rows up instead of multiplying
                each embedding: 4n·m multiply-adds less per row and step (13% of a beam-search step at the
                default sizes). Made once per set of weights and kept with the module until the embedding or
                the LSTM's input weights change (in place or replaced); for decoding, without gradients.

        Raises:
            RuntimeError: ``word_table`` while gradients are enabled.
        """
        query = self.attention.query_weight
        parts = ([query] if query is not None else []) + ([self.f_beta.weight] if self.f_beta is not None else [])
        W_ih, m = self.lstm.weight_ih, self.embedding.embedding_dim
        weights = (torch.cat(parts + [self.lstm.weight_hh]), W_ih[:, m:], W_ih[:, :m],
                   self.lstm.bias_ih + self.lstm.bias_hh)
        device = W_ih.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            weights = tuple(w.to(dtype) for w in weights)
        hidden, context, words, bias = weights
        table = self._word_table(words.dtype) if word_table else None
        defer = self.defer_weight_grads
        return StepWeights(RecurrentWeight(hidden, defer), RecurrentWeight(context, defer), words, bias,
                           0 if query is None else query.size(0), table)

    def _word_table(self, dtype: torch.dtype) -> torch.Tensor:
        """(V, 4n) W_e E + b in ``dtype``, cached (made in fp32, cast once per dtype) while the values it is made
        of are the same.

        The cache keeps a copy of E, W_e and b and compares the live tensors with it at every call (a V·m + 4n·m
        element comparison, 1/4n of the table's multiply-adds; on a GPU one host read per search): the only rule
        that no parameter update can escape. Version counters and storage addresses cannot serve: a fused
        optimizer (``torch.optim.Adam(fused=True)``, the engine's) writes the parameters in place without
        bumping their version, and a table kept across such a step decoded every validation after the first
        with stale word weights."""
        if torch.is_grad_enabled():
            raise RuntimeError("the word table is for decoding: call step_weights(word_table=True) under "
                               "torch.no_grad()")
        lstm, E = self.lstm, self.embedding.weight
        made_of = (E, lstm.weight_ih[:, :E.size(1)], lstm.bias_ih + lstm.bias_hh)
        cached = self.__dict__.get("_word_table_cache")
        if cached is None or not _all_equal(made_of, cached[0]):
            with torch.autocast(E.device.type, enabled=False):
                table = F.linear(E.float(), made_of[1].float(), made_of[2].float())
            copies = tuple(t.detach().clone() for t in made_of)
            self.__dict__["_word_table_cache"] = cached = (copies, {torch.float32: table})
        tables = cached[1]  # by dtype: fp32 and bf16 searches in turn reuse theirs
        if dtype not in tables:
            tables[dtype] = tables[torch.float32].to(dtype)
        return tables[dtype]

    def step(self, y_prev: torch.Tensor, state: Tuple[torch.Tensor, torch.Tensor], annotations: torch.Tensor,
             keys: torch.Tensor, hard: bool = False, weights: Optional[StepWeights] = None,
             generator: Optional[torch.Generator] = None):
        """One decoding step.

        Args:
            y_prev: (B,) previous word ids.
            state: (h_{t-1}, c_{t-1}), each (B, n).
            annotations: (B, L, D) annotation vectors a.
            keys: (B, L, A) ``self.attention.project_keys(annotations)``, computed once per image.
            hard: sample the attended location (hard attention) instead of the expected context.
            weights: ``self.step_weights()`` (or ``step_weights(word_table=True)`` when decoding), gathered once
                per search (computed here if None).
            generator: the random stream of the hard attention's location samples (None: the global one).

        Returns:
            logits (B, V), new state (h_t, c_t), attention output (context, alpha (B, L), location), β (B,).
        """
        weights = self.step_weights() if weights is None else weights
        e = self.embedding(y_prev)  # (B, m)
        if weights.word_table is not None:
            x = weights.word_table.index_select(0, y_prev)  # (B, 4n), the rows of W_e E + b
        else:
            x = F.linear(e, weights.words, weights.bias)  # (B, 4n)
        (h, c), z, att, beta = self.recurrence(x, state, annotations, keys, weights, hard, generator=generator)
        return self.deep_output(e, h, z), (h, c), att, beta

    def recurrence(self, x_words: torch.Tensor, state: Tuple[torch.Tensor, torch.Tensor], annotations: torch.Tensor,
                   keys: torch.Tensor, weights: StepWeights, hard: bool = False,
                   location: Optional[torch.Tensor] = None, uniform: Optional[torch.Tensor] = None,
                   generator: Optional[torch.Generator] = None):
        """Attention, gate and LSTM update of one step (eq. 1-5 and §4.2.1), shared by training and decoding.

        Args:
            x_words: (B, 4n) the word part of the LSTM input, W_e E y_{t-1} + b (``F.linear(e, weights.words,
                weights.bias)``); state: (h_{t-1}, c_{t-1}); annotations (B, L, D); keys (B, L, A);
            weights: :meth:`step_weights`; hard: hard attention; location: (B,) given locations s_t instead of
                sampled ones (with ``hard``); uniform: (B,) uniforms to sample s_t with (inverse CDF, see
                :func:`~showattend.attention.sample_locations`); generator: the random stream of the samples.

        Returns:
            (h_t, c_t) in fp32, gated context β_t ẑ_t (B, D), attention output, β_t (B,).
        """
        h, c = state
        n, A = h.size(1), weights.query_rows
        from_h = weights.hidden(h)  # (B, A + 1 + 4n): W h_{t-1}, w_β h_{t-1}, W_hh h_{t-1}
        att = self.attention(h, keys, annotations, hard=hard, location=location, uniform=uniform,
                             generator=generator, projected_query=from_h[:, :A] if A else None)  # context ẑ (B, D), α (B, L)
        if self.f_beta is not None:
            beta = torch.sigmoid(from_h[:, A].float() + self.f_beta.bias.float())  # (B,)
        else:
            beta = h.new_ones(h.size(0), dtype=torch.float32)
        z = beta.unsqueeze(1) * att.context  # (B, D)
        gates = x_words.float() + from_h[:, -4 * n:].float() + weights.context(z).float()  # eq. 1
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c.float() + torch.sigmoid(i) * torch.tanh(g)  # eq. 2
        h = torch.sigmoid(o) * torch.tanh(c)  # eq. 3
        return (h, c), z, att, beta

    def deep_output(self, e: torch.Tensor, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Deep output layer, eq. 7: L_o(tanh(E y_{t-1} + L_h h_t + L_z ẑ_t)), with dropout.

        Args:
            e: (..., m) embedding of the previous word; h: (..., n) LSTM state h_t; z: (..., D) gated context.

        Returns:
            (..., V) logits.
        """
        return self.L_o(self.dropout(torch.tanh(e + self.L_h(self.dropout(h)) + self.L_z(z))))

    def forward(self, annotations: torch.Tensor, captions: torch.Tensor, lengths: Union[torch.Tensor, Sequence[int]],
                hard: bool = False, locations: Optional[torch.Tensor] = None,
                uniforms: Optional[torch.Tensor] = None) -> DecoderOutput:
        """Teacher-forced pass over a batch of captions sorted by decreasing length.

        At step t only the captions still running are computed (the batch shrinks), so padding costs nothing
        and never reaches the loss. The host needs the lengths to shrink the batch: give them as a list of ints
        (the training step does, from the collate function) and nothing is read back from the device.

        Args:
            annotations: (B, L, D).
            captions: (B, T) ids ``<start> w_1 .. w_n <end> <pad>..``, sorted by decreasing length.
            lengths: B ints (or a (B,) tensor, read with ``tolist``): tokens per caption including ``<start>``
                and ``<end>``.
            hard: hard attention (sample a location per step).
            locations: (B, T-1) long, hard attention at these locations instead of sampled ones (implies
                ``hard``); entries at padded steps are ignored.
            uniforms: (B, ≥ T-1) uniforms in [0, 1), with ``hard``: sample s_t by inverting α_t's CDF at
                ``uniforms[:, t]`` (None: uniforms drawn at each step).

        Returns:
            :class:`DecoderOutput` for the T-1 predicted positions.

        Raises:
            ValueError: captions not sorted by decreasing length.
        """
        steps = [n - 1 for n in (lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths)]
        if any(a < b for a, b in zip(steps, steps[1:])):
            raise ValueError("captions must be sorted by decreasing length (use collate_captions)")
        B, T = captions.shape
        hard = hard or locations is not None
        h, c = self.init_state(annotations)
        if torch.is_autocast_enabled(annotations.device.type):  # cast once, not at every step's context read
            annotations = annotations.to(torch.get_autocast_dtype(annotations.device.type))
        keys = self.attention.project_keys(annotations)  # (B, L, A), once per image
        embedded = self.embedding(captions)  # (B, T, m)
        weights = self.step_weights()
        x_words = F.linear(embedded[:, :-1], weights.words, weights.bias)  # (B, T-1, 4n), every step at once
        per_step = []  # (h_t, ẑ_t, α_t, β_t, s_t) of the b captions still running at step t
        running = None
        for t, x_t in enumerate(x_words.unbind(1)):
            b = sum(n > t for n in steps)  # captions still running (sorted, so the first b)
            if b != running:  # slice the per-image tensors only when the batch shrinks (their gradients then
                running, ann_b, keys_b = b, annotations[:b], keys[:b]  # gather once per slice, not per step)
            given = locations[:b, t] if locations is not None else None
            u = uniforms[:b, t] if uniforms is not None else None
            (h, c), z, att, beta = self.recurrence(x_t[:b], (h[:b], c[:b]), ann_b, keys_b, weights, hard, given, u)
            per_step.append((h, z, att.alpha, beta, att.location))

        def padded(i: int, value: float = 0.0) -> torch.Tensor:  # (B, T-1, ...): step outputs, padded rows
            return torch.stack([F.pad(o[i], (0, 0) * (o[i].dim() - 1) + (0, B - o[i].size(0)), value=value)
                                for o in per_step], dim=1)

        hs, zs, alphas = padded(0), padded(1), padded(2)
        # β_t ∈ (0, 1] at real steps: padded with −1, it marks them, so the mask is made on the device (no copy
        # of the lengths from the host, which waits for the device on a GPU)
        betas = padded(3, -1.0)
        mask = betas >= 0  # (B, T-1)
        betas = betas.clamp_min(0.0)
        chosen = padded(4, -1) if hard else None
        # The deep output of all steps at once (one large matrix product instead of T-1 small ones).
        logits = self.deep_output(embedded[:, :-1], hs, zs)  # (B, T-1, V)
        return DecoderOutput(logits, alphas, mask, chosen, betas)


def _all_equal(tensors: Sequence[torch.Tensor], copies: Sequence[torch.Tensor]) -> bool:
    """Whether each tensor equals its copy (same shape, dtype, device and values): one host read."""
    if any(t.shape != c.shape or t.dtype != c.dtype or t.device != c.device for t, c in zip(tensors, copies)):
        return False
    return bool(torch.stack([(t == c).all() for t, c in zip(tensors, copies)]).all())


def reference_forward(decoder: Decoder, annotations: torch.Tensor, captions: torch.Tensor, lengths: Sequence[int],
                      locations: Optional[torch.Tensor] = None) -> DecoderOutput:
    """The teacher-forced pass written step by step as the paper reads, without :meth:`Decoder.forward`'s
    arrangement of the arithmetic: the attention module on h_{t-1}, f_β, one ``nn.LSTMCell`` call on
    [E y_{t-1}; β_t ẑ_t], per-step weight gradients. Same arguments and outputs as :meth:`Decoder.forward`
    (``locations`` for hard attention at given locations); the tests check that the two agree, and
    ``scripts/benchmark.py`` times it as the baseline that the arranged step is measured against)."""
    steps = [n - 1 for n in lengths]
    B, T = captions.shape
    keys = decoder.attention.project_keys(annotations)
    h, c = decoder.init_state(annotations)
    embedded = decoder.embedding(captions)
    hs = annotations.new_zeros(B, T - 1, decoder.lstm.hidden_size)
    zs = annotations.new_zeros(B, T - 1, decoder.annotation_dim)
    alphas = annotations.new_zeros(B, T - 1, annotations.size(1))
    betas = annotations.new_zeros(B, T - 1)
    mask = torch.zeros(B, T - 1, dtype=torch.bool, device=captions.device)
    for t in range(T - 1):
        b = sum(n > t for n in steps)
        h, c = h[:b], c[:b]
        given = locations[:b, t] if locations is not None else None
        att = decoder.attention(h, keys[:b], annotations[:b], hard=given is not None, location=given)
        beta = torch.sigmoid(decoder.f_beta(h)) if decoder.f_beta is not None else h.new_ones(b, 1)
        z = beta * att.context
        h, c = decoder.lstm(torch.cat([embedded[:b, t], z], dim=1), (h, c))
        hs[:b, t], zs[:b, t], alphas[:b, t], betas[:b, t] = h, z, att.alpha, beta.squeeze(1)
        mask[:b, t] = True
    logits = decoder.deep_output(embedded[:, :-1], hs, zs)
    return DecoderOutput(logits, alphas, mask, locations.masked_fill(~mask, -1) if locations is not None else None,
                         betas)


def build_decoder(config: ModelConfig, vocab_size: int) -> Decoder:
    """Builder: the decoder of ``config`` for a vocabulary of ``vocab_size``."""
    return Decoder(vocab_size, ENCODERS[config.encoder].dim, config.embed_dim, config.hidden_dim,
                   config.attention_dim, config.dropout, config.score, config.selector)


class FineTuned(torch.nn.Module):
    """Decoder + the encoder's top blocks, trained together (``--fine-tune-blocks N``, or from the images with
    ``--from-images``): the module the engine optimises (and DDP wraps). The encoder runs once per distinct image
    of a batch; every caption of that image reads the result.

    Args:
        decoder: the :class:`~showattend.captioning.network.Decoder`; encoder: an
            :class:`~showattend.captioning.encoders.Encoder` built with ``fine_tune_blocks`` N.
    """

    def __init__(self, decoder: torch.nn.Module, encoder: Encoder, from_images: bool = False):
        super().__init__()
        self.decoder, self.encoder, self.from_images = decoder, encoder, from_images

    def forward(self, x: torch.Tensor, image: torch.Tensor, captions: torch.Tensor, lengths, **kwargs):
        """x: (U, L', C') trunk activations of U images, or with ``from_images`` the images (U, 3, H, W);
        image: (B,) each caption's row of them; the rest as for
        :meth:`~showattend.captioning.network.Decoder.forward`."""
        trunk = self.encoder.trunk(x) if self.from_images else x
        return self.decoder(self.encoder.top(trunk)[image], captions, lengths, **kwargs)
