"""Caption data: Karpathy-split JSON, official COCO annotations, datasets and batching.

Sources:

* Karpathy JSON (``dataset_flickr8k.json``, ``dataset_flickr30k.json``, ``dataset_coco.json``): one entry per
  image with ``filename`` (and ``filepath`` for COCO), ``split`` in train/val/test/restval, and
  ``sentences[].tokens``. ``restval`` counts as train (the Karpathy COCO split: 113,287 train images).
* Official COCO caption files (``captions_train2014.json`` ...), read with pycocotools; a Karpathy JSON, when
  given, assigns the splits by ``cocoid``.

The feature cache is :mod:`showattend.captioning.cache`.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .vocab import Vocab, tokenize
from .cache import FeatureStore

__all__ = ["CaptionRecord", "tokenize", "load_karpathy", "load_coco", "coco_file_split", "CaptionDataset", "collate_captions"]


@dataclass
class CaptionRecord:
    """One image and its reference captions.

    Attributes:
        key: relative image path inside the image folder (the cache index key).
        split: "train", "val" or "test".
        tokens: tokenised reference captions.
        raw: the untokenised captions (for the coco-caption scorers).
        image_id: dataset id (Flickr filename stem or COCO id).
    """

    key: str
    split: str
    tokens: List[List[str]]
    raw: List[str] = field(default_factory=list)
    image_id: str = ""


def load_karpathy(path: str) -> List[CaptionRecord]:
    """Read a Karpathy-format JSON file.

    Args:
        path: ``dataset_*.json``.

    Returns:
        one :class:`CaptionRecord` per image; ``restval`` images get split "train".

    Raises:
        FileNotFoundError, ValueError: missing file, or not a Karpathy JSON (message names the file).
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"caption file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: not a Karpathy-format caption file (no 'images' list)")
    records = []
    for i, img in enumerate(data["images"]):
        try:
            key = os.path.join(img.get("filepath", ""), img["filename"])
            sents = img["sentences"]
            split = "train" if img["split"] == "restval" else img["split"]
        except (KeyError, TypeError):
            raise ValueError(f"{path}: image entry {i} lacks filename/split/sentences") from None
        tokens = [s.get("tokens") or tokenize(s["raw"]) for s in sents]
        raw = [s.get("raw", " ".join(s.get("tokens", []))) for s in sents]
        image_id = str(img.get("cocoid", img.get("imgid", os.path.splitext(img["filename"])[0])))
        records.append(CaptionRecord(key, split, tokens, raw, image_id))
    return records


def coco_file_split(annotation_file: str) -> Optional[str]:
    """The split of an official COCO captions file, from its name: ``captions_train2014.json`` -> "train",
    ``captions_val2017.json`` -> "val" (``test``, too); None for a name that does not say."""
    m = re.fullmatch(r"captions_(train|val|test)\d{4}\.json", os.path.basename(annotation_file))
    return m.group(1) if m else None


def load_coco(annotation_file: str, image_folder: str = "", karpathy_json: Optional[str] = None,
              split: Optional[str] = None) -> List[CaptionRecord]:
    """Read an official COCO caption annotation file with pycocotools.

    Args:
        annotation_file: e.g. ``captions_val2017.json``.
        image_folder: prefix of the record keys (e.g. ``val2017``), joined to each image's ``file_name``.
        karpathy_json: optional ``dataset_coco.json``; its ``split`` of each ``cocoid`` is used, and images it
            does not list are dropped.
        split: the split given to every image when ``karpathy_json`` is None; None: the file's own, from its name
            (:func:`coco_file_split`: the images of ``captions_train2014.json`` are "train").

    Returns:
        one :class:`CaptionRecord` per image, sorted by image id.

    Raises:
        FileNotFoundError: no such file. ValueError: neither ``karpathy_json`` nor ``split`` given, and the file's
            name does not say its split (every image would otherwise land in one split, training images too).
    """
    from pycocotools.coco import COCO

    if not os.path.isfile(annotation_file):
        raise FileNotFoundError(f"COCO annotation file not found: {annotation_file}")
    if karpathy_json is None and split is None:
        split = coco_file_split(annotation_file)
        if split is None:
            raise ValueError(f"{annotation_file}: its name does not say which split its images belong to "
                             f"(captions_train2014.json: train, captions_val2014.json: val); pass "
                             f"--karpathy-split dataset_coco.json, or rename the file")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints timing lines
        coco = COCO(annotation_file)
    splits = None
    if karpathy_json:
        splits = {}
        with open(karpathy_json, encoding="utf-8") as f:
            for img in json.load(f)["images"]:
                splits[int(img["cocoid"])] = "train" if img["split"] == "restval" else img["split"]
    records = []
    for image_id in sorted(coco.getImgIds()):
        s = split if splits is None else splits.get(image_id)
        if s is None:
            continue
        anns = coco.imgToAnns[image_id]
        raw = [a["caption"].strip() for a in anns]
        key = os.path.join(image_folder, coco.imgs[image_id]["file_name"])
        records.append(CaptionRecord(key, s, [tokenize(r) for r in raw], raw, str(image_id)))
    return records


