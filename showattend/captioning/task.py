"""The captioning :class:`~showattend.engine.Task`: what one training step and one validation of a captioner are.

The task holds the captioner's model parts and the checkpoint payload; what a run maximises is its
:class:`Objective`, a loss strategy: :class:`Likelihood` here (caption batches: an image's annotation vectors, or
its trunk activations when fine-tuning, once per distinct image; teacher forcing with the doubly stochastic
penalty, or the hard-attention objective of eq. 12 with its REINFORCE baseline), or self-critical sequence
training (:class:`~showattend.captioning.scst.SelfCritical`). Either validates by CIDEr-D and BLEU-4 of
free-running beam-search captions, never teacher-forced argmax. :mod:`showattend.captioning.train` prepares the
data and runs the engine with it.
"""
from __future__ import annotations

import random
from typing import Dict, List, NamedTuple, Type, Union

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from ..engine import StepContext, Task
from ..engine.batches import bucket_batches
from .cache import FeatureStore, ImageStore
from .captioner import CHECKPOINT_KIND, Captioner
from .config import ModelConfig, TrainConfig
from .data import CaptionDataset, CaptionRecord, collate_captions
from .encoders import Encoder
from .losses import MovingAverageBaseline, caption_loss, hard_attention_loss
from .metrics import bleu4, cider
from .network import FineTuned, build_decoder
from .vocab import Vocab

__all__ = ["CaptionBatch", "CaptionTask", "Objective", "Likelihood", "evaluate_split"]


@torch.no_grad()
def evaluate_split(captioner: Captioner, store: Union[FeatureStore, ImageStore], records: List[CaptionRecord],
                   beam_size: int = 3, max_len: int = 20, batch_size: int = 50, progress: bool = False,
                   length_penalty: float = 0.0, attention: str = "soft", samples: int = 5, precision: str = "fp32"):
    """Caption every record's image from the feature cache (free-running decoding); with a fine-tuned encoder
    the cache holds its trunk's activations, and its top blocks run here (from an ImageStore, the whole encoder).

    Returns:
        {image key: CaptionResult}.
    """
    from tqdm import tqdm

    out = {}
    images = isinstance(store, ImageStore)
    encoder = captioner.encoder if captioner.config.fine_tune_blocks or images else None
    was_training = encoder.training if encoder is not None else False
    for i in tqdm(range(0, len(records), batch_size), desc="decoding", disable=not progress, leave=False):
        chunk = records[i:i + batch_size]
        feats = torch.stack([store.read(store.row[r.key]) for r in chunk])  # (b, L, D), or images (b, 3, H, W)
        if encoder is not None:
            feats = feats.to(captioner.device)
            feats = encoder.eval().top(encoder.trunk(feats) if images else feats)
        for r, res in zip(chunk, captioner.decode(feats, beam_size, max_len, length_penalty, attention=attention,
                                                  samples=samples, precision=precision)):
            out[r.key] = res
    if encoder is not None:
        encoder.train(was_training)
    return out


class CaptionBatch(NamedTuple):
    """A training batch, sorted by decreasing caption length.

    Attributes:
        features: (U, L, D) float16 annotation vectors of the batch's U distinct images (cast to float32 on the
            device); with a fine-tuned encoder, its trunk's activations (U, L', C').
        image: (B,) long, the row of ``features`` of each caption's image.
        captions: (B, T) long, padded.
        lengths: B ints, tokens per caption with ``<start>`` and ``<end>`` (host side: the decoder shrinks the
            batch with them without reading the device).
        rows: (B,) long, each caption's position in the global batch (it picks the caption's hard-attention
            uniforms, so a caption samples the same locations in whichever process holds it).
    """

    features: torch.Tensor
    image: torch.Tensor
    captions: torch.Tensor
    lengths: List[int]
    rows: torch.Tensor


def _step_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


