"""CIDEr-D and sentence BLEU-4 over token ids, vectorised: the rewards of self-critical sequence training.

CIDEr-D (Vedantam et al. 2015, CVPR; the ``Cider`` scorer of coco-caption / pycocoevalcap): for n = 1..4 every
sentence is a vector g_n of tf-idf weights over its n-grams, g_n(w) = c(w) · (log N − log max(1, df(w))), with
c(w) the count of n-gram w in the sentence, N the number of images of the reference corpus and df(w) the number of
images whose references contain w. A hypothesis h of an image with references r_1..r_R scores

    CIDEr-D(h) = 10/R Σ_j 1/4 Σ_n  e^{−(ℓ_h − ℓ_j)² / 2σ²} · Σ_w min(g_n^h(w), g_n^j(w)) g_n^j(w) / (‖g_n^h‖ ‖g_n^j‖)

with σ = 6 and ℓ the number of bigrams (coco-caption's "length"); a zero norm leaves that n's term 0.

pycocoevalcap recomputes the document frequencies on every call, from the references of the images scored in
that call, and walks Python dictionaries; inside a training step that is far too slow. :class:`CiderD` computes
the document frequencies of a reference corpus once (for SCST, the training references, as Rennie et al. 2017
do), stores every reference as sorted (reference, n-gram) entries, and scores a batch of hypotheses with a few
sorts and binary searches on whichever device the tensors are on. With the same corpus as a pycocoevalcap call
it gives the same scores (tested to 1e-6).

The same pass gives each hypothesis's sentence BLEU-4 (Papineni et al. 2002) as coco-caption's ``Bleu`` scorer
computes it per sentence (its second return value): with c_n the hypothesis's n-grams clipped by their largest
count in any one reference and g_n = max(0, ℓ − n + 1) its n-grams (ℓ its words),

    BLEU-4(h) = BP · (Π_{n=1..4} (c_n + 10⁻¹⁵) / (g_n + 10⁻⁹))^{1/4},   BP = min(1, exp(1 − r/ℓ)),

r the length of the reference closest to ℓ (the shorter on a tie). Its brevity penalty falls steeply for a
caption shorter than every reference, which CIDEr-D's Gaussian length term (σ = 6 bigrams) barely notices.

N-grams are coded as integers in base V + 1 (digits 1..V), so V must stay below ~55,000 for 4-grams to fit in
int64.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["CiderD"]

_TINY, _SMALL = 1e-15, 1e-9  # coco-caption's BleuScorer: smoothing of a zero count, and of a zero denominator


def _windows(tokens: torch.Tensor, lengths: torch.Tensor, n_max: int, base: int):
    """Every window of n = 1..n_max tokens of a batch of padded sequences, as an integer code.

    Args:
        tokens: (S, T) long token ids in [0, base − 1); lengths: (S,) the tokens of each row that count.

    Returns:
        codes (S, W) long, orders (W,) long n − 1 of each window, valid (S, W) bool: the window lies inside
        the sentence; W = Σ_n (T − n + 1).
    """
    S, T = tokens.shape
    digits = tokens + 1  # 1..V: a code's digits are never 0, so n-grams of different n never share a code
    codes, orders, valid = [], [], []
    for n in range(1, min(n_max, T) + 1):
        code = torch.zeros(S, T - n + 1, dtype=torch.long, device=tokens.device)
        for j in range(n):
            code = code * base + digits[:, j:T - n + 1 + j]
        start = torch.arange(T - n + 1, device=tokens.device)
        codes.append(code)
        orders.append(torch.full_like(start, n - 1))
        valid.append(start.unsqueeze(0) + n <= lengths.unsqueeze(1))  # (S, T - n + 1)
    return torch.cat(codes, 1), torch.cat(orders), torch.cat(valid, 1)


def _ngram_codes(tokens: torch.Tensor, lengths: torch.Tensor, n_max: int, base: int):
    """The n-grams of :func:`_windows` that lie inside their sentences, as 1-d tensors over every occurrence:
    (rows, codes, orders), its sequence, its code and n − 1 (boolean masks: for the reference corpus, built
    once)."""
    codes, orders, valid = _windows(tokens, lengths, n_max, base)
    rows = torch.arange(codes.size(0), device=codes.device).unsqueeze(1).expand_as(codes)
    return rows[valid], codes[valid], orders.unsqueeze(0).expand_as(codes)[valid]


def _count(rows: torch.Tensor, codes: torch.Tensor, orders: torch.Tensor):
    """Distinct (row, code) pairs with their counts: (rows, codes, orders, counts) (a code fixes its n)."""
    distinct, counts = torch.unique(torch.stack([rows, codes, orders]), dim=1, return_counts=True)
    return distinct[0], distinct[1], distinct[2], counts


def _pad(sentences: Sequence[Sequence[int]], device) -> tuple:
    """(S, T) long tokens (0-padded) and (S,) lengths of lists of token ids."""
    T = max([len(s) for s in sentences] + [1])
    tokens = torch.zeros(len(sentences), T, dtype=torch.long)
    for i, s in enumerate(sentences):
        tokens[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return tokens.to(device), torch.tensor([len(s) for s in sentences], device=device)


class CiderD:
    """CIDEr-D with the document frequencies of a fixed reference corpus.

    Args:
        references: per image, its reference sentences as lists of token ids (ids in [0, vocab_size)); what the
            ids mean does not matter (with a vocabulary that maps rare words to ``<unk>``, those match each
            other).
        vocab_size: V, one more than the largest id.
        n: the largest n-gram order (4).
        sigma: σ of the length penalty (6).
        device: where the tables live and scoring runs.
        dtype: float type of the sums (float64: the scores match pycocoevalcap's to ~1e-12).

    Raises:
        ValueError: no images, an image without references, an id outside [0, V), or V too large for the codes.
    """

    def __init__(self, references: Sequence[Sequence[Sequence[int]]], vocab_size: int, n: int = 4,
                 sigma: float = 6.0, device="cpu", dtype: torch.dtype = torch.float64):
        if not references or any(len(refs) == 0 for refs in references):
            raise ValueError("CiderD needs at least one image, and at least one reference for each image")
        self.base, self.n, self.sigma, self.dtype = vocab_size + 1, n, sigma, dtype
        if self.base ** n >= 2 ** 63:
            raise ValueError(f"a vocabulary of {vocab_size} words is too large for {n}-gram codes in int64")
        flat = [s for refs in references for s in refs]
        tokens, lengths = _pad(flat, device)
        if flat and (tokens.min() < 0 or tokens.max() >= vocab_size):
            raise ValueError(f"reference token ids must be in [0, {vocab_size})")
        per_image = torch.tensor([len(refs) for refs in references], device=device)
        image_of_ref = torch.repeat_interleave(torch.arange(len(references), device=device), per_image)
        rows, codes, orders, counts = _count(*_ngram_codes(tokens, lengths, n, self.base))
        # document frequency: the images whose references hold each n-gram, and its idf
        img_code = torch.unique(torch.stack([image_of_ref[rows], codes]), dim=1)
        self.codes, df = torch.unique(img_code[1], return_counts=True)  # (G,) sorted codes of the corpus
        self.log_n = math.log(len(references))
        self.idf = self.log_n - torch.log(df.to(dtype).clamp_min(1.0))  # (G,)
        # every reference as sorted entries (reference · G + n-gram index) -> count
        index = torch.searchsorted(self.codes, codes.contiguous())
        self.G = self.codes.numel()
        self.ref_keys, sort = torch.sort(rows * self.G + index)
        self.ref_counts = counts[sort].to(dtype)
        weight = counts.to(dtype) * self.idf[index]
        self.ref_norms = torch.zeros(len(flat), n, dtype=dtype, device=device) \
            .index_put_((rows, orders), weight ** 2, accumulate=True).sqrt()  # (refs, n)
        self.ref_lengths = (lengths - 1).clamp_min(0).to(dtype)  # bigrams
        self.ref_words = lengths.to(dtype)  # words (BLEU's reference lengths)
        # each image's references, padded with -1: (images, R_max)
        R = int(per_image.max())
        first = torch.cumsum(per_image, 0) - per_image
        slots = torch.arange(R, device=device)
        self.image_refs = torch.where(slots < per_image.unsqueeze(1), first.unsqueeze(1) + slots, -1)
        self.device = device

    @property
    def num_images(self) -> int:
        return self.image_refs.size(0)

    def __call__(self, tokens: torch.Tensor, lengths: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """CIDEr-D of a batch of hypotheses against their images' references (:meth:`scores` without BLEU)."""
        return self.scores(tokens, lengths, images)[0]

    def scores(self, tokens: torch.Tensor, lengths: torch.Tensor, images: torch.Tensor, bleu: bool = False):
        """CIDEr-D, and with ``bleu`` the sentence BLEU-4, of a batch of hypotheses against their images'
        references.

        Every shape is fixed by the inputs' shapes (no boolean masks, no ``unique``): on a GPU the host never
        waits for the device. Each hypothesis's n-gram windows are sorted by code; the first window of each
        distinct n-gram carries its count (found by binary search in the sorted row) and the others weigh 0.

        Args:
            tokens: (S, T) long token ids of the hypotheses (words only: no ``<start>``/``<end>``), padded.
            lengths: (S,) words of each hypothesis (0 for an empty one).
            images: (S,) long, each hypothesis's image (its index in ``references``).
            bleu: also compute the sentence BLEU-4 (see the module docstring).

        Returns:
            (cider, bleu4): (S,) CIDEr-D on coco-caption's scale (× 1; the tables multiply by 100), and (S,)
            BLEU-4 in [0, 1] (None without ``bleu``).
        """
        tokens, lengths, images = tokens.to(self.device), lengths.to(self.device), images.to(self.device)
        S, dtype = tokens.size(0), self.dtype
        tokens = tokens.clamp(0, self.base - 2)  # padding beyond the lengths may hold any id
        codes, orders, valid = _windows(tokens, lengths, self.n, self.base)  # (S, W), (W,), (S, W)
        codes, perm = torch.where(valid, codes, -1).sort(dim=1)  # windows outside the sentence: code -1, first
        orders = orders[perm]  # (S, W)
        c_h = (torch.searchsorted(codes, codes, right=True) - torch.searchsorted(codes, codes)).to(dtype)
        new = torch.ones_like(codes, dtype=torch.bool)
        new[:, 1:] = codes[:, 1:] != codes[:, :-1]
        first = (new & (codes >= 0)).to(dtype)  # (S, W) 1 on the first window of each distinct n-gram
        index = torch.searchsorted(self.codes, codes).clamp(0, max(self.G - 1, 0))
        known = self.codes[index] == codes if self.G else torch.zeros_like(codes, dtype=torch.bool)
        idf = torch.where(known, self.idf[index] if self.G else 0.0, self.log_n)  # unseen: df 0 -> log N
        norms = torch.zeros(S, self.n, dtype=dtype, device=self.device) \
            .scatter_add_(1, orders, first * (c_h * idf) ** 2).sqrt()  # (S, n)
        refs = self.image_refs[images]  # (S, R)
        R = refs.size(1)
        # the count of each hypothesis n-gram in each reference of its image (n-grams unseen in the corpus: 0)
        key = refs.clamp_min(0).unsqueeze(1) * self.G + index.unsqueeze(2)  # (S, W, R)
        if self.ref_keys.numel():
            at = torch.searchsorted(self.ref_keys, key).clamp_max(self.ref_keys.numel() - 1)
            hit = (self.ref_keys[at] == key) & (refs >= 0).unsqueeze(1) & known.unsqueeze(2)
            c_r = torch.where(hit, self.ref_counts[at], 0.0)  # (S, W, R)
        else:  # every reference is empty
            c_r = torch.zeros(key.shape, dtype=dtype, device=self.device)
        overlap = torch.minimum(c_h.unsqueeze(2), c_r) * c_r * (first * idf ** 2).unsqueeze(2)  # (S, W, R)
        num = torch.zeros(S, self.n, R, dtype=dtype, device=self.device) \
            .scatter_add_(1, orders.unsqueeze(2).expand(-1, -1, R), overlap).transpose(1, 2)  # (S, R, n)
        denom = norms.unsqueeze(1) * self.ref_norms[refs.clamp_min(0)]  # (S, R, n)
        cos = torch.where(denom > 0, num / torch.where(denom > 0, denom, 1.0), 0.0)
        delta = (lengths - 1).clamp_min(0).to(dtype).unsqueeze(1) - self.ref_lengths[refs.clamp_min(0)]  # (S, R)
        per_ref = cos.mean(2) * torch.exp(-delta ** 2 / (2 * self.sigma ** 2))  # (S, R)
        valid_ref = refs >= 0
        cider = 10.0 * (per_ref * valid_ref).sum(1) / valid_ref.sum(1)
        return cider, self._bleu4(c_h, c_r, first, orders, lengths, refs) if bleu else None

    def _bleu4(self, c_h, c_r, first, orders, lengths, refs) -> torch.Tensor:
        """Sentence BLEU-4 (S,) from :meth:`scores`'s tables: c_h (S, W) each window's count in its hypothesis,
        c_r (S, W, R) in each reference (0 for padding references), first (S, W) 1 on an n-gram's first window,
        orders (S, W) n − 1, lengths (S,) words, refs (S, R) reference indices (−1: padding)."""
        S, dtype = c_h.size(0), self.dtype
        clipped = first * torch.minimum(c_h, c_r.amax(2) if c_r.size(2) else torch.zeros_like(c_h))
        correct = torch.zeros(S, self.n, dtype=dtype, device=self.device).scatter_add_(1, orders, clipped)
        words = lengths.to(dtype)
        guess = (words.unsqueeze(1) - torch.arange(self.n, device=self.device)).clamp_min(0)  # (S, n)
        precision = torch.cumprod((correct + _TINY) / (guess + _SMALL), 1)[:, -1] ** (1.0 / self.n)
        # the closest reference length, the shorter on a tie
        ref_len = torch.where(refs >= 0, self.ref_words[refs.clamp_min(0)], math.inf)  # (S, R)
        gap = (ref_len - words.unsqueeze(1)).abs()
        closest = torch.where(gap == gap.amin(1, keepdim=True), ref_len, math.inf).amin(1)
        ratio = (words + _TINY) / (closest + _SMALL)
        brevity = torch.where(ratio < 1, torch.exp(1 - 1 / ratio), 1.0)
        return precision * brevity

    def score_lists(self, hypotheses: Sequence[Sequence[int]], images: Sequence[int], bleu: bool = False):
        """:meth:`__call__` (with ``bleu``, :meth:`scores`) for hypotheses given as lists of token ids."""
        tokens, lengths = _pad(hypotheses, self.device)
        images = torch.as_tensor(list(images), dtype=torch.long, device=self.device)
        return self.scores(tokens, lengths, images, True) if bleu else self(tokens, lengths, images)
