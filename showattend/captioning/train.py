"""Training a captioner: teacher forcing, Adam, gradient clipping, early stopping on validation BLEU-4.

Validation decodes the validation images free-running (beam search, as at test time, never teacher-forced
argmax) and scores them with coco-caption BLEU-4. Every epoch appends a row to ``metrics.jsonl`` and
``metrics.csv`` and redraws ``curves.png`` in the run folder; ``last.pt`` (everything needed to resume) and
``best.pt`` (the best model by validation BLEU-4) are written atomically.
"""
from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, fields
from typing import Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..checkpoint import load_checkpoint, save_checkpoint
from ..metrics import bleu4
from ..runs import append_metrics, resolve_device, save_figure
from ..vocab import Vocab
from .data import (CaptionDataset, CaptionRecord, FeatureStore, build_feature_cache, collate_captions, load_coco,
                   load_karpathy)
from .decoder import DS_NORMALISATIONS, MovingAverageBaseline, caption_loss, hard_attention_loss
from .encoders import Encoder
from .model import CHECKPOINT_KIND, Captioner, ModelConfig, build_decoder

__all__ = ["TrainConfig", "load_records", "prepare_cache", "train", "evaluate_split"]


@dataclass
class TrainConfig:
    """Training settings (stored in the checkpoint; every field is a ``showattend train --field`` option).

    Attributes:
        data: Karpathy JSON (``dataset_flickr8k.json`` ...) or an official COCO ``captions_*.json``.
        images: image folder the JSON's file names are relative to.
        karpathy_split: for a COCO annotation file, the ``dataset_coco.json`` that assigns splits.
        cache_dir: where feature caches live (one sub-folder per dataset and encoder).
        out_dir: run folder: checkpoints, metrics, curves.
        epochs: maximum epochs.
        batch_size: captions per batch.
        lr: Adam learning rate.
        lr_decay: learning rate factor after an epoch without a new best validation BLEU-4.
        weight_decay: Adam L2 penalty.
        grad_clip: gradient norm clip (0: off).
        ds_lambda: λ of the doubly stochastic regularization (eq. 14).
        ds_normalisation: how that penalty P is scaled against the per-word cross-entropy, with the deficit
            d_bi = (1 − Σ_t α_bti)² summed over B captions and L locations, and N predicted words: "mean",
            P = Σd / (B·L) (showattend's original choice, per caption ≈ T/L of eq. 14); "eq14", P = Σd / N (the
            paper: Σ_i per caption against the caption's summed NLL); "capgen", P = B·Σd / (L·N) (the authors'
            Theano code).
        label_smoothing: ε of label-smoothed cross-entropy (0: plain likelihood, as in the paper); applied to
            the likelihood term of hard attention too.
        min_count: minimum training-split frequency of a vocabulary word.
        max_caption_len: training captions are cut to this many words.
        patience: epochs without a new best validation BLEU-4 before stopping.
        val_beam_size: beam size of the validation decoding.
        val_max_len: maximum caption length when decoding.
        val_images: validate on the first N validation images (0: all).
        max_steps: stop an epoch after this many batches (0: whole epoch; for smoke tests).
        hard_samples: Monte-Carlo location samples per caption for hard attention (N of Xu et al. eq. 12).
        reinforce_weight: λ_r, weight of the REINFORCE term of eq. 12 (0.1, the authors' code).
        entropy_weight: λ_e, weight of the entropy bonus of eq. 12 (0.002, the authors' code).
        expected_context_prob: probability per minibatch of training a hard model on the expected context
            (soft attention) instead of a sample (§4.1; 0.5, the authors' code).
        baseline_decay: decay of the moving-average baseline of eq. 11 (0.9).
        seed: random seed.
        device: "auto", "cpu" or "cuda".
        num_workers: DataLoader workers.
        progress: tqdm progress bars.
    """

    data: str = "../shared/data/flickr8k/dataset_flickr8k.json"
    images: str = "../shared/data/flickr8k/images"
    karpathy_split: str = ""
    cache_dir: str = "runs/cache"
    out_dir: str = "runs/captioner"
    epochs: int = 15
    batch_size: int = 64
    lr: float = 4e-4
    lr_decay: float = 0.5
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    ds_lambda: float = 1.0
    ds_normalisation: str = "mean"
    label_smoothing: float = 0.0
    min_count: int = 5
    max_caption_len: int = 40
    patience: int = 3
    val_beam_size: int = 3
    val_max_len: int = 20
    val_images: int = 0
    max_steps: int = 0
    hard_samples: int = 1
    reinforce_weight: float = 0.1
    entropy_weight: float = 0.002
    expected_context_prob: float = 0.5
    baseline_decay: float = 0.9
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def load_records(cfg: TrainConfig) -> List[CaptionRecord]:
    """The caption records of ``cfg.data`` (Karpathy JSON, or COCO annotations via pycocotools)."""
    with open(cfg.data, encoding="utf-8") as f:
        head = f.read(4096)
    if '"annotations"' in head or "annotations" in os.path.basename(cfg.data) or \
            os.path.basename(cfg.data).startswith("captions_"):
        return load_coco(cfg.data, "", cfg.karpathy_split or None)
    return load_karpathy(cfg.data)