# ----------------------------------------------------------------------------------------------------------
# Training data


class CaptionDataset(Dataset):
    """(annotation vectors, caption ids) pairs, one per reference caption.

    Each image's features are read from the cache once per caption it appears with (or, with ``read=False``,
    once per batch by the collate function), never re-encoded. The
    captions are held in three numpy arrays (cache row per caption, all word ids end to end, offsets), not as
    Python objects: at COCO size (616,767 captions) a list of lists would take ~100 MB per process, and
    DataLoader workers would copy it page by page as reference counts change (copy-on-write).

    Args:
        records: caption records of one split.
        store: the feature cache (or an :class:`~showattend.captioning.cache.ImageStore`).
        vocab: vocabulary.
        max_len: captions longer than this many words are dropped (counted in :attr:`too_long`): cut, they would
            still end with ``<end>`` and teach the model to stop after a fragment.
        half: return the annotation vectors as stored, float16 (training casts them on the device), instead
            of float32.
        read: read each item's features (or image); False: an item holds None in their place, for a collate
            function that reads each distinct image of a batch once (an ImageStore decodes a JPEG per read, and
            an image comes with five captions).

    Raises:
        KeyError: images that are not in the cache (how many, and the first few).
    """

    def __init__(self, records: Sequence[CaptionRecord], store: FeatureStore, vocab: Vocab, max_len: int = 40,
                 half: bool = False, read: bool = True):
        missing = [r.key for r in records if r.key not in store]
        if missing:
            raise KeyError(f"{len(missing)} images are not in the feature cache, e.g. {missing[:3]}")
        self.store, self.half, self.read = store, half, read
        rows, ids, lengths = [], [], []
        self.too_long = 0  # captions dropped for their length
        for r in records:
            for tokens in r.tokens:
                if len(tokens) > max_len:
                    self.too_long += 1
                elif tokens:
                    encoded = vocab.encode(tokens)
                    rows.append(store.row[r.key])
                    ids.extend(encoded)
                    lengths.append(len(encoded))
        self.rows = np.asarray(rows, dtype=np.int64)  # (N,) cache row of each caption
        self.ids = np.asarray(ids, dtype=np.int32)  # every caption's ids, <start> .. <end>, end to end
        self.offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])  # (N + 1,)

    def __len__(self):
        return len(self.rows)

    def length(self, i: int) -> int:
        """Tokens of caption i, ``<start>`` and ``<end>`` included."""
        return int(self.offsets[i + 1] - self.offsets[i])

    @property
    def steps(self) -> np.ndarray:
        """(N,) the recurrence steps of each caption: its words and ``<end>``."""
        return np.diff(self.offsets) - 1

    def __getitem__(self, i):
        """(features (L, D) or, from an :class:`~showattend.captioning.cache.ImageStore`, the image (3, H, W);
        caption ids (n,) long; the image's row in the store)."""
        row = int(self.rows[i])
        return self.store.read(row, self.half) if self.read else None, torch.from_numpy(self.ids[self.offsets[i]:self.offsets[i + 1]]
                                                                 .astype(np.int64)), row


def collate_captions(batch, pad: int = 0):
    """Stack features and pad captions, sorted by caption length (longest first). Items are (features, ids, ...).

    Returns:
        annotations (B, L, D) (the items' dtype; None for items without features, see CaptionDataset's
        ``read``), captions (B, T) long padded with ``pad``, lengths (B,) long (including ``<start>`` and
        ``<end>``).
    """
    batch = sorted(batch, key=lambda x: len(x[1]), reverse=True)
    feats = torch.stack([b[0] for b in batch]) if batch[0][0] is not None else None  # (B, L, D)
    lengths = torch.tensor([len(b[1]) for b in batch])
    captions = torch.full((len(batch), int(lengths[0])), pad, dtype=torch.long)  # (B, T)
    for i, item in enumerate(batch):  # (features, ids, ...)
        captions[i, : len(item[1])] = item[1]
    return feats, captions, lengths
