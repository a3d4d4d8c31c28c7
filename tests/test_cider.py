"""The vectorised CIDEr-D (SCST's reward) against pycocoevalcap's ``Cider`` on the same tokenised inputs."""
import json
import random

import pytest
import torch

from conftest import shared_path
from showattend.captioning.cider import CiderD

Cider = pytest.importorskip("pycocoevalcap.cider.cider").Cider
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def coco_cider(refs, hyps):
    """pycocoevalcap's per-image scores of ``hyps`` (token-id lists), the corpus being ``refs``."""
    gts = {i: [" ".join(f"w{t}" for t in s) for s in r] for i, r in enumerate(refs)}
    res = {i: [" ".join(f"w{t}" for t in h)] for i, h in enumerate(hyps)}
    return torch.tensor(Cider().compute_score(gts, res)[1], dtype=torch.float64)


def test_hand_computed():
    # two images, one reference each: every n-gram has df 1, idf log 2 > 0
    c = CiderD([[[0, 1, 2, 3, 4]], [[5, 6]]], vocab_size=7)
    scores = c.score_lists([[0, 1, 2, 3, 4], [5, 6], [5, 6], []], [0, 1, 0, 1])
    # a copy scores 10 x (mean over n of cos = 1); "5 6" has no 3- and 4-grams (those terms are 0); no overlap: 0
    assert scores.tolist() == pytest.approx([10.0, 5.0, 0.0, 0.0], abs=1e-12)
    # one word repeated: clipping by the reference count, min(2, 1)·1·idf² over norms √5·idf and √1·idf
    one = CiderD([[[0]], [[1]]], vocab_size=2).score_lists([[0, 0]], [0])
    delta = 1 - 0  # bigrams of the hypothesis minus the reference's
    # cos_1 = min(2,1)·1 / (‖(2)‖·‖(1)‖) = 1/2; the hypothesis's bigram (0,0) is unseen: its norm counts, no overlap
    expect = 10 * (1 / 4) * (0.5 + 0.0) * torch.exp(torch.tensor(-delta ** 2 / 72.0, dtype=torch.float64))
    assert one.item() == pytest.approx(expect.item(), abs=1e-12)
    # a word no reference holds has df 0 -> idf log N: it counts in the hypothesis's norm (cos_1 = 1/√2, not 1)
    unseen = CiderD([[[0]], [[1]]], vocab_size=3).score_lists([[0, 2]], [0])
    expect = 10 * (1 / 4) * (1 / 2 ** 0.5) * torch.exp(torch.tensor(-1 / 72.0, dtype=torch.float64))
    assert unseen.item() == pytest.approx(expect.item(), abs=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_matches_pycocoevalcap_on_random_corpus(device):
    rng = random.Random(0)
    V, n_images = 25, 300  # a small vocabulary: many repeated n-grams, clipping and shared document frequencies
    refs = [[[rng.randrange(V) for _ in range(rng.randint(1, 14))] for _ in range(rng.randint(1, 6))]
            for _ in range(n_images)]
    hyps = [[rng.randrange(V) for _ in range(rng.randint(0, 16))] for _ in range(n_images)]
    hyps[:3] = [list(refs[0][0]), [], [7, 7, 7, 7, 7, 7]]  # a copy of a reference, an empty caption, repetition
    ours = CiderD(refs, V, device=device).score_lists(hyps, range(n_images)).cpu()
    theirs = coco_cider(refs, hyps)
    assert (ours - theirs).abs().max() < 1e-6
    assert ours.std() > 0.1 and ours[0] > ours[3:].max()  # not trivially equal: spread, and the copy scores best


def test_matches_pycocoevalcap_on_flickr8k():
    path = shared_path("flickr8k", "dataset_flickr8k.json")
    with open(path, encoding="utf-8") as f:
        images = [im for im in json.load(f)["images"] if im["split"] == "val"][:300]
    words = {}
    refs = [[[words.setdefault(w, len(words)) for w in s["tokens"]] for s in im["sentences"]] for im in images]
    # hypotheses: another image's reference (little overlap) or the image's own reference cut short (much)
    hyps = [refs[(i + 1) % len(refs)][0] if i % 2 else refs[i][i % 5][:-2] for i in range(len(refs))]
    ours = CiderD(refs, len(words)).score_lists(hyps, range(len(refs)))
    theirs = coco_cider(refs, hyps)
    assert (ours - theirs).abs().max() < 1e-6
    assert ours[0::2].mean() > 5 * ours[1::2].mean()


def test_batch_and_order_do_not_matter():
    rng = random.Random(1)
    refs = [[[rng.randrange(40) for _ in range(rng.randint(3, 12))] for _ in range(5)] for _ in range(50)]
    c = CiderD(refs, 40)
    hyps = [[rng.randrange(40) for _ in range(rng.randint(0, 15))] for _ in range(64)]
    images = [rng.randrange(50) for _ in hyps]
    together = c.score_lists(hyps, images)
    alone = torch.cat([c.score_lists([h], [i]) for h, i in zip(hyps, images)])
    assert torch.allclose(together, alone, rtol=0, atol=1e-12)
    # padding past the lengths is ignored, whatever ids it holds
    tokens = torch.full((1, 20), 39)
    tokens[0, :3] = torch.tensor(hyps[0][:3] if len(hyps[0]) >= 3 else [1, 2, 3])
    a = c(tokens, torch.tensor([3]), torch.tensor([images[0]]))
    b = c.score_lists([tokens[0, :3].tolist()], [images[0]])
    assert torch.equal(a, b)


def test_bad_input():
    with pytest.raises(ValueError, match="at least one reference"):
        CiderD([[[1, 2]], []], vocab_size=3)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        CiderD([[[1, 5]]], vocab_size=3)
    with pytest.raises(ValueError, match="too large"):
        CiderD([[[1]]], vocab_size=100_000)
