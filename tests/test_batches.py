"""Length-grouped batches (engine/batches.py) and what padding costs, for both applications."""
import random

import numpy as np
import pytest

from showattend.engine.batches import bucket_batches, padded_fraction

from toys import toy_caption_task


def test_padded_fraction_by_hand():
    # batch [0, 1] steps 4 times for 2 rows (8 row-steps, 6 used); batch [2] 3 times for 1 row (3, 3 used)
    assert padded_fraction([[0, 1], [2]], [2, 4, 3]) == pytest.approx(2 / 11)
    assert padded_fraction([[0], [1]], [5, 1]) == 0.0 and padded_fraction([], []) == 0.0


@pytest.mark.parametrize("n, batch_size, pool", [(1000, 16, 50), (1000, 16, 3), (37, 5, 2), (3, 8, 50)])
def test_bucketed_batches_hold_every_item_once_sorted_within_pools(n, batch_size, pool):
    rng = random.Random(0)
    lengths = [rng.randint(1, 30) for _ in range(n)]
    order = list(range(n))
    rng.shuffle(order)
    batches = bucket_batches(order, lengths, batch_size, rng.shuffle, pool)
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert all(1 <= len(b) <= batch_size for b in batches)
    # within a pool the lengths are sorted: a batch's lengths ascend, and batches of one pool do not overlap
    assert all([lengths[i] for i in b] == sorted(lengths[i] for i in b) for b in batches)
    pools = [sorted(order[i:i + batch_size * pool], key=lambda j: lengths[j])
             for i in range(0, n, batch_size * pool)]
    cut = [tuple(p[k:k + batch_size]) for p in pools for k in range(0, len(p), batch_size)]
    assert sorted(map(tuple, batches)) == sorted(cut)  # the same batches, in a shuffled order
    if n >= 1000 and pool >= 50:
        unbucketed = [order[i:i + batch_size] for i in range(0, n, batch_size)]
        assert padded_fraction(batches, lengths) < padded_fraction(unbucketed, lengths) / 3


def test_bucketed_and_unbucketed_caption_epochs_see_the_same_captions(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    plain, _ = toy_caption_task(tmp_path / "a", n_images=40, batch_size=8)
    grouped, cfg = toy_caption_task(tmp_path / "b", n_images=40, batch_size=8, length_buckets=True)
    steps = grouped.dataset.steps
    for epoch in (1, 2):
        a, b = plain.epoch_batches(epoch), grouped.epoch_batches(epoch)
        assert sorted(i for x in a for i in x) == sorted(i for x in b for i in x) == list(range(len(steps)))
        assert padded_fraction(b, steps) < padded_fraction(a, steps)
        assert b == grouped.epoch_batches(epoch)  # the seed and epoch fix them (a resume rebuilds the same)
    assert grouped.epoch_batches(1) != grouped.epoch_batches(2)
    assert np.array_equal(steps, [grouped.words(i) for i in range(len(steps))])  # what the step runs over
