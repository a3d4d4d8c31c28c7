"""Training a captioner: its settings, its data, and the run of the one training engine.

What is prepared here (the settings, :class:`~showattend.captioning.config.TrainConfig`, are in
:mod:`showattend.captioning.config`): the caption records (Karpathy or COCO files), the
feature cache (or the images, ``--from-images``) and the vocabulary; the step, the loss and the validation are
the captioning task's (:mod:`showattend.captioning.task`). The loop, devices, precision, DDP, resume, budgets and
logs are :mod:`showattend.engine`'s.
"""
from __future__ import annotations

import gc
import logging
import os
import random
from typing import List, NamedTuple, Optional

import numpy as np
import torch

from ..checkpoint import load_checkpoint, load_weights
from ..engine import (DistInfo, SettingsError, Trainer, check_out_dir, check_resume_settings,
                      differing_options,
                      resolve_precision, setup_distributed)
from .vocab import Vocab
from .config import DataConfig, ModelConfig, TrainConfig
from .cache import FeatureStore, ImageStore, cache_meta, find_cache
from .cache_build import build_feature_cache
from .data import CaptionRecord, load_coco, load_karpathy
from .encoders import Encoder
from .captioner import CHECKPOINT_KIND, checkpoint_config
from .scst import SelfCritical
from .task import CaptionTask, Likelihood

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "load_records", "prepare_cache", "init_checkpoint", "train"]


def load_records(cfg: DataConfig) -> List[CaptionRecord]:
    """The caption records of every file of ``cfg.data``: Karpathy JSONs, or official COCO annotation files read
    with pycocotools (each file's images under the folder named like its split, ``images/train2014``, when that
    folder exists; with ``cfg.karpathy_split``, every image the split file assigns is kept, from whichever file
    holds it). An image listed twice keeps its first record.

    Raises:
        FileNotFoundError: no such file. ValueError: a folder, or not a caption file (named).
    """
    records, seen = [], set()
    for path in cfg.data:
        for r in _load_caption_file(path, cfg):
            if r.key not in seen:
                seen.add(r.key)
                records.append(r)
    return records


