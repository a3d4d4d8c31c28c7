#!/usr/bin/env python
"""What padding costs the recurrence, and what feeds a GPU: the figures behind ``--length-buckets``, the
DataLoader's default workers and the README's 1- and 8-GPU arithmetic.

    python scripts/batching.py [--data dataset_flickr8k.json] [--cache CACHE_DIR] [--steps 20] [--threads 1]
                               [--json figures.json]

It prints, as JSON:

* ``padded``: for Flickr8k (the training captions of ``--data``) and the COCO-size simulation (the caption
  lengths of ``scripts/coco_scale.py``, 566,435 captions), one epoch's padded fraction
  (:func:`showattend.engine.batches.padded_fraction`: row-steps past each caption's end, up to its global
  batch's longest) and mean recurrence steps per batch, shuffled and ``--length-buckets``, for global batches
  of 64 (one GPU) and 512 (8 GPUs x 64);
* ``train_coco_simulation`` (with ``--coco-steps N``): captions/s of the decoder's training step on the
  simulation's captions, shuffled and grouped, at COCO's shapes (random words and annotation vectors);
* ``train`` (with ``--cache``, a Flickr8k feature cache): captions/s of the real training step (Trainer.step:
  forward, backward, Adam) over the same ``--steps`` batches of each kind, fp32, and the ATen ops per step and
  per recurrence step counted at the dispatcher (about one GPU kernel each; views launch none);
* ``compile`` (with ``--compile``): the same for the bucketed batches with ``--compile`` (the recurrence under
  ``torch.compile``; the first timed step follows two warm-up steps);
* ``loader``: captions/s of the training DataLoader (the task's dataset, batches and collate) by worker count;
* ``allreduce_bytes``: the gradient bytes DDP all-reduces per step (fp32, every trainable parameter).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from showattend.captioning.cache import FeatureStore  # noqa: E402
from showattend.captioning.config import TrainConfig  # noqa: E402
from showattend.captioning.config import ModelConfig  # noqa: E402
from showattend.captioning.task import CaptionTask  # noqa: E402
from showattend.captioning.train import load_records  # noqa: E402
from showattend.engine import DistInfo, StepContext, Trainer  # noqa: E402
from showattend.engine.batches import bucket_batches, padded_fraction  # noqa: E402
from counters import DispatchReads  # noqa: E402  (tests/counters.py: the dispatcher counter)
from showattend.captioning.vocab import Vocab  # noqa: E402


def epoch(steps: np.ndarray, batch_size: int, bucketed: bool, seed: int = 0) -> list:
    rng = np.random.default_rng([seed, 1])
    order = rng.permutation(len(steps)).tolist()
    if bucketed:
        return bucket_batches(order, steps.tolist(), batch_size, rng.shuffle)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def padding(steps: np.ndarray) -> dict:
    out = {"captions": int(len(steps)), "mean_steps": round(float(steps.mean()), 2)}
    for batch_size in (64, 512):
        for bucketed in (False, True):
            batches = epoch(steps, batch_size, bucketed)
            out[f"batch{batch_size}_{'buckets' if bucketed else 'shuffled'}"] = {
                "padded_fraction": round(padded_fraction(batches, steps), 4),
                "steps_per_batch": round(float(np.mean([steps[b].max() for b in batches])), 2)}
    return out


def coco_steps(n_images: int = 113_287, seed: int = 0) -> np.ndarray:
    """The training captions' recurrence steps in scripts/coco_scale.py's simulation (words + <end>)."""
    rng = np.random.default_rng(seed)  # as coco_scale.make_dataset draws them
    return (np.clip(rng.poisson(2.5, (n_images, 5)) + 8, 6, 30) + 1).reshape(-1)


def make_task(data: str, cache: str, bucketed: bool) -> CaptionTask:
    store = FeatureStore(cache)
    cfg = TrainConfig(data=(data,), images="", progress=False, device="cpu", length_buckets=bucketed,
                      num_workers=0)
    records = load_records(cfg)
    train = [r for r in records if r.split == "train"]
    vocab = Vocab.build([t for r in train for t in r.tokens], cfg.min_count)
    torch.manual_seed(0)
    model_cfg = ModelConfig(encoder=store.meta["encoder"], image_size=store.meta["image_size"])
    return CaptionTask(model_cfg, cfg, train, [r for r in records if r.split == "val"][:1], store, vocab,
                       torch.device("cpu"))


def train_speed(task: CaptionTask, steps: int) -> dict:
    trainer = Trainer(task, task.cfg, DistInfo(), torch.device("cpu"))
    batches = task.epoch_batches(1)[:steps + 1]
    trainer.sampler.batches = [[(i, p) for p, i in enumerate(b)] for b in batches]
    loaded = list(trainer.loader)
    spent, ops, rec = 0.0, 0, 0
    for k, (b, batch) in enumerate(zip(batches, loaded)):
        ctx = StepContext(k, sum(task.words(i) for i in b), len(b), 1)
        if k == 1:  # one step's ops, counted apart from the timed ones (eager only: a compiled step is kernels)
            compiled = hasattr(task.decoder.recurrence, "_torchdynamo_orig_callable")
            with DispatchReads(every=True) if not compiled else contextlib.nullcontext() as c:
                trainer.step(batch, ctx)
            ops, rec = (sum(c.ops.values()) if c else 0), max(task.words(i) for i in b)
            continue
        t0 = time.perf_counter()
        trainer.step(batch, ctx)
        spent += time.perf_counter() - t0 if k else 0.0  # the first step warms up
    timed = batches[2:]
    return {"captions_per_s": round(sum(map(len, timed)) / spent, 1),
            "steps_per_batch": round(float(np.mean([max(task.words(i) for i in b) for b in timed])), 2),
            "aten_ops_per_step": ops, "aten_ops_per_recurrence_step": round(ops / rec, 1)}


def synthetic_speed(steps: np.ndarray, bucketed: bool, n_steps: int, L: int = 49, D: int = 1280,
                    V: int = 10345) -> dict:
    """captions/s of the decoder's training step (forward, backward, fused Adam; fp32) on batches of 64 of the
    given captions (random words and annotation vectors: the COCO-size simulation has no images), shuffled or
    grouped by length, the first of ``n_steps`` + 1 untimed."""
    from showattend.captioning.network import Decoder
    from showattend.captioning.losses import caption_loss

    torch.manual_seed(0)
    dec = Decoder(V, D)
    opt = torch.optim.Adam(dec.parameters(), 4e-4, fused=True)
    g = torch.Generator().manual_seed(0)
    spent, captions, recurrence = 0.0, 0, []
    for k, b in enumerate(epoch(steps, 64, bucketed)[:n_steps + 1]):
        lengths = sorted((int(steps[i]) + 1 for i in b), reverse=True)  # tokens: <start>, words, <end>
        caps = torch.randint(4, V, (len(b), lengths[0]), generator=g)
        feats = torch.randn(len(b), L, D, generator=g)
        t0 = time.perf_counter()
        loss = caption_loss(dec(feats, caps, lengths), caps)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if k:
            spent, captions = spent + time.perf_counter() - t0, captions + len(b)
            recurrence.append(lengths[0] - 1)
    return {"captions_per_s": round(captions / spent, 1), "steps_per_batch": round(float(np.mean(recurrence)), 2)}


def loader_speed(task: CaptionTask, workers: int, batches: int = 100) -> float:
    order = task.epoch_batches(1)[:batches + 1]
    loader = torch.utils.data.DataLoader(task.dataset, batch_sampler=order, num_workers=workers,
                                         collate_fn=lambda items: task.collate(items, range(len(items))))
    it = iter(loader)
    next(it)  # workers started
    t0 = time.perf_counter()
    n = sum(len(next(it).lengths) for _ in range(batches))
    return round(n / (time.perf_counter() - t0), 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("SHOWATTEND_DATA", "../shared/data") +
                    "/flickr8k/dataset_flickr8k.json", help="a Karpathy JSON (Flickr8k)")
    ap.add_argument("--cache", default="", help="that dataset's feature cache folder: measures the training step "
                                                "and the loader")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps of each kind")
    ap.add_argument("--coco-steps", type=int, default=0,
                    help="also time this many training steps of each kind on the COCO-size simulation's captions "
                         "(49 x 1280, COCO's vocabulary of 10,345 words; random inputs)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="also time the compiled step (needs a C++ compiler)")
    ap.add_argument("--json", default="", help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(data=(args.data,), images="")
    records = [r for r in load_records(cfg) if r.split == "train"]
    flickr = np.array([len(t) + 1 for r in records for t in r.tokens if t and len(t) <= cfg.max_caption_len])
    coco = coco_steps()
    out = {"padded": {"flickr8k": padding(flickr), "coco_simulation": padding(coco)}}
    if args.coco_steps:
        out["train_coco_simulation"] = {kind: synthetic_speed(coco, kind == "buckets", args.coco_steps)
                                        for kind in ("shuffled", "buckets")}
    if args.cache:
        tasks = {kind: make_task(args.data, args.cache, kind == "buckets") for kind in ("shuffled", "buckets")}
        out["train"] = {kind: train_speed(task, args.steps) for kind, task in tasks.items()}
        if args.compile:
            tasks["buckets"].compile()
            out["train"]["buckets_compiled"] = train_speed(tasks["buckets"], args.steps)
        out["loader_captions_per_s"] = {w: loader_speed(tasks["shuffled"], w) for w in (0, 1, 2)}
        dec = tasks["shuffled"].decoder
        out["allreduce_bytes"] = 4 * sum(p.numel() for p in dec.parameters() if p.requires_grad)
        out["vocab"] = len(tasks["shuffled"].vocab)
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
