"""Global batches grouped by length, and what padding costs.

A recurrent step runs as many times as the longest sequence of its batch has tokens (under DDP, of the global
batch: every process waits for the slowest), while each sequence needs only its own length; the steps over
the others' padding are the cost. Grouping sequences of similar length into one batch, as fairseq and
OpenNMT-py do for translation, removes most of it.
"""
from __future__ import annotations

from typing import Callable, List, Sequence

__all__ = ["bucket_batches", "padded_fraction"]


def bucket_batches(order: Sequence[int], lengths: Sequence[int], batch_size: int,
                   shuffle: Callable[[list], None], pool: int = 50) -> List[List[int]]:
    """Batches of similar lengths: ``order`` (already shuffled) cut into pools of ``pool`` batches, each pool
    sorted by length (stably: equal lengths keep the shuffled order) and cut into batches, then the batches
    shuffled by ``shuffle`` (in place), so that an epoch still sees every item once, in an order that changes
    with the seed.

    Args:
        order: every item's index, shuffled; lengths: each item's length (indexed by item).
        batch_size: items per batch (the last batch of each pool may be smaller).
        shuffle: shuffles a list in place (``random.Random.shuffle``, ``numpy.random.Generator.shuffle``).
        pool: batches per pool: larger pools pad less and mix lengths less across the epoch.

    Returns:
        the batches, lists of item indices.
    """
    batches: List[List[int]] = []
    for i in range(0, len(order), batch_size * pool):
        chunk = sorted(order[i:i + batch_size * pool], key=lambda j: lengths[j])
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    shuffle(batches)
    return batches


def padded_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """The fraction of a recurrence's row-steps spent on padding: Σ_b (|b| · max_{i∈b} ℓ_i − Σ_{i∈b} ℓ_i) /
    Σ_b |b| · max_{i∈b} ℓ_i, ``batches`` the global batches and ℓ the steps each item needs (a caption's words
    and ``<end>``)."""
    total = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    used = sum(lengths[i] for b in batches for i in b)
    return 1.0 - used / total if total else 0.0