def _load_caption_file(path: str, cfg: DataConfig) -> List[CaptionRecord]:
    if os.path.isdir(path):
        raise ValueError(f"{path}: a folder, not a Karpathy JSON or COCO captions file (--data)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"caption file not found: {path} (--data)")
    with open(path, encoding="utf-8") as f:
        head = f.read(4096)
    name = os.path.basename(path)
    if '"annotations"' in head or "annotations" in name or name.startswith("captions_"):
        split_folder = os.path.splitext(name)[0].replace("captions_", "")  # captions_train2014.json: train2014
        prefix = split_folder if os.path.isdir(os.path.join(cfg.images, split_folder)) else ""
        return load_coco(path, prefix, cfg.karpathy_split or None)
    return load_karpathy(path)


def prepare_cache(cfg: DataConfig, model_cfg: ModelConfig, records: List[CaptionRecord],
                  device: Optional[torch.device] = None, dist_info: DistInfo = DistInfo(),
                  batch_size: int = 32, progress: bool = True) -> FeatureStore:
    """Reuse, resume or build the feature cache of every image in ``records``; under torchrun every process
    calls this and encodes its share (see :func:`~showattend.captioning.cache_build.build_feature_cache`).

    With ``model_cfg.fine_tune_blocks`` N > 0 the cache holds the activations below the top N blocks (the frozen
    trunk's, :meth:`~showattend.captioning.encoders.Encoder.trunk`), which training then runs through the top
    blocks. A finished cache under ``cfg.cache_dir`` is reused when it holds all these images, made from the same
    files (sizes and modification times, or content digests) by the same encoder weights, transform and size;
    otherwise the cache is built in ``{dataset}-{encoder}-{size}-{id}``, ``id`` the start of
    :func:`~showattend.captioning.cache.cache_id`. ``batch_size`` images go through the encoder at once;
    ``progress``: a progress bar.

    Raises:
        ImageError: images are missing under ``cfg.images`` (checked before anything is encoded), or unreadable.
    """
    encoder = Encoder(model_cfg.encoder, weights=model_cfg.encoder_weights,
                      fine_tune_blocks=model_cfg.fine_tune_blocks)
    keys = sorted({r.key for r in records})
    meta = cache_meta(encoder, cfg.images, keys, model_cfg.image_size)  # the files' stats, read once
    name = "+".join(os.path.splitext(os.path.basename(p))[0].replace("dataset_", "") for p in cfg.data)
    trunk = f"-trunk{encoder.split}" if model_cfg.fine_tune_blocks else ""
    folder = os.path.join(cfg.cache_dir,
                          f"{name}-{model_cfg.encoder}{trunk}-{model_cfg.image_size}-{meta['id'][:12]}")
    store = find_cache(cfg.cache_dir, meta["encoder_fingerprint"], model_cfg.image_size, keys, meta["stats"],
                       prefer=folder, image_folder=cfg.images)
    if store is not None:
        return store
    return build_feature_cache(encoder, cfg.images, keys, folder, batch_size=batch_size,
                               device=str(device or "cpu"), progress=progress, rank=dist_info.rank,
                               world=dist_info.world, image_size=model_cfg.image_size, meta=meta)


def init_checkpoint(init: str):
    """The checkpoint a run starts from (``--init``): a file, or a bundled captioner's name.

    Returns:
        (path, checkpoint dict, ModelConfig, Vocab).

    Raises:
        FileNotFoundError: neither a file nor a bundled captioner (named). CheckpointError: not a captioner.
    """
    from ..pretrained import get_model, weights_file

    path = init
    if not os.path.isfile(init):
        try:
            get_model(init, "captioning")
        except ValueError as err:
            raise FileNotFoundError(f"--init {init}: no such checkpoint file, and {err}") from None
        path = str(weights_file(init, "captioning"))
    ckpt = load_checkpoint(path, CHECKPOINT_KIND, required=("config", "vocab", "model"))
    return (path, ckpt, *checkpoint_config(ckpt, path))


def check_same_model(model_cfg: ModelConfig, init_cfg: ModelConfig, init: str, resume: bool = False) -> None:
    """Raises SettingsError (a ValueError): the model options given differ from the architecture of the --init
    checkpoint (``init``, as the user named it), or with ``resume`` from the run's own (``init`` is then its
    last.pt; dropout counts too, since a resumed run goes on with its model as it was)."""
    differ = differing_options(model_cfg, init_cfg, skip=() if resume else ("dropout",))
    if differ and resume:
        raise SettingsError(f"--resume continues the model of {init}; these model options differ from it: "
                            f"{'; '.join(differ)}. Start a new run (another --out-dir, or --init from its "
                            f"best.pt) to change them")
    if differ:
        raise SettingsError(f"--init {init} fixes the model's settings; these options differ: {'; '.join(differ)}")


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(model_cfg: ModelConfig, cfg: TrainConfig, resume: bool = False,
          overwrite: bool = False) -> str:
    """Train a captioner with the engine; returns the path of ``best.pt``.

    Under ``torchrun`` every process runs this, and each encodes its share of a missing feature cache.

    Args:
        model_cfg: architecture (taken from the checkpoint when resuming).
        cfg: training settings.
        resume: continue from ``out_dir/last.pt`` exactly where it was saved.
        overwrite: a new run may replace the run files already in ``out_dir``.

    Raises:
        FileNotFoundError: missing data; CheckpointError: ``resume`` without a usable ``last.pt``.
        ValueError: a bad setting (checked before any long work); SettingsError: settings that do not go together.
    """
    cfg.validate()
    resume = check_out_dir(cfg.out_dir, resume, overwrite)
    dist_info, device = setup_distributed(cfg.device)
    resolve_precision(cfg.precision, device)
    start = _start(cfg, model_cfg, resume)  # settings that cannot go together are refused before the data
    model_cfg = start.model_cfg
    records = load_records(cfg)
    train_recs, val_recs = _splits(cfg, records)
    if cfg.from_images:
        store = ImageStore(cfg.images, sorted({r.key for r in records}), model_cfg.image_size)
    else:
        store = prepare_cache(cfg, model_cfg, records, device, dist_info, progress=cfg.progress)
    vocab = start.vocab or Vocab.build([t for r in train_recs for t in r.tokens], cfg.min_count)  # train split
    _seed_all(cfg.seed)  # here, so the initial weights do not depend on whether the cache had to be built
    task = CaptionTask(model_cfg, cfg, train_recs, val_recs, store, vocab, device,
                       objective=SelfCritical if cfg.scst else Likelihood)
    if start.weights is not None:
        load_weights(task.decoder, start.weights["model"], start.path, "decoder")  # fp16 exports load as fp32
        if model_cfg.fine_tune_blocks:
            task.encoder.load_top_state_dict(start.weights.get("encoder"), start.path)
    if dist_info.main:
        _log_start(cfg, task, start, len(train_recs), len(val_recs), vocab, device, dist_info)
    # The dataset holds the training captions as arrays. Drop the records (at COCO size ~1 GB of Python objects)
    # and keep the garbage collector off what is left, so that forked DataLoader workers do not copy it page by
    # page (copy-on-write) as the collector walks it.
    del records, train_recs
    gc.collect()
    gc.freeze()
    # from --init, the starting model's validation score is the one to beat (and best.pt holds it until then)
    return Trainer(task, cfg, dist_info, device, start.resumed, validate_start=start.init).fit()


class _Start(NamedTuple):
    """Where a run starts: ``resumed`` its own ``last.pt`` (loaded) or None; ``weights`` the checkpoint whose
    weights it starts from (``last.pt`` or ``--init``'s) and its ``path``; ``init``: from ``--init``; its model
    settings and vocabulary (None: built from the data)."""

    resumed: Optional[dict]
    weights: Optional[dict]
    path: str
    init: bool
    model_cfg: ModelConfig
    vocab: Optional[Vocab]


def _start(cfg: TrainConfig, model_cfg: ModelConfig, resume: bool) -> _Start:
    """Read ``last.pt`` (``--resume``) or ``--init``'s checkpoint and check the settings against it, before any
    data or cache work.

    Raises:
        SettingsError: options that differ from the run resumed or the model started from, or that do not go
            together; CheckpointError: an unusable checkpoint.
    """
    last = os.path.join(cfg.out_dir, "last.pt")
    if resume:
        ckpt = load_checkpoint(last, CHECKPOINT_KIND, required=("config", "vocab", "model"))
        saved_cfg, vocab = checkpoint_config(ckpt, last)
        check_same_model(model_cfg, saved_cfg, f"{last}", resume=True)
        check_resume_settings(ckpt, cfg, CaptionTask)
        start = _Start(ckpt, ckpt, last, False, saved_cfg, vocab)
    elif cfg.init:
        path, ckpt, init_cfg, vocab = init_checkpoint(cfg.init)
        check_same_model(model_cfg, init_cfg, cfg.init)
        start = _Start(None, ckpt, path, True, init_cfg, vocab)
    else:
        start = _Start(None, None, "", False, model_cfg, None)
    m = start.model_cfg
    if cfg.length_buckets and (m.fine_tune_blocks or cfg.from_images or cfg.scst):
        raise SettingsError("--length-buckets groups captions read from a feature cache; with --fine-tune-blocks or "
                            "--from-images a batch holds whole images with their captions, and SCST's batches hold "
                            "images")
    return start


def _splits(cfg: TrainConfig, records: List[CaptionRecord]):
    """The training and validation records (``--val-images``: the first N of the validation split).

    Raises:
        ValueError: either is empty."""
    train_recs = [r for r in records if r.split == "train"]
    val_recs = [r for r in records if r.split == "val"]
    if cfg.val_images:
        val_recs = val_recs[: cfg.val_images]
    if not train_recs or not val_recs:
        raise ValueError(f"{' '.join(cfg.data)}: needs train and val images, found {len(train_recs)} and "
                         f"{len(val_recs)}")
    return train_recs, val_recs


def _log_start(cfg, task, start: _Start, n_train: int, n_val: int, vocab, device, dist_info) -> None:
    too_long = getattr(task.objective, "references", task.dataset).too_long
    if too_long:
        log.warning(f"dropped {too_long} training captions longer than --max-caption-len {cfg.max_caption_len} "
                    f"words")
    source = f"from {start.path}" if start.init else f"min count {cfg.min_count}, train split"
    items = f"{cfg.scst_samples} samples each" if cfg.scst else f"{len(task.dataset)} captions"
    log.info(f"train: {n_train} images, {items}; val: {n_val} images; vocabulary {len(vocab)} words ({source}); "
             f"device {device}{f' x {dist_info.world} processes' if dist_info.world > 1 else ''}; precision "
             f"{'bf16' if resolve_precision(cfg.precision, device) else 'fp32'}")