def prepare_cache(cfg: TrainConfig, model_cfg: ModelConfig, records: List[CaptionRecord],
                  device: Optional[torch.device] = None) -> FeatureStore:
    """Build (or reuse, or resume) the feature cache of every image in ``records``."""
    name = os.path.splitext(os.path.basename(cfg.data))[0].replace("dataset_", "")
    folder = os.path.join(cfg.cache_dir, f"{name}-{model_cfg.encoder}-{model_cfg.image_size}")
    keys = sorted({r.key for r in records})
    if os.path.isfile(os.path.join(folder, "features.npy")):
        store = FeatureStore(folder)
        if all(k in store for k in keys):
            return store
    encoder = Encoder(model_cfg.encoder, weights=model_cfg.encoder_weights)
    return build_feature_cache(encoder, cfg.images, keys, folder, device=str(device or "cpu"),
                               progress=cfg.progress)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate_split(captioner: Captioner, store: FeatureStore, records: List[CaptionRecord], beam_size: int = 3,
                   max_len: int = 20, batch_size: int = 50, progress: bool = False, length_penalty: float = 0.0,
                   attention: str = "soft", samples: int = 5):
    """Caption every record's image from the feature cache (free-running decoding).

    Returns:
        {image key: CaptionResult}.
    """
    from tqdm import tqdm

    out = {}
    for i in tqdm(range(0, len(records), batch_size), desc="decoding", disable=not progress, leave=False):
        chunk = records[i:i + batch_size]
        feats = torch.stack([store.get(r.key) for r in chunk])  # (b, L, D)
        for r, res in zip(chunk, captioner.decode(feats, beam_size, max_len, length_penalty, attention=attention,
                                                  samples=samples)):
            out[r.key] = res
    return out


