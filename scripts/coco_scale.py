#!/usr/bin/env python
"""COCO at full size, simulated: does the training path hold 123,287 images without a GPU or the images?

    python scripts/coco_scale.py --out /tmp/coco_scale [--images 123287] [--fill] [--steps 30] [--threads 1]
                                 [--json figures.json] [--keep]

It writes, under ``--out``:

* ``dataset_coco.json``: a Karpathy-format file of ``--images`` images x 5 captions with COCO's shape: the
  Karpathy split (113,287 train with restval, 5,000 val, 5,000 test at full size), caption lengths of
  mean ~10.5 words, words drawn from a Zipf law over 20,000 types (about 10,000 of them reach the
  vocabulary's min count of 5, as COCO's 9,487 do);
* ``images/``: an empty file per image (the cache is keyed by the files' sizes and times, and is looked up as a
  real run does);
* ``cache/``: a feature cache of that size in showattend's own format (float16 49 x 1280, EfficientNet-Lite0:
  15.5 GB at full size), created sparse (the disk holds only what is written) and, with ``--fill``, filled
  with random values (written in chunks; this takes the disk's write time).

Then it measures, and prints as JSON:

* ``load_records_s`` and ``build_vocab_s``: reading the JSON into records and counting the vocabulary;
* ``loader_captions_per_s``: DataLoader throughput (batch 64, shuffled, the training dataset and collate)
  with 0 and 2 workers, against ``train_captions_per_s``, the decoder's own training step on the same batches
  (fp32 and bf16, 1 thread each);
* ``training_run``: the peak anonymous memory of a real ``showattend train`` run of ``--steps`` steps with 2
  DataLoader workers: ``RssAnon`` of the main process and ``Pss_Anon`` summed over it and its workers (pages the
  forked workers share with it counted once). Anonymous memory excludes the memory-mapped cache's pages, which
  the kernel can drop at any time;
* ``epoch_hours``: one epoch at the measured training throughput, extrapolated.

Everything under ``--out`` is removed at the end unless ``--keep``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from showattend.captioning.cache import FeatureStore, cache_meta  # noqa: E402
from showattend.captioning.cache_build import check_disk  # noqa: E402
from showattend.captioning.data import CaptionDataset, collate_captions  # noqa: E402
from showattend.captioning.network import Decoder  # noqa: E402
from showattend.captioning.losses import caption_loss  # noqa: E402
from showattend.captioning.encoders import Encoder  # noqa: E402
from showattend.captioning.train import TrainConfig, load_records  # noqa: E402
from showattend.captioning.vocab import Vocab  # noqa: E402

COCO_IMAGES, VAL, TEST = 123_287, 5_000, 5_000


def make_dataset(out: str, n: int, seed: int = 0) -> list:
    """Write the Karpathy-format JSON and one empty file per image; returns the image keys."""
    rng = np.random.default_rng(seed)
    types = 20_000  # word k has probability ∝ 1 / (k + 2.7)^1.5: ~10,400 words reach 5 uses at full size
    words = np.array([f"w{i}" for i in range(types)])
    p = 1.0 / (np.arange(types) + 2.7) ** 1.5
    n_val, n_test = (VAL, TEST) if n == COCO_IMAGES else (max(1, n * VAL // COCO_IMAGES),) * 2
    lengths = np.clip(rng.poisson(2.5, (n, 5)) + 8, 6, 30)  # mean ~10.5 words
    tokens, k, images, keys = words[rng.choice(types, int(lengths.sum()), p=p / p.sum())], 0, [], []
    for i in range(n):
        split = "val" if i < n_val else "test" if i < n_val + n_test else "restval" if i % 4 == 0 else "train"
        folder = "val2014" if split in ("val", "test", "restval") else "train2014"
        name = f"COCO_{folder}_{i:012d}.jpg"
        sents = []
        for length in lengths[i]:
            sents.append({"tokens": tokens[k:k + length].tolist()})
            k += int(length)
        images.append({"filepath": folder, "filename": name, "split": split, "cocoid": i, "sentences": sents})
        keys.append(f"{folder}/{name}")
    with open(os.path.join(out, "dataset_coco.json"), "w") as fh:
        json.dump({"dataset": "coco", "images": images}, fh)
    for folder in ("train2014", "val2014"):
        os.makedirs(os.path.join(out, "images", folder), exist_ok=True)
    for key in keys:
        open(os.path.join(out, "images", key), "wb").close()
    return sorted(keys)


def make_cache(out: str, keys: list, fill: bool) -> tuple:
    """A feature cache in showattend's format for ``keys``; returns (folder, seconds spent filling)."""
    encoder = Encoder("efficientnet_lite0")
    meta = cache_meta(encoder, os.path.join(out, "images"), keys, 224)
    folder = os.path.join(out, "cache", f"coco-efficientnet_lite0-224-{meta['id'][:12]}")
    os.makedirs(folder, exist_ok=True)
    shape = (len(keys), 49, 1280)
    check_disk(folder, shape)  # logs the size; refuses when the disk is too small even for a full fill
    arr = np.lib.format.open_memmap(os.path.join(folder, "features.npy"), mode="w+", dtype=np.float16, shape=shape)
    t0 = time.perf_counter()
    if fill:
        rng = np.random.default_rng(0)
        chunk = rng.standard_normal((256, 49, 1280)).astype(np.float16)
        for a in range(0, len(keys), 256):
            arr[a:a + 256] = chunk[: min(256, len(keys) - a)]
            if a % (256 * 64) == 0:
                arr.flush()
    arr.flush()
    del arr
    meta.update(L=49, D=1280)
    with open(os.path.join(folder, "index.json"), "w") as fh:
        json.dump(meta, fh)
    return folder, time.perf_counter() - t0


