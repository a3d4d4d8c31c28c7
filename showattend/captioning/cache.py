"""The feature cache: the frozen encoder's annotation vectors of every image, computed once.

The feature cache stores the frozen encoder's annotation vectors for every image once: a float16 ``.npy``
array (N, L, D) opened memory-mapped (each DataLoader worker opens its own map, so any number of workers can
read it), and an ``index.json`` naming the image of each row. It is written to ``*.partial`` files, can be
resumed after an interruption, and is renamed into place only when complete (:mod:`.cache_build`).

A cache is keyed by everything that determines its content: the encoder's fingerprint (its weights), the image
transform and size, and the list of images, each with its file size and modification time, and a content digest
(BLAKE2b) of each file taken when the cache is finished. A cache is reused only when all of these match. The
sizes and times are compared first (hashing every image at each start would be slow at COCO size); a file whose
time alone changed (a copied or re-provisioned dataset) is hashed and still serves if its content is the same,
and the cache then records the new times. An image that changed makes the cache be built again, and an
``index.json`` whose fields do not match its fingerprint is refused.
"""
from __future__ import annotations

import json
import logging
import os
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..runs import atomic_write_text
from .images import TRANSFORM, ImageError, load_image

log = logging.getLogger(__name__)

__all__ = ["FeatureStore", "ImageStore", "find_cache", "cache_meta", "image_stats", "cache_id", "file_digests",
           "changed_images"]


class FeatureStore:
    """Read-only view of a finished feature cache.

    The memory map is opened lazily in each process, so the object can be handed to DataLoader workers.

    Args:
        folder: a cache folder written by :func:`~showattend.captioning.cache_build.build_feature_cache`.

    Raises:
        FileNotFoundError: the cache is missing or incomplete.
        ValueError: the cache is inconsistent: ``index.json`` unreadable or not matching its own fingerprint
            (edited), or ``features.npy`` not of the shape it records.
    """

    def __init__(self, folder: str):
        index_path = os.path.join(folder, "index.json")
        if not os.path.isfile(index_path) or not os.path.isfile(os.path.join(folder, "features.npy")):
            raise FileNotFoundError(f"no complete feature cache in {folder} (build it with `showattend cache`)")
        fix = f"remove {folder} and it is built again"
        try:
            with open(index_path, encoding="utf-8") as f:
                self.meta = json.load(f)
            keys = self.meta["keys"]
            shape = np.load(os.path.join(folder, "features.npy"), mmap_mode="r").shape
        except (ValueError, KeyError, TypeError, OSError) as err:
            raise ValueError(f"{folder}: corrupt feature cache ({type(err).__name__}: {err}); {fix}") from None
        if "id" in self.meta and self.meta["id"] != cache_id(self.meta.get("encoder_fingerprint", ""),
                                                             self.meta.get("image_size"), keys,
                                                             self.meta.get("image_folder", "")):
            raise ValueError(f"{index_path} does not match its own fingerprint (edited or corrupt); {fix}")
        if len(shape) != 3 or shape[0] != len(keys) or any(self.meta.get(k, n) != n for k, n in
                                                             zip("LD", shape[1:])):
            raise ValueError(f"{folder}: features.npy has shape {tuple(shape)}, but index.json lists {len(keys)} "
                             f"images of L={self.meta.get('L')}, D={self.meta.get('D')}: corrupt; {fix}")
        self.folder = folder
        self.row = {k: i for i, k in enumerate(keys)}
        self._array = None

    @property
    def array(self) -> np.ndarray:
        """(N, L, D) float16 memory map."""
        if self._array is None:
            self._array = np.load(os.path.join(self.folder, "features.npy"), mmap_mode="r")
        return self._array

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_array"] = None  # never pickle the map into workers
        return state

    def __contains__(self, key: str) -> bool:
        return key in self.row

    def read(self, row: int, half: bool = False) -> torch.Tensor:
        """(L, D) row ``row``, float16 as stored or float32 (what :class:`~showattend.captioning.data.
        CaptionDataset` reads)."""
        return torch.from_numpy(np.array(self.array[row], dtype=np.float16 if half else np.float32))


