"""Vocabulary with special tokens, built from the training split only and saved as plain data."""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, List, Sequence

__all__ = ["PAD", "START", "END", "UNK", "Vocab", "tokenize"]

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> List[str]:
    """The Karpathy-JSON tokenisation: lower-case alphanumeric runs (``re.findall('[a-z0-9]+', ...)``)."""
    return _TOKEN.findall(text.lower())

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"


class Vocab:
    """Token <-> id mapping. Ids 0..3 are ``<pad>``, ``<start>``, ``<end>``, ``<unk>``.

    Args:
        tokens: the full list of tokens, specials first (as returned by :meth:`to_list`).

    Raises:
        ValueError: the list does not start with the four special tokens or has duplicates.
    """

    specials = (PAD, START, END, UNK)

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if tuple(tokens[:4]) != self.specials:
            raise ValueError(f"a vocabulary must start with {self.specials}, got {tokens[:4]}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("a vocabulary has duplicate tokens")
        self.itos: List[str] = tokens
        self.stoi = {t: i for i, t in enumerate(tokens)}
        self.pad, self.start, self.end, self.unk = range(4)

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], min_count: int = 5) -> "Vocab":
        """Count tokens and keep those seen at least ``min_count`` times.

        Pass only the training split's sentences: counting validation or test captions leaks them.

        Args:
            sentences: tokenised sentences.
            min_count: minimum frequency of a kept token.

        Returns:
            a :class:`Vocab`, tokens sorted by falling frequency (ties alphabetically).
        """
        counts = Counter(tok for sent in sentences for tok in sent)
        kept = sorted((t for t, c in counts.items() if c >= min_count and t not in cls.specials),
                      key=lambda t: (-counts[t], t))
        return cls(list(cls.specials) + kept)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str], add_specials: bool = True) -> List[int]:
        """Tokens -> ids; unknown tokens become ``<unk>``; with ``add_specials``, wrapped in start/end."""
        ids = [self.stoi.get(t, self.unk) for t in tokens]
        return [self.start] + ids + [self.end] if add_specials else ids

    def decode(self, ids: Iterable[int]) -> List[str]:
        """Ids -> tokens, stopping at ``<end>`` and dropping ``<start>`` and ``<pad>``."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.end:
                break
            if i in (self.start, self.pad):
                continue
            out.append(self.itos[i])
        return out

    def to_list(self) -> List[str]:
        """Plain-data form, stored in checkpoints."""
        return list(self.itos)