def anon_kb(pid: int) -> tuple:
    """(RssAnon of the process, Pss_Anon summed over it and its descendants) in kB. Pss counts a page that
    forked DataLoader workers share with their parent once in all (RssAnon would count it in each)."""
    main, total, todo = 0, 0, [pid]
    while todo:
        p = todo.pop()
        try:
            if p == pid:
                with open(f"/proc/{p}/status") as fh:
                    main = next(int(line.split()[1]) for line in fh if line.startswith("RssAnon"))
            with open(f"/proc/{p}/smaps_rollup") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("Pss_Anon"))
            with open(f"/proc/{p}/task/{p}/children") as fh:
                todo += [int(c) for c in fh.read().split()]
        except (OSError, StopIteration):
            continue
    return main, total


def loader_throughput(dataset, workers: int, batches: int) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, num_workers=workers,
                                         collate_fn=collate_captions, generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    next(it)  # workers started
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return 64 * batches / (time.perf_counter() - t0)


def train_throughput(dataset, vocab_size: int, precision: str, steps: int) -> float:
    torch.manual_seed(0)
    dec = Decoder(vocab_size, 1280)
    opt = torch.optim.Adam(dec.parameters(), 4e-4, fused=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, collate_fn=collate_captions,
                                         generator=torch.Generator().manual_seed(1))
    batches = [b for b, _ in zip(loader, range(steps + 1))]
    spent = 0.0
    for i, (f, caps, lengths) in enumerate(batches):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = caption_loss(dec(f.float(), caps, lengths.tolist()), caps)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        spent += (time.perf_counter() - t0) if i else 0.0  # the first step warms up
    return 64 * steps / spent


def run_training(out: str, steps: int, threads: int) -> dict:
    """A real `showattend train` of ``steps`` steps with 2 workers; its peak RssAnon (process tree)."""
    cmd = [sys.executable, "-m", "showattend", "--threads", str(threads), "train",
           "--data", os.path.join(out, "dataset_coco.json"), "--images", os.path.join(out, "images"),
           "--cache-dir", os.path.join(out, "cache"), "--out-dir", os.path.join(out, "run"), "--overwrite",
           "--epochs", "1", "--max-steps", str(steps), "--val-images", "20", "--num-workers", "2", "--no-progress",
           "--log-every", str(max(1, steps // 3))]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    samples = []

    def watch():
        while proc.poll() is None:
            samples.append(anon_kb(proc.pid))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    log = proc.communicate()[0]
    watcher.join()
    if proc.returncode:
        raise SystemExit(f"showattend train failed ({proc.returncode}):\n{log[-3000:]}")
    mb = lambda xs: round(max(xs) / 1024, 1)  # noqa: E731
    late = samples[len(samples) // 2:]  # the second half of the run: training steps, not loading the records
    return {"main_rss_anon_peak_mb": mb([a for a, _ in samples]), "tree_pss_anon_peak_mb": mb([b for _, b in samples]),
            "main_rss_anon_second_half_mb": mb([a for a, _ in late]),
            "tree_pss_anon_second_half_mb": mb([b for _, b in late]), "wall_s": round(time.perf_counter() - t0, 1),
            "log_tail": log.strip().splitlines()[-4:]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="working folder (made; removed at the end unless --keep)")
    ap.add_argument("--images", type=int, default=COCO_IMAGES, help="images (123,287: COCO's Karpathy split)")
    ap.add_argument("--fill", action="store_true", help="write random values into the whole cache")
    ap.add_argument("--steps", type=int, default=30, help="steps of the real training run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    res = {"images": args.images}
    t0 = time.perf_counter()
    keys = make_dataset(args.out, args.images)
    res["make_dataset_s"] = round(time.perf_counter() - t0, 1)
    folder, fill_s = make_cache(args.out, keys, args.fill)
    res.update(cache_gb=round(os.path.getsize(os.path.join(folder, "features.npy")) / 1e9, 2),
               cache_on_disk_gb=round(os.stat(os.path.join(folder, "features.npy")).st_blocks * 512 / 1e9, 2),
               fill_s=round(fill_s, 1) if args.fill else None)
    print(json.dumps(res), flush=True)

    cfg = TrainConfig(data=(os.path.join(args.out, "dataset_coco.json"),), images=os.path.join(args.out, "images"))
    t0 = time.perf_counter()
    records = load_records(cfg)
    res["load_records_s"] = round(time.perf_counter() - t0, 1)
    train = [r for r in records if r.split == "train"]
    t0 = time.perf_counter()
    vocab = Vocab.build([t for r in train for t in r.tokens], 5)
    res.update(build_vocab_s=round(time.perf_counter() - t0, 1), vocabulary=len(vocab), train_images=len(train),
               train_captions=sum(len(r.tokens) for r in train))
    dataset = CaptionDataset(train, FeatureStore(folder), vocab, half=True)
    res["loader_captions_per_s"] = {w: round(loader_throughput(dataset, w, 60), 1) for w in (0, 2)}
    res["train_captions_per_s"] = {p: round(train_throughput(dataset, len(vocab), p, 8), 1) for p in ("fp32", "bf16")}
    steps = -(-res["train_captions"] // 64)
    res["steps_per_epoch_batch64"] = steps
    res["epoch_hours"] = {p: round(res["train_captions"] / v / 3600, 2) for p, v in res["train_captions_per_s"].items()}
    print(json.dumps(res), flush=True)
    res["training_run"] = run_training(args.out, args.steps, args.threads)
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    if not args.keep:
        shutil.rmtree(args.out)


if __name__ == "__main__":
    main()
