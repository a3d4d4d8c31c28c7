"""The translation task of the training engine: length-grouped batches of sentence pairs, label-smoothed
cross-entropy per target subword, validation sacreBLEU by decoding."""
from __future__ import annotations

from typing import Dict, List, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..engine import StepContext, Task
from ..engine.batches import bucket_batches
from .config import TranslationTrainConfig
from .data import pad_batch
from .evaluate import corpus_scores
from .tokenizer import PAD_ID
from .translator import CHECKPOINT_KIND, Translator

__all__ = ["TranslationBatch", "TranslationTask"]


class TranslationBatch(NamedTuple):
    """A training batch of sentence pairs.

    Attributes:
        src: (B, S) source ids, padded; src_lengths: B ints (host side, for the packed encoder);
        tgt_in: (B, T) ``<s> y_1 .. y_n``; tgt_out: (B, T) ``y_1 .. y_n </s>``, padded with 0.
    """

    src: torch.Tensor
    src_lengths: List[int]
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor


class TranslationTask(Task):
    """Translation for the engine: length-bucketed batches, label-smoothed cross-entropy per target subword,
    validation sacreBLEU by decoding.

    Args:
        bundle: the :class:`Translator` being trained; cfg: training settings;
        pairs: training subword id pairs; val_src, val_tgt: validation sentences.
    """

    kind, loss_key, score_key, item_name = CHECKPOINT_KIND, "train_loss", "val_bleu", "sentences"
    fixed_settings = ("vocab_size", "src", "tgt")  # the subword models and the language pair
    data_settings = ("data", "train_split", "max_len")

    def __init__(self, bundle: Translator, cfg: TranslationTrainConfig, pairs, val_src: List[str],
                 val_tgt: List[str]):
        self.bundle, self.cfg, self.val_src, self.val_tgt = bundle, cfg, val_src, val_tgt
        self.model, self.dataset = bundle.model, pairs
        self._lengths = [len(s) for s, _ in pairs]

    def epoch_batches(self, epoch: int) -> List[List[int]]:
        rng = np.random.default_rng([self.cfg.seed, epoch])  # the captioning task's seeding
        order = rng.permutation(len(self._lengths)).tolist()
        return bucket_batches(order, self._lengths, self.cfg.batch_size, rng.shuffle)

    def words(self, index: int) -> int:
        return len(self.dataset[index][1]) + 1  # the subwords and </s>

    def collate(self, items, rows) -> TranslationBatch:
        items = sorted(items, key=lambda p: -len(p[0]))  # longest source first: the packed encoder needs no sort
        src, src_len = pad_batch([s for s, _ in items])
        tgt_in, _ = pad_batch([t for _, t in items], bos=True)
        tgt_out, _ = pad_batch([t for _, t in items], eos=True)
        return TranslationBatch(src, src_len.tolist(), tgt_in, tgt_out)

    def loss(self, model, batch: TranslationBatch, ctx: StepContext):
        logits, _ = model(batch.src, batch.src_lengths, batch.tgt_in)
        total = F.cross_entropy(logits.float().transpose(1, 2), batch.tgt_out, ignore_index=PAD_ID,
                                label_smoothing=self.cfg.label_smoothing, reduction="sum")
        return total / ctx.words, {"sum": total.detach(),
                                   "words": torch.full((), ctx.words / ctx.world, device=total.device)}

    def summarise(self, sums: Dict[str, float], steps: int) -> Dict[str, float]:
        return {"train_loss": sums["sum"] / max(sums["words"], 1e-9)}

    def validate(self) -> float:
        hyps = [r.text for r in self.bundle.translate(self.val_src, beam_size=self.cfg.val_beam_size,
                                                         length_penalty=self.cfg.length_penalty)]
        return corpus_scores(hyps, self.val_tgt, self.cfg.tgt, forms=("BLEU",))["BLEU"]

    def payload(self) -> dict:
        return self.bundle.state()

    def compile(self) -> None:
        self.model.decoder.step = torch.compile(self.model.decoder.step, dynamic=True)