class ImageStore:
    """The images themselves, in the place of a feature cache (``showattend train --from-images``): row i is
    image ``keys[i]`` decoded and resized (Pillow, EXIF orientation applied), for the whole encoder to run on
    in every training step.

    Args:
        folder: the image folder; keys: image paths relative to it; size: the encoder's input side in pixels.

    Raises:
        ImageError: images are missing (checked here, before training starts).
    """

    def __init__(self, folder: str, keys: Sequence[str], size: int):
        image_stats(folder, keys)
        self.folder, self.keys, self.size = folder, list(keys), size
        self.row = {k: i for i, k in enumerate(self.keys)}

    def __contains__(self, key: str) -> bool:
        return key in self.row

    def read(self, row: int, half: bool = False) -> torch.Tensor:
        """(3, size, size) float32 RGB in [0, 1] (``half`` is ignored: pixels are not cached)."""
        return load_image(os.path.join(self.folder, self.keys[row]), self.size)


def image_stats(folder: str, keys: Sequence[str]) -> List[List[int]]:
    """[size in bytes, modification time in ns] of each image file: what a cache row was made from.

    Raises:
        ImageError: images are missing (how many, and the first few by name).
    """
    stats, missing = [], []
    for k in keys:
        try:
            st = os.stat(os.path.join(folder, k))
            stats.append([st.st_size, st.st_mtime_ns])
        except OSError:
            missing.append(k)
    if missing:
        raise ImageError(f"{len(missing)} of {len(keys)} images are missing under {folder}: "
                         f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}")
    return stats


def file_digests(folder: str, keys: Sequence[str]) -> List[str]:
    """BLAKE2b (128-bit, hex) of each image file's bytes: what identifies a file whose modification time changed
    (about 1 s per GB read).

    Raises:
        OSError: a file cannot be read.
    """
    import hashlib

    out = []
    for k in keys:
        h = hashlib.blake2b(digest_size=16)
        with open(os.path.join(folder, k), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out.append(h.hexdigest())
    return out


def changed_images(meta: dict, image_folder: str, keys: Sequence[str], stats: Sequence) -> List[str]:
    """The images of ``keys`` that a cache (its ``index.json`` ``meta``) was not made from: absent from it, or
    of another size, or of another modification time and (when the cache records digests) other bytes.

    Files whose time alone changed are hashed here, and when none of ``keys`` changed, ``meta["stats"]`` takes
    their new times (the caller may save it, so they are not hashed again).

    Args:
        stats: :func:`image_stats` of ``keys`` under ``image_folder``.
    """
    row = {k: i for i, k in enumerate(meta["keys"])}
    digests = meta.get("digests")
    changed, retimed = [], []
    for k, st in zip(keys, stats):
        i = row.get(k)
        if i is None or list(meta["stats"][i]) != list(st):
            (retimed if i is not None and digests and meta["stats"][i][0] == st[0] else changed).append((k, i, st))
    if retimed:
        log.info(f"{len(retimed)} images have new modification times since the cache was built; comparing "
                 f"their content")
        now = file_digests(image_folder, [k for k, _, _ in retimed])
        changed += [r for r, d in zip(retimed, now) if d != digests[r[1]]]
    if not changed:
        for _, i, st in retimed:
            meta["stats"][i] = list(st)
    return [k for k, _, _ in changed]


def cache_id(encoder_fingerprint: str, image_size: Optional[int], keys: Sequence[str], image_folder: str = "") -> str:
    """SHA-256 (hex) of what a cache folder is built for: the encoder's fingerprint, the transform, the image
    size, the image folder and the image list. (The files' sizes and times are checked separately: a changed
    image re-encodes its cache, and a cache serves any folder holding the same files, e.g. one moved with them.)"""
    import hashlib

    h = hashlib.sha256(json.dumps([encoder_fingerprint, TRANSFORM, image_size, image_folder]).encode())
    h.update("\n".join(keys).encode())
    return h.hexdigest()


def cache_meta(encoder, image_folder: str, keys: Sequence[str], image_size: Optional[int] = None) -> dict:
    """The ``index.json`` of a cache of ``keys`` (without L and D): what identifies it and what it was made from.

    Raises:
        ImageError: images are missing.
    """
    size = image_size or encoder.spec.image_size
    fingerprint, folder = encoder.fingerprint(), os.path.realpath(image_folder)
    return {"encoder": encoder.spec.name, "encoder_fingerprint": fingerprint, "transform": TRANSFORM,
            "image_size": size, "image_folder": folder, "id": cache_id(fingerprint, size, keys, folder),
            "keys": list(keys), "stats": image_stats(image_folder, keys)}


def _stats_hash(stats: Sequence) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(list(stats)).encode()).hexdigest()