def _plot(history: List[Dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    ax1.plot(ep, [h["train_ce"] for h in history], "o-", color="tab:blue", label="train cross-entropy")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy (nats/word)", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(ep, [h["val_bleu4"] for h in history], "s-", color="tab:red", label="val BLEU-4")
    ax2.set_ylabel("validation BLEU-4", color="tab:red")
    fig.tight_layout()
    save_figure(fig, path)


def train(model_cfg: ModelConfig, cfg: TrainConfig, resume: bool = False) -> str:
    """Train a captioner; returns the path of ``best.pt``.

    Args:
        model_cfg: architecture.
        cfg: training settings.
        resume: continue from ``out_dir/last.pt`` (model, optimizer, scheduler, epoch, RNG, history).

    Raises:
        FileNotFoundError: missing data or, with ``resume``, no ``last.pt``.
        ValueError: unknown ``ds_normalisation``.
    """
    from tqdm import tqdm

    if cfg.ds_normalisation not in DS_NORMALISATIONS:
        raise ValueError(f"--ds-normalisation {cfg.ds_normalisation!r}: choose one of {', '.join(DS_NORMALISATIONS)}")

    device = resolve_device(cfg.device)
    os.makedirs(cfg.out_dir, exist_ok=True)
    _seed_all(cfg.seed)
    records = load_records(cfg)
    train_recs = [r for r in records if r.split == "train"]
    val_recs = [r for r in records if r.split == "val"]
    if cfg.val_images:
        val_recs = val_recs[: cfg.val_images]
    if not train_recs or not val_recs:
        raise ValueError(f"{cfg.data}: needs train and val images, found {len(train_recs)} and {len(val_recs)}")
    store = prepare_cache(cfg, model_cfg, records, device)

    last_path, best_path = os.path.join(cfg.out_dir, "last.pt"), os.path.join(cfg.out_dir, "best.pt")
    ckpt = None
    if resume:
        ckpt = load_checkpoint(last_path, CHECKPOINT_KIND)
        model_cfg = ModelConfig.from_dict(ckpt["config"])
        vocab = Vocab(ckpt["vocab"])
    else:
        vocab = Vocab.build([t for r in train_recs for t in r.tokens], cfg.min_count)  # train split only
    decoder = build_decoder(model_cfg, len(vocab)).to(device)
    optimizer = torch.optim.Adam([p for p in decoder.parameters() if p.requires_grad], lr=cfg.lr,
                                 weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.lr_decay, patience=0)
    start_epoch, best, history, bad_epochs = 1, -1.0, [], 0
    baseline = MovingAverageBaseline(cfg.baseline_decay)
    hard = model_cfg.attention == "hard"
    if ckpt is not None:
        decoder.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, best, history = ckpt["epoch"] + 1, ckpt["best_score"], ckpt["history"]
        bad_epochs = ckpt["bad_epochs"]
        if ckpt.get("baseline"):
            baseline.load_state_dict(ckpt["baseline"])
        torch.set_rng_state(ckpt["rng"])
    captioner = Captioner(decoder, vocab, model_cfg, device=device)

    dataset = CaptionDataset(train_recs, store, vocab, cfg.max_caption_len)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + start_epoch)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate_captions,
                        num_workers=cfg.num_workers, generator=generator, drop_last=False)
    val_refs = {r.key: r.tokens for r in val_recs}
    print(f"train: {len(train_recs)} images, {len(dataset)} captions; val: {len(val_recs)} images; "
          f"vocabulary {len(vocab)} words (min count {cfg.min_count}, train split); device {device}", flush=True)

    for epoch in range(start_epoch, cfg.epochs + 1):
        if bad_epochs >= cfg.patience:
            break
        decoder.train()
        t0, n_words, sum_ce, sum_ds, n_batches = time.time(), 0, 0.0, 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch}", disable=not cfg.progress, leave=False)
        for feats, caps, lengths in bar:
            feats, caps = feats.to(device), caps.to(device)
            if hard and float(torch.rand(())) >= cfg.expected_context_prob:
                # stochastic hard attention: N sampled location sequences per caption (eq. 12)
                n = cfg.hard_samples
                feats_n, caps_n = feats.repeat_interleave(n, 0), caps.repeat_interleave(n, 0)
                out = decoder(feats_n, caps_n, lengths.repeat_interleave(n, 0), hard=True)
                loss, ce, ds, reward = hard_attention_loss(out, caps_n, baseline.value, cfg.reinforce_weight,
                                                           cfg.entropy_weight, cfg.ds_lambda,
                                                           cfg.label_smoothing, cfg.ds_normalisation)
                baseline.update(reward)  # after the step's gradient used the old b (eq. 11)
            else:  # soft attention, or a hard model's expected-context minibatch
                out = decoder(feats, caps, lengths)
                loss, ce, ds = caption_loss(out, caps, cfg.ds_lambda, cfg.label_smoothing, cfg.ds_normalisation)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(decoder.parameters(), cfg.grad_clip)
            optimizer.step()
            words = int(out.mask.sum())
            n_words, n_batches = n_words + words, n_batches + 1
            sum_ce, sum_ds = sum_ce + float(ce.detach()) * words, sum_ds + float(ds.detach())
            bar.set_postfix(ce=f"{sum_ce / n_words:.3f}", ds=f"{sum_ds / n_batches:.3f}")
            if cfg.max_steps and n_batches >= cfg.max_steps:
                break
        train_time = time.time() - t0
        t1 = time.time()
        results = evaluate_split(captioner, store, val_recs, cfg.val_beam_size, cfg.val_max_len)
        val_bleu = bleu4(val_refs, {k: r.words for k, r in results.items()})
        improved = val_bleu > best
        best, bad_epochs = (val_bleu, 0) if improved else (best, bad_epochs + 1)
        scheduler.step(val_bleu)
        row = {"epoch": epoch, "train_ce": round(sum_ce / max(n_words, 1), 4),
               "train_ds": round(sum_ds / max(n_batches, 1), 4), "val_bleu4": round(val_bleu, 2),
               "lr": optimizer.param_groups[0]["lr"], "train_s": round(train_time, 1),
               "val_s": round(time.time() - t1, 1), "captions_per_s": round(len(dataset) / train_time, 1)
               if not cfg.max_steps else None}
        history.append(row)
        append_metrics(cfg.out_dir, row)
        _plot(history, os.path.join(cfg.out_dir, "curves.png"))
        print(json.dumps(row) + ("  (best)" if improved else ""), flush=True)
        meta = {"train_config": asdict(cfg), "epoch": epoch, "best_score": best, "history": history,
                "bad_epochs": bad_epochs}
        if improved:
            captioner.save(best_path, **meta)
        save_checkpoint(last_path, {**captioner.state(), **meta, "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
                                    "baseline": baseline.state_dict()})
    return best_path