class Objective:
    """What a captioning run maximises: the captioning task's loss strategy. It owns the items of an epoch (its
    dataset, batches and their collation), the loss of a batch with its log values, and the validation score.
    :class:`Likelihood` (teacher forcing: soft or hard attention) and
    :class:`~showattend.captioning.scst.SelfCritical` (SCST) are the two.

    Args:
        task: the captioning task whose model parts (decoder, encoder, captioner), settings, store, vocabulary and
            validation images the objective uses.
        train_records: the training split.

    Attributes:
        dataset, loss_key, score_key, item_name: as :class:`~showattend.engine.Task`'s; ``score_key`` is
            ``val_bleu4`` or ``val_cider``, by ``--val-metric``.
    """

    dataset: Dataset
    loss_key: str
    score_key: str
    item_name: str

    def __init__(self, task: "CaptionTask", train_records: List[CaptionRecord]):
        self.task, self.cfg = task, task.cfg
        self.score_key = f"val_{self.cfg.val_metric}"

    def validate(self) -> Dict[str, float]:
        """BLEU-4 and CIDEr-D (coco-caption's, 0-100, no Java: words as tokenised, rare words included, nothing
        cut, so comparable with ``showattend evaluate``) of beam-search captions of the validation images, as
        ``val_bleu4`` and ``val_cider``; ``--val-metric`` names the one that selects."""
        t = self.task
        results = evaluate_split(t.captioner, t.store, t.val_records, self.cfg.val_beam_size, self.cfg.val_max_len)
        refs, hyps = {r.key: r.tokens for r in t.val_records}, {k: r.words for k, r in results.items()}
        return {"val_bleu4": bleu4(refs, hyps), "val_cider": cider(refs, hyps)}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Likelihood(Objective):
    """Maximum likelihood of the reference captions by teacher forcing, with the doubly stochastic penalty (eq.
    14); for a hard-attention model, the variational lower bound of eq. 12 trained by REINFORCE with a moving
    baseline (eq. 11), on the expected context with probability ``--expected-context-prob`` (§4.1). Items are
    captions."""

    loss_key, item_name = "train_ce", "captions"

    def __init__(self, task: "CaptionTask", train_records: List[CaptionRecord]):
        super().__init__(task, train_records)
        self.dataset = CaptionDataset(train_records, task.store, task.vocab, self.cfg.max_caption_len, half=True,
                                      read=not isinstance(task.store, ImageStore))  # images: once per batch
        self.baseline = MovingAverageBaseline(self.cfg.baseline_decay)
        self.hard = task.model_cfg.attention == "hard"

    def epoch_batches(self, epoch: int) -> List[List[int]]:
        """Shuffled captions (with ``--length-buckets``, grouped by length); when the encoder runs in the step
        (fine-tuning, --from-images), shuffled images with their captions side by side, so that a batch holds few
        images and the encoder runs once for all captions of each."""
        rng = np.random.default_rng([self.cfg.seed, epoch])
        if self.task.encoder is None:
            order = rng.permutation(len(self.dataset)).tolist()
            if self.cfg.length_buckets:
                return bucket_batches(order, self.dataset.steps.tolist(), self.cfg.batch_size, rng.shuffle)
        else:
            _, image = np.unique(self.dataset.rows, return_inverse=True)  # (N,) each caption's image
            rank = np.argsort(rng.permutation(int(image.max()) + 1))  # image -> its place in the shuffled order
            order = np.argsort(rank[image], kind="stable").tolist()
        b = self.cfg.batch_size
        return [order[i:i + b] for i in range(0, len(order), b)]

    def words(self, index: int) -> int:
        return self.dataset.length(index) - 1  # predicted tokens: the words and <end>

    def collate(self, items, rows) -> CaptionBatch:
        order = sorted(range(len(items)), key=lambda k: len(items[k][1]), reverse=True)
        _, caps, lengths = collate_captions([items[k] for k in order])
        distinct: Dict[int, int] = {}  # cache row -> its row in feats
        feats, image = [], []
        for k in order:
            if items[k][2] not in distinct:
                distinct[items[k][2]] = len(feats)
                feats.append(items[k][0] if items[k][0] is not None else self.task.store.read(items[k][2], True))
            image.append(distinct[items[k][2]])
        return CaptionBatch(torch.stack(feats), torch.tensor(image), caps, lengths.tolist(),
                            torch.tensor([rows[k] for k in order]))

    def loss(self, model, batch: CaptionBatch, ctx: StepContext):
        cfg = self.cfg
        x, image, caps, lengths = batch.features.float(), batch.image, batch.captions, batch.lengths
        coin = random.Random(_step_seed(cfg.seed, ctx.step)).random()  # the same on every process
        sampled = self.hard and coin >= cfg.expected_context_prob  # else soft, or a hard model's expected context
        n = cfg.hard_samples if sampled else 1  # N sampled location sequences per caption (eq. 12)
        words, items = ctx.words * n, ctx.items * n
        if self.task.encoder is None:  # the decoder alone: each caption's annotation vectors
            forward = lambda image, *args, **kw: model(x[image], *args, **kw)  # noqa: E731
        else:  # the top blocks run once per distinct image (FineTuned)
            forward = lambda image, *args, **kw: model(x, image, *args, **kw)  # noqa: E731
        if not sampled:
            out = forward(image, caps, lengths)
            loss, ce, ds = caption_loss(out, caps, cfg.ds_lambda, cfg.label_smoothing, cfg.ds_normalisation,
                                        words=words, num_captions=items)
        else:
            rows = batch.rows
            if n > 1:
                image, caps = image.repeat_interleave(n, 0), caps.repeat_interleave(n, 0)
                lengths = [length for length in lengths for _ in range(n)]
                rows = (rows * n).repeat_interleave(n) + torch.arange(n, device=rows.device).repeat(len(batch.lengths))
            g = torch.Generator(device=x.device)
            g.manual_seed(_step_seed(cfg.seed, ctx.step))
            uniforms = torch.rand(items, cfg.max_caption_len + 1, generator=g, device=x.device)[rows]
            out = forward(image, caps, lengths, hard=True, uniforms=uniforms)
            loss, ce, ds, reward = hard_attention_loss(out, caps, self.baseline.value, cfg.reinforce_weight,
                                                       cfg.entropy_weight, cfg.ds_lambda, cfg.label_smoothing,
                                                       cfg.ds_normalisation, words=words, num_captions=items)
            total = reward.sum()
            if ctx.world > 1:
                dist.all_reduce(total)  # the same baseline on every process
            self.baseline.update(total / items)  # after the step's gradient used the old b (eq. 11)
        return loss, {"ce": ce * words, "ds": ds, "words": torch.full((), words / ctx.world, device=ce.device)}

    def summarise(self, sums: Dict[str, float], steps: int) -> Dict[str, float]:
        return {"train_ce": sums["ce"] / max(sums["words"], 1e-9), "train_ds": sums["ds"] / max(steps, 1),
                "train_loss": sums["loss"] / max(steps, 1)}

    def state_dict(self) -> dict:
        return {"baseline": self.baseline.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("baseline"):
            self.baseline.load_state_dict(state["baseline"], self.task.captioner.device)
            self.baseline.decay = self.cfg.baseline_decay  # a --baseline-decay given on --resume applies


class CaptionTask(Task):
    """Captioning for the engine: the captioner's model parts (decoder; the encoder when it runs in the step) and
    an :class:`Objective` that makes the items, the loss and the validation score of the run.

    Args:
        model_cfg: architecture; cfg: training settings.
        train_records, val_records: the two splits.
        store: the feature cache; vocab: the vocabulary; device: where the decoder trains.
        objective: the loss strategy's class: :class:`Likelihood` (the default) or
            :class:`~showattend.captioning.scst.SelfCritical` (``--scst``).
    """

    kind = CHECKPOINT_KIND
    # the vocabulary, the start, the task, the model; the score the best so far was measured in
    fixed_settings = ("min_count", "init", "scst", "from_images", "val_metric")
    data_settings = ("data", "images", "karpathy_split", "max_caption_len", "length_buckets")

    def __init__(self, model_cfg: ModelConfig, cfg: TrainConfig, train_records: List[CaptionRecord],
                 val_records: List[CaptionRecord], store: Union[FeatureStore, ImageStore], vocab: Vocab,
                 device: torch.device, objective: Type[Objective] = Likelihood):
        self.cfg, self.model_cfg, self.vocab, self.store, self.val_records = cfg, model_cfg, vocab, store, val_records
        self.decoder = build_decoder(model_cfg, len(vocab))
        self.encoder = Encoder(model_cfg.encoder, weights=model_cfg.encoder_weights,
                               fine_tune_blocks=model_cfg.fine_tune_blocks) \
            if model_cfg.fine_tune_blocks or cfg.from_images else None
        self.model = FineTuned(self.decoder, self.encoder, cfg.from_images) if self.encoder is not None \
            else self.decoder
        self.captioner = Captioner(self.decoder, vocab, model_cfg, encoder=self.encoder, device=device)
        self.objective = objective(self, train_records)
        self.dataset = self.objective.dataset
        self.loss_key, self.score_key, self.item_name = (self.objective.loss_key, self.objective.score_key,
                                                         self.objective.item_name)

    def epoch_batches(self, epoch: int) -> List[List[int]]:
        return self.objective.epoch_batches(epoch)

    def words(self, index: int) -> int:
        return self.objective.words(index)

    def collate(self, items, rows):
        return self.objective.collate(items, rows)

    def loss(self, model, batch, ctx: StepContext):
        return self.objective.loss(model, batch, ctx)

    def summarise(self, sums: Dict[str, float], steps: int) -> Dict[str, float]:
        return self.objective.summarise(sums, steps)

    def validate(self) -> Dict[str, float]:
        return self.objective.validate()

    def param_groups(self, lr: float):
        if not self.model_cfg.fine_tune_blocks:
            return super().param_groups(lr)
        top = [p for p in self.encoder.parameters() if p.requires_grad]
        return [{"params": list(self.decoder.parameters()), "lr": lr},
                {"params": top, "lr": self.cfg.encoder_lr}]

    def lr_settings(self):
        return ["lr", "encoder_lr"] if self.model_cfg.fine_tune_blocks else ["lr"]

    def payload(self) -> dict:
        return self.captioner.state()

    def state_dict(self) -> dict:
        return self.objective.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.objective.load_state_dict(state)

    def compile(self) -> None:
        self.decoder.defer_weight_grads = False  # the deferred products record into Python lists: a graph break
        self.decoder.recurrence = torch.compile(self.decoder.recurrence, dynamic=True)