def find_cache(cache_dir: str, encoder_fingerprint: str, image_size: int, keys: Sequence[str],
               stats: Sequence, prefer: str = "", image_folder: str = "") -> Optional[FeatureStore]:
    """A finished cache under ``cache_dir`` that holds every image of ``keys``, made by the same encoder weights,
    transform and size from the same files (equal sizes and modification times, or equal content: see
    :func:`changed_images`); None if there is none.

    A cache of more images serves too (``evaluate`` on one split reuses the training cache). Caches that are
    inconsistent, or made by an older showattend without a fingerprint, are never used. A cache found through
    its digests saves the files' new times in its ``index.json``; one made before digests were recorded gains
    them (the files are hashed once).

    Args:
        stats: :func:`image_stats` of ``keys``; image_folder: where they are (to hash files whose time changed).
        prefer: the folder to look at first (the one this request would build).
    """
    if not os.path.isdir(cache_dir):
        return None
    folders = [os.path.join(cache_dir, f) for f in sorted(os.listdir(cache_dir))]
    for folder in sorted(folders, key=lambda f: f != prefer):
        try:
            with open(os.path.join(folder, "index.json"), encoding="utf-8") as f:
                meta = json.load(f)
            if (meta.get("encoder_fingerprint"), meta.get("image_size"), meta.get("transform")) != \
                    (encoder_fingerprint, image_size, TRANSFORM):
                continue
            store = FeatureStore(folder)
            if _changed_since(folder, store.meta, image_folder, keys, stats):
                continue
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue
        return store
    return None


def _changed_since(folder: str, meta: dict, image_folder: str, keys: Sequence[str], stats: Sequence,
                   save: bool = True) -> List[str]:
    """:func:`changed_images` of the cache in ``folder``; when none changed and ``save``, its ``index.json``
    records the files' new times and, for a cache made before digests were recorded, their digests (``meta`` is
    updated in place)."""
    before = json.dumps(meta["stats"])
    changed = changed_images(meta, image_folder, keys, stats)
    if not changed and save and (json.dumps(meta["stats"]) != before or "digests" not in meta):
        if "digests" not in meta:
            log.info(f"{folder}: recording the content digests of its {len(meta['keys']):,} images")
            meta["digests"] = file_digests(image_folder, meta["keys"])
        _save_index(folder, meta)
    return changed


def _save_index(folder: str, meta: dict) -> None:
    """Write a cache's ``index.json`` again with new times or digests; a cache on a read-only disk still serves
    (a warning: the files will be compared again next time)."""
    try:
        atomic_write_text(os.path.join(folder, "index.json"), json.dumps(meta))
    except OSError as err:
        log.warning(f"{folder}: could not record the images' new times or digests ({err}); they will be compared "
                    f"again next time")
