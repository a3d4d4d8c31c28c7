"""Attention-based translation: a BiLSTM encoder and two decoders on the shared attention core.

The encoder's per-token outputs are the translator's annotation vectors (keys and values of attention), with a
padding mask. The two decoders differ in *where* attention sits in the step, a common confusion:

* **Bahdanau et al. 2015** ("Neural Machine Translation by Jointly Learning to Align and Translate"): the query
  is the *previous* decoder state s_{t-1}; the score is additive, e_tj = v^T tanh(W s_{t-1} + U h_j) (eq. 6);
  the context c_t = Σ_j α_tj h_j (eq. 5) is fed *into* the RNN step with the previous target embedding,
  s_t = f(s_{t-1}, y_{t-1}, c_t) (eq. 4), and the output reads s_t, c_t and y_{t-1}.
* **Luong et al. 2015** ("Effective Approaches to Attention-based NMT", global attention): the RNN step runs
  *first*, h_t = LSTM(h_{t-1}, [E y_{t-1}; h̃_{t-1}]) (input feeding, §3.3); the query is the *current* h_t with a
  dot, general or concat score (eq. 8); the attentional hidden state h̃_t = tanh(W_c [c_t; h_t]) (eq. 5) gives
  p(y_t) = softmax(W_s h̃_t) (eq. 6). (OpenNMT-py's "mlp" score keeps this placement: it is not Bahdanau's model.)

Both use :class:`showattend.attention.Attention`, project the encoder outputs once per sentence, and decode
with the same batched beam search as the captioner (:mod:`showattend.search`).

Shapes: B batch, S source length, T target length, H encoder hidden size per direction (memory size M = 2H),
N decoder hidden size, V target vocabulary.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..attention import Attention
from ..search import Hypothesis, beam_search, greedy_search
from .config import TranslatorConfig
from .tokenizer import BOS_ID, EOS_ID, PAD_ID

__all__ = ["BiLSTMEncoder", "BahdanauDecoder", "LuongDecoder", "Seq2Seq", "DECODERS"]


class BiLSTMEncoder(nn.Module):
    """Embedding + bidirectional LSTM over packed sequences.

    Args:
        vocab_size, embed_dim, hidden: sizes (hidden per direction).
        layers: LSTM layers.
        dropout: dropout on embeddings and outputs.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, layers: int = 1, dropout: float = 0.3):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.rnn = nn.LSTM(embed_dim, hidden, layers, batch_first=True, bidirectional=True,
                           dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, lengths: torch.Tensor):
        """Encode a padded batch.

        Args:
            src: (B, S) source ids, padded with 0.
            lengths: (B,) true lengths (>= 1): B ints, or a tensor (the packed LSTM reads them on the host).

        Returns:
            memory (B, S, 2H) per-token outputs (0 at padding), mask (B, S) bool (True = real token, i.e. not
            the padding id, so the mask is made on the device),
            final (B, 2H): [last forward state; first backward state] of the top layer.
        """
        emb = self.dropout(self.embedding(src))  # (B, S, E)
        # host lengths sorted longest first (the collate functions sort so): packing needs no permutation
        ordered = isinstance(lengths, (list, tuple)) and all(a >= b for a, b in zip(lengths, lengths[1:]))
        lengths = torch.as_tensor(lengths, device="cpu") if isinstance(lengths, (list, tuple)) else lengths.cpu()
        packed = pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=ordered)
        out, (h_n, _) = self.rnn(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))  # (B, S, 2H)
        mask = src != PAD_ID
        final = torch.cat([h_n[-2], h_n[-1]], dim=-1)  # (B, 2H)
        return self.dropout(memory), mask, final


