import json
import os

import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
ASSETS = os.path.join(ROOT, "assets")


def shared_path(*parts):
    """Path under ../shared/data, or skip the test when it is absent (e.g. on a user's machine)."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"shared data not available: {path}")
    return path


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def write_toy_images(root, n=9, splits=(6, 8), size=64):
    """A toy captioning dataset under ``root``: ``dataset_toy.json`` (Karpathy format) and ``images/{i}.jpg``,
    coloured squares on white with two captions each; images [0, splits[0]) are train, [splits[0], splits[1])
    val, the rest test."""
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        colour = list(COLOURS)[i % 3]
        arr = np.full((size, size, 3), 255, np.uint8)
        arr[size // 4:3 * size // 4, size // 4:3 * size // 4] = COLOURS[colour]
        arr = np.clip(arr + rng.integers(-10, 10, arr.shape), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(root / "images" / f"{i}.jpg")
        split = "train" if i < splits[0] else ("val" if i < splits[1] else "test")
        sents = [{"raw": f"A {colour} square.", "tokens": ["a", colour, "square"]},
                 {"raw": f"A {colour} box on white.", "tokens": ["a", colour, "box", "on", "white"]}]
        images.append({"filename": f"{i}.jpg", "split": split, "imgid": i, "sentences": sents})
    (root / "dataset_toy.json").write_text(json.dumps({"images": images}))
    return root
