"""The vectorised CIDEr-D and sentence BLEU-4 (SCST's rewards) against pycocoevalcap's ``Cider`` and ``Bleu`` on
the same tokenised inputs."""
import json
import math
import random

import pytest
import torch

from conftest import shared_path
from showattend.captioning.cider import CiderD

Cider = pytest.importorskip("pycocoevalcap.cider.cider").Cider
Bleu = pytest.importorskip("pycocoevalcap.bleu.bleu").Bleu
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def coco_cider(refs, hyps):
    """pycocoevalcap's per-image scores of ``hyps`` (token-id lists), the corpus being ``refs``."""
    gts = {i: [" ".join(f"w{t}" for t in s) for s in r] for i, r in enumerate(refs)}
    res = {i: [" ".join(f"w{t}" for t in h)] for i, h in enumerate(hyps)}
    return torch.tensor(Cider().compute_score(gts, res)[1], dtype=torch.float64)


def coco_bleu4(refs, hyps):
    """pycocoevalcap's per-sentence BLEU-4 of ``hyps`` (token-id lists) against each one's references."""
    gts = {i: [" ".join(f"w{t}" for t in s) for s in r] for i, r in enumerate(refs)}
    res = {i: [" ".join(f"w{t}" for t in h)] for i, h in enumerate(hyps)}
    return torch.tensor(Bleu(4).compute_score(gts, res, verbose=0)[1][3], dtype=torch.float64)


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


def test_bleu4_hand_computed():
    c = CiderD([[[0, 1, 2, 3, 4]], [[5, 6, 7, 8, 9, 5, 6]]], vocab_size=10)
    _, bleu = c.score_lists([[0, 1, 2, 3, 4], [5, 6, 7, 8], [0, 1, 2, 3, 4]], [0, 1, 1], bleu=True)
    # a copy: every precision is 1 (up to the smoothing), no brevity penalty
    assert bleu[0].item() == pytest.approx(1.0, abs=1e-8)
    # "5 6 7 8" against a 7-word reference: all of its n-grams match (p_n = 1), BP = exp(1 - 7/4)
    assert bleu[1].item() == pytest.approx(math.exp(1 - 7 / 4), abs=1e-8)
    # no overlap at all: (10^-15 / 5 · 10^-15 / 4 · ...)^(1/4), about 10^-15.6, i.e. 0
    assert bleu[2].item() < 1e-14
    # clipping: "5 5 5 5" holds 5 twice in the reference -> p_1 = 2/4; no bigram "5 5" -> p_2..p_4 ~ 0
    _, b = c.score_lists([[5, 5, 5, 5, 5, 5, 5]], [1], bleu=True)
    assert b.item() < 1e-10
    one, b = CiderD([[[5, 5, 6]]], vocab_size=10).score_lists([[5, 5, 5]], [0], bleu=True)
    # p_1 = min(3, 2)/3, p_2 = min(2, 1)/2, p_3 = 0/1 + smoothing, p_4 = smoothing over g_4 = 0
    expect = ((2 / 3) * (1 / 2) * (1e-15 / 1) * (1e-15 / 1e-9)) ** 0.25
    assert b.item() == pytest.approx(expect, rel=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_bleu4_matches_pycocoevalcap_on_random_corpus(device):
    rng = random.Random(2)
    V, n_images = 12, 300  # a tiny vocabulary: 3- and 4-gram matches are common, and so is clipping
    refs = [[[rng.randrange(V) for _ in range(rng.randint(1, 14))] for _ in range(rng.randint(1, 6))]
            for _ in range(n_images)]
    hyps = [[rng.randrange(V) for _ in range(rng.randint(0, 16))] for _ in range(n_images)]
    hyps[:3] = [list(refs[0][0]), [], [7, 7, 7, 7, 7, 7]]
    # references of equal distance on both sides of the hypothesis: the shorter is the closest (coco-caption)
    refs[3], hyps[3] = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4]], [1, 2, 3, 4, 5]
    hyps[4:100] = [r[0][:rng.randint(1, len(r[0]))] + [rng.randrange(V)] for r in refs[4:100]]  # much overlap
    cider, ours = CiderD(refs, V, device=device).score_lists(hyps, range(n_images), bleu=True)
    theirs = coco_bleu4(refs, hyps)
    assert (ours.cpu() - theirs).abs().max() < 1e-9
    assert ours.std() > 0.1 and (ours > 0.5).sum() > 10
    assert ours[3] == pytest.approx(1.0)  # every n-gram matches; the closest reference (4 words) is shorter
    # the CIDEr-D of the same call is the one without BLEU
    assert torch.equal(cider, CiderD(refs, V, device=device).score_lists(hyps, range(n_images)))


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
