#!/usr/bin/env python
"""Write a synthetic captioning dataset: a Karpathy-format JSON and a ready feature cache (fp16 memmap).

    python scripts/synthetic_data.py OUT_DIR [--train N] [--val N] [--L 49] [--D 1280] [--vocab 2500]

Captions are random words (Zipf-distributed, 8-16 words) and the features are random: the data is for
measuring speed and exercising the training path at a chosen size (e.g. on a GPU machine without the real
images), not for learning anything. The images are empty placeholder files (a cache records each image's size
and modification time); ``showattend train --data OUT_DIR/dataset_synthetic.json --images OUT_DIR/images
--cache-dir OUT_DIR/cache`` then finds the feature cache and encodes no images.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from showattend.captioning.cache import cache_meta
from showattend.captioning.encoders import Encoder


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--L", type=int, default=49)
    ap.add_argument("--D", type=int, default=1280, help="1280 = EfficientNet-Lite0, the default encoder")
    ap.add_argument("--vocab", type=int, default=2500)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    words = [f"w{i}" for i in range(a.vocab)]
    p = 1.0 / np.arange(1, a.vocab + 1)
    p /= p.sum()
    n = a.train + a.val
    images = []
    for i in range(n):
        sents = [{"tokens": list(rng.choice(words, size=int(rng.integers(8, 17)), p=p))} for _ in range(5)]
        images.append({"filename": f"{i}.jpg", "imgid": i, "split": "train" if i < a.train else "val",
                       "sentences": sents})
    os.makedirs(a.out_dir, exist_ok=True)
    with open(os.path.join(a.out_dir, "dataset_synthetic.json"), "w") as f:
        json.dump({"images": images}, f)
    keys = sorted(im["filename"] for im in images)
    image_dir = os.path.join(a.out_dir, "images")  # placeholders: the cache records each file's size and time
    os.makedirs(image_dir, exist_ok=True)
    for k in keys:
        open(os.path.join(image_dir, k), "ab").close()
    meta = cache_meta(Encoder("efficientnet_lite0"), image_dir, keys, 224)
    meta.update(L=a.L, D=a.D)
    cache = os.path.join(a.out_dir, "cache", f"synthetic-efficientnet_lite0-224-{meta['id'][:12]}")
    os.makedirs(cache, exist_ok=True)
    arr = np.lib.format.open_memmap(os.path.join(cache, "features.npy"), mode="w+", dtype=np.float16,
                                    shape=(n, a.L, a.D))
    for i in range(0, n, 500):
        arr[i:i + 500] = rng.standard_normal((min(500, n - i), a.L, a.D), dtype=np.float32).astype(np.float16)
    arr.flush()
    with open(os.path.join(cache, "index.json"), "w") as f:
        json.dump(meta, f)
    print(f"{n} images x 5 captions, features {n}x{a.L}x{a.D} fp16 in {cache}")


if __name__ == "__main__":
    main()
