"""Self-critical sequence training of a captioner (Rennie et al. 2017, CVPR): ``showattend train --scst --init
CHECKPOINT``, the captioning task's second loss strategy (:class:`SelfCritical`, an
:class:`~showattend.captioning.task.Objective`).

After cross-entropy training, the captioner is trained to maximise the expected CIDEr-D of its own captions,
E_{w ~ p}[r(w)], by REINFORCE: for each image of a batch, k captions are sampled from the model, each is scored
with CIDEr-D against the image's references (:class:`~showattend.captioning.cider.CiderD`, with the document
frequencies of the training references), and log p(w^s) is pushed up by r(w^s) − b, b the mean reward of the
image's other samples (Luo 2020) or the reward of its greedy caption (Rennie et al.'s "self-critical" baseline).

One step:

1. sample k captions per image without gradients (:meth:`Captioner.sample
   <showattend.captioning.captioner.Captioner.sample>`: the decoder's own step, on the device, one host read every
   few steps);
2. rewards and baselines: CIDEr-D, plus w times the sentence BLEU-4 with ``--scst-bleu-weight`` w (its brevity
   penalty holds the captions' length up, and with it METEOR's recall); with ``--scst-reward-end``, the
   default, ``<end>`` counts as a word of the sample and of every reference, so that the n-grams that end a
   caption are rewarded too, as in Luo's self-critical.pytorch: without it, CIDEr-D is indifferent to where a
   caption stops, and a caption cut after its surest words scores well);
3. the decoder run teacher-forced on the sampled captions (its batched training pass), log p(w^s) from its
   logits, and the surrogate of :func:`~showattend.captioning.losses.scst_loss`; with ``--scst-xe-weight`` λ,
   plus λ times the cross-entropy of the batch images' reference captions (a mixed objective, as Paulus et al.
   2018 use for summarisation), which holds the captions' length and wording near the references'.

The policy is the network without dropout, in both passes (the network captions are decoded with), so the
log-probabilities of step 3 are exactly those the samples were drawn from. The samples of a step come from a
generator seeded by the run's seed and the step, so a resumed run draws the same captions. Validation selects
on coco-caption's CIDEr-D of beam-search captions of the validation images (document frequencies of the
validation references, on words: rare reference words count as themselves, as in ``showattend evaluate``).
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from ..engine import StepContext
from .cache import FeatureStore, ImageStore
from .cider import CiderD
from .data import CaptionDataset, CaptionRecord, collate_captions
from .losses import caption_loss, scst_loss, self_critical_baseline
from .task import CaptionTask, Objective, _step_seed
from .vocab import Vocab

__all__ = ["ImageBatch", "SelfCritical"]


class _Images(Dataset):
    """One item per training image: (its features as stored, its index)."""

    def __init__(self, records: List[CaptionRecord], store: Union[FeatureStore, ImageStore]):
        self.store, self.rows = store, np.asarray([store.row[r.key] for r in records], dtype=np.int64)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.store.read(int(self.rows[i]), True), i


class ImageBatch(NamedTuple):
    """A batch of SCST: features (B, L, D) float16 (trunk activations when fine-tuning, images with
    ``--from-images``), and image (B,) long, each image's index among the training images (its references).
    With ``--scst-xe-weight``, also the images' reference captions: captions (R, T) padded, sorted by decreasing
    length, caption_image (R,) each one's row of ``features``, caption_lengths R ints (host side); else None.
    rows: (B,) long, each image's position in the global batch (its samples' random draws follow it, so that
    they do not depend on the number of processes)."""

    features: torch.Tensor
    image: torch.Tensor
    captions: Optional[torch.Tensor] = None
    caption_image: Optional[torch.Tensor] = None
    caption_lengths: Optional[List[int]] = None
    rows: Optional[torch.Tensor] = None


def _references(records: List[CaptionRecord], vocab: Vocab, end: bool = False) -> List[List[List[int]]]:
    """Each record's references as ids (words, then ``<end>`` with ``end``), whole: CIDEr-D takes any length (a
    reference cut at the training limit would end with ``<end>`` after a fragment, and dropping the long ones
    could leave an image without references)."""
    tail = [vocab.end] if end else []
    return [[vocab.encode(t, add_specials=False) + tail for t in r.tokens if t] for r in records]


class SelfCritical(Objective):
    """Self-critical sequence training, a loss strategy of the captioning task (see the module docstring). Items
    are images; ``--batch-size`` counts images, each sampled ``--scst-samples`` times; validation selects on
    ``--val-metric`` (CIDEr-D by default), as for the likelihood.

    Args: as for :class:`~showattend.captioning.task.Objective`.

    Raises:
        ValueError: an image without references.
    """

    loss_key, item_name = "train_reward", "images"

    def __init__(self, task: CaptionTask, train_records: List[CaptionRecord]):
        super().__init__(task, train_records)
        store, vocab, cfg = task.store, task.vocab, self.cfg
        # the images' reference captions, for the cross-entropy term
        self.references = CaptionDataset(train_records, store, vocab, cfg.max_caption_len, half=True,
                                         read=not isinstance(store, ImageStore))
        self.dataset = _Images(train_records, store)
        # each image's caption indices in self.references (grouped by cache row)
        by_row: Dict[int, List[int]] = {}
        for c, row in enumerate(self.references.rows.tolist()):
            by_row.setdefault(row, []).append(c)
        self.image_captions = [by_row.get(int(row), []) for row in self.dataset.rows]
        self.cider = CiderD(_references(train_records, vocab, cfg.scst_reward_end), len(vocab),
                            device=task.captioner.device)
        self.banned = task.captioner.banned_tokens()  # never drawn, as in decoding (and masked in the loss)

    def epoch_batches(self, epoch: int) -> List[List[int]]:
        order = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.dataset)).tolist()
        b = self.cfg.batch_size
        return [order[i:i + b] for i in range(0, len(order), b)]

    def words(self, index: int) -> int:
        return self.cfg.scst_samples  # sequences per image (the loss divides by the sampled tokens instead)

    def collate(self, items, rows) -> ImageBatch:
        feats, image = torch.stack([x for x, _ in items]), torch.tensor([i for _, i in items])
        positions = torch.tensor(list(rows), dtype=torch.long)
        if not self.cfg.scst_xe_weight:
            return ImageBatch(feats, image, rows=positions)
        ids, offsets = self.references.ids, self.references.offsets  # every caption's ids, end to end
        refs = [(b, torch.from_numpy(ids[offsets[c]:offsets[c + 1]].astype(np.int64)))
                for b, (_, i) in enumerate(items) for c in self.image_captions[i]]
        refs.sort(key=lambda r: -len(r[1]))
        _, captions, lengths = collate_captions([(torch.zeros(0), ids) for _, ids in refs], self.task.vocab.pad)
        return ImageBatch(feats, image, captions, torch.tensor([b for b, _ in refs]), lengths.tolist(), positions)

    def _sample(self, annotations: torch.Tensor, samples: int, greedy: bool, generator=None, rows=None,
                total_rows=None):
        """(tokens (B·k, T), lengths (B·k,), words before <end> (B·k,)) drawn by the captioner (``rows``,
        ``total_rows``: see :func:`~showattend.search.sample_search`)."""
        tokens, lengths = self.task.captioner.sample(annotations, samples, greedy, self.cfg.val_max_len, generator,
                                                     rows, total_rows)
        ended = tokens.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1) == self.task.vocab.end
        return tokens, lengths, lengths - ended.long()

    def loss(self, model, batch: ImageBatch, ctx: StepContext):
        cfg, k = self.cfg, self.cfg.scst_samples
        x, B = batch.features.float(), batch.features.size(0)
        was_training = model.training
        model.eval()  # the policy is the network without dropout, in both passes
        tokens, lengths, reward, baseline, greedy = self._samples_and_rewards(x, batch, ctx)
        # teacher-forced pass over the samples, longest first (the decoder's batched training pass)
        host_lengths = lengths.tolist()
        order = sorted(range(len(host_lengths)), key=lambda i: -host_lengths[i])
        idx = torch.tensor(order, device=x.device)
        image = torch.arange(B, device=x.device).repeat_interleave(k)[idx]  # each sample's row of x
        start = torch.full((len(order), 1), self.task.vocab.start, dtype=torch.long, device=x.device)
        captions = torch.cat([start, tokens[idx]], dim=1)  # (S, T + 1)
        lens = [host_lengths[i] + 1 for i in order]
        out = model(x[image], captions, lens) if self.task.encoder is None else model(x, image, captions, lens)
        n_tokens = lengths.sum()
        if ctx.world > 1:
            n_tokens = n_tokens.clone()
            dist.all_reduce(n_tokens)
        loss, _ = scst_loss(out.logits, captions[:, 1:], out.mask, reward.view(-1)[idx], baseline.reshape(-1)[idx],
                            self.banned, n_tokens)
        sums = {}
        if cfg.scst_xe_weight:  # λ x the cross-entropy of the batch images' references, per word
            xe, sums = self._references_xe(model, x, batch, ctx)
            loss = loss + cfg.scst_xe_weight * xe
        model.train(was_training)
        sums.update({"reward": reward.sum(), "samples": torch.full((), float(B * k), device=x.device),
                     "tokens": lengths.sum().float()})
        if greedy is not None:
            sums["greedy"] = greedy.sum() * k
        return loss, sums

    @torch.no_grad()
    def _samples_and_rewards(self, x: torch.Tensor, batch: ImageBatch, ctx: StepContext):
        """k captions sampled per image, their CIDEr-D rewards (B, k) and baselines, and the greedy captions'
        rewards (B,) with the greedy baseline (else None)."""
        cfg, k, B = self.cfg, self.cfg.scst_samples, x.size(0)
        g = torch.Generator(device=x.device)
        g.manual_seed(_step_seed(cfg.seed, ctx.step))
        encoder = self.task.encoder
        annotations = x if encoder is None else encoder.top(encoder.trunk(x) if cfg.from_images else x)
        # sample j of the image at global position r draws row r·k + j of the step's uniforms: the same samples in
        # whichever process holds the image
        rows = (batch.rows.to(x.device) * k).repeat_interleave(k) + torch.arange(k, device=x.device).repeat(B)
        tokens, lengths, words = self._sample(annotations, k, False, g, rows, ctx.items * k)  # (B·k, T)
        image = torch.arange(B, device=x.device).repeat_interleave(k)
        counted = lengths if cfg.scst_reward_end else words  # <end>, when drawn, is a word of the reward
        reward = self._reward(tokens, counted, batch.image[image]).view(B, k)
        greedy = None
        if cfg.scst_baseline == "greedy":
            g_tokens, g_lengths, g_words = self._sample(annotations, 1, True)
            greedy = self._reward(g_tokens, g_lengths if cfg.scst_reward_end else g_words, batch.image)
        return tokens, lengths, reward, self_critical_baseline(reward, cfg.scst_baseline, greedy), greedy

    def _reward(self, tokens: torch.Tensor, lengths: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """(S,) float rewards of captions (S, T) with (S,) counted words: CIDEr-D + w · BLEU-4."""
        w = self.cfg.scst_bleu_weight
        cider, bleu = self.cider.scores(tokens, lengths, images, bleu=w > 0)
        return (cider + w * bleu if w > 0 else cider).float()

    def _references_xe(self, model, x: torch.Tensor, batch: ImageBatch, ctx: StepContext):
        """The cross-entropy per word of the batch images' reference captions (``--scst-xe-weight``), and its
        sums for the logs."""
        cfg = self.cfg
        refs, ref_image, ref_lengths = batch.captions, batch.caption_image, batch.caption_lengths
        ref_out = model(x[ref_image], refs, ref_lengths) if self.task.encoder is None else \
            model(x, ref_image, refs, ref_lengths)
        local = torch.tensor([float(sum(ref_lengths) - len(ref_lengths)), float(len(ref_lengths))],
                             device=x.device)  # predicted words and captions of this process's share
        total = local.clone()
        if ctx.world > 1:
            dist.all_reduce(total)
        xe, ce, _ = caption_loss(ref_out, refs, cfg.ds_lambda, cfg.label_smoothing, cfg.ds_normalisation,
                                 words=total[0], num_captions=total[1])
        return xe, {"xe": ce * total[0], "xe_words": local[0]}  # summed over processes in the logs

    def summarise(self, sums: Dict[str, float], steps: int) -> Dict[str, float]:
        n = max(sums.get("samples", 0.0), 1e-9)
        out = {"train_reward": 100 * sums["reward"] / n, "train_len": sums["tokens"] / n,
               "train_loss": sums["loss"] / max(steps, 1)}
        if "greedy" in sums:
            out["train_greedy_reward"] = 100 * sums["greedy"] / n
        if "xe" in sums:
            out["train_ce"] = sums["xe"] / max(sums["xe_words"], 1e-9)
        return out