class BahdanauDecoder(nn.Module):
    """Bahdanau et al. 2015: attend with s_{t-1}, then the RNN step on [E y_{t-1}; c_t].

    State: (s, cell), each (B, N).
    """

    def __init__(self, cfg: TranslatorConfig):
        super().__init__()
        M = 2 * cfg.encoder_hidden
        self.embedding = nn.Embedding(cfg.tgt_vocab_size, cfg.embed_dim, padding_idx=PAD_ID)
        self.attention = Attention(cfg.decoder_hidden, M, cfg.attention_dim, "additive")
        self.init = nn.Linear(M, cfg.decoder_hidden)  # s_0 = tanh(W_s [h→_S; h←_1]) (appendix A.2.2)
        self.rnn = nn.LSTMCell(cfg.embed_dim + M, cfg.decoder_hidden)
        self.readout = nn.Linear(cfg.decoder_hidden + M + cfg.embed_dim, cfg.embed_dim)
        self.out = nn.Linear(cfg.embed_dim, cfg.tgt_vocab_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def init_state(self, final: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        s = torch.tanh(self.init(final))  # (B, N)
        return s, torch.zeros_like(s)

    def step(self, y_prev, state, memory, keys, mask):
        """One step. Returns logits (B, V), new state, α (B, S)."""
        s, cell = state
        att = self.attention(s, keys, memory, mask)  # query = s_{t-1}; context (B, M), alpha (B, S)
        e = self.dropout(self.embedding(y_prev))  # (B, E)
        s, cell = self.rnn(torch.cat([e, att.context], dim=-1), (s, cell))  # s_t = f(s_{t-1}, y_{t-1}, c_t)
        t = torch.tanh(self.readout(torch.cat([s, att.context, e], dim=-1)))  # (B, E)
        return self.out(self.dropout(t)), (s, cell), att.alpha


class LuongDecoder(nn.Module):
    """Luong et al. 2015 global attention with input feeding: RNN step first, then attend with h_t.

    State: (h, cell, h̃), each (B, N).
    """

    def __init__(self, cfg: TranslatorConfig):
        super().__init__()
        M = 2 * cfg.encoder_hidden
        score = {"concat": "additive"}.get(cfg.score, cfg.score)
        self.embedding = nn.Embedding(cfg.tgt_vocab_size, cfg.embed_dim, padding_idx=PAD_ID)
        self.attention = Attention(cfg.decoder_hidden, M, cfg.attention_dim, score)
        self.init = nn.Linear(M, cfg.decoder_hidden)
        self.rnn = nn.LSTMCell(cfg.embed_dim + cfg.decoder_hidden, cfg.decoder_hidden)  # input feeding
        self.W_c = nn.Linear(M + cfg.decoder_hidden, cfg.decoder_hidden, bias=False)
        self.W_s = nn.Linear(cfg.decoder_hidden, cfg.tgt_vocab_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def init_state(self, final: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        h = torch.tanh(self.init(final))  # (B, N)
        return h, torch.zeros_like(h), torch.zeros_like(h)

    def step(self, y_prev, state, memory, keys, mask):
        """One step. Returns logits (B, V), new state, α (B, S)."""
        h, cell, h_tilde = state
        e = self.dropout(self.embedding(y_prev))  # (B, E)
        h, cell = self.rnn(torch.cat([e, h_tilde], dim=-1), (h, cell))  # h_t, with h̃_{t-1} fed in
        att = self.attention(h, keys, memory, mask)  # query = h_t
        h_tilde = torch.tanh(self.W_c(torch.cat([att.context, h], dim=-1)))  # h̃_t (eq. 5)
        return self.W_s(self.dropout(h_tilde)), (h, cell, h_tilde), att.alpha


DECODERS = {"bahdanau": BahdanauDecoder, "luong": LuongDecoder}


class Seq2Seq(nn.Module):
    """BiLSTM encoder + a Bahdanau or Luong decoder.

    Args:
        cfg: :class:`TranslatorConfig`.

    Raises:
        ValueError: Luong's dot score with ``decoder_hidden != 2 * encoder_hidden``.
    """

    def __init__(self, cfg: TranslatorConfig):
        super().__init__()
        if cfg.decoder == "luong" and cfg.score == "dot" and cfg.decoder_hidden != 2 * cfg.encoder_hidden:
            raise ValueError("Luong's dot score needs decoder_hidden == 2 * encoder_hidden")
        self.cfg = cfg
        self.encoder = BiLSTMEncoder(cfg.src_vocab_size, cfg.embed_dim, cfg.encoder_hidden, cfg.encoder_layers,
                                     cfg.dropout)
        self.decoder = DECODERS[cfg.decoder](cfg)

    def encode(self, src: torch.Tensor, lengths: torch.Tensor):
        """Returns the decoder's initial state and the attention context (memory, projected keys, mask)."""
        memory, mask, final = self.encoder(src, lengths)
        keys = self.decoder.attention.project_keys(memory)  # (B, S, ·), once per sentence
        return self.decoder.init_state(final), (memory, keys, mask)

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor):
        """Teacher-forced pass.

        Args:
            src: (B, S) source ids; src_lengths: (B,).
            tgt_in: (B, T) target ids starting with ``<s>`` (the inputs y_0..y_{T-1}).

        Returns:
            logits (B, T, V), alphas (B, T, S).
        """
        state, context = self.encode(src, src_lengths)
        logits, alphas = [], []
        for t in range(tgt_in.size(1)):
            out, state, alpha = self.decoder.step(tgt_in[:, t], state, *context)
            logits.append(out)
            alphas.append(alpha)
        return torch.stack(logits, 1), torch.stack(alphas, 1)

    def _step(self, tokens, state, context):
        logits, state, alpha = self.decoder.step(tokens, state, *context)
        log_probs = F.log_softmax(logits.float(), dim=-1)
        log_probs[:, :BOS_ID + 1] = float("-inf")  # <pad> (0) and <s> (1) never come out; a slice, no index copy
        return log_probs, state, alpha

    @torch.no_grad()
    def translate_ids(self, src: torch.Tensor, lengths: torch.Tensor, beam_size: int = 5, max_len: int = 100,
                      length_penalty: float = 1.0) -> List[Hypothesis]:
        """Decode a batch with the shared beam search (greedy when ``beam_size`` is 1).

        Returns:
            B :class:`~showattend.search.Hypothesis`; ``extras`` holds α, (n, S) per hypothesis.
        """
        self.eval()
        state, context = self.encode(src, lengths)
        if beam_size == 1:
            return greedy_search(self._step, state, context, BOS_ID, EOS_ID, max_len, length_penalty)
        return [h[0] for h in beam_search(self._step, state, context, BOS_ID, EOS_ID, beam_size, max_len,
                                          length_penalty)]
