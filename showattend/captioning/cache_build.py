"""Building the feature cache (:mod:`.cache`): every image encoded once, written to a memory-mapped partial
array that survives an interruption, renamed into place when complete; shared among the processes of a
distributed run."""
from __future__ import annotations

import json
import logging
import os
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..faults import kill_if_reached
from ..runs import atomic_write_text
from .cache import FeatureStore, _changed_since, _stats_hash, cache_meta, file_digests
from .images import load_image

log = logging.getLogger(__name__)

__all__ = ["build_feature_cache", "check_disk"]


class _ImageFiles(Dataset):
    def __init__(self, folder: str, keys: Sequence[str], size: int):
        self.folder, self.keys, self.size = folder, list(keys), size

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        return load_image(os.path.join(self.folder, self.keys[i]), self.size)


def check_disk(folder: str, shape: Sequence[int], partial: Optional[str] = None) -> int:
    """Say how much disk a cache of ``shape`` (N, L, D) float16 takes, before any of it is written; a partial
    array already there counts as taken (``partial``: its path).

    Returns:
        the bytes of the finished ``features.npy`` (without its 128-byte header).

    Raises:
        OSError: the folder's file system has less room than what is still to be written (ENOSPC).
    """
    import errno
    import shutil

    need = int(np.prod(shape)) * 2
    allocated = os.stat(partial).st_blocks * 512 if partial else 0  # a sparse file's written blocks
    free = shutil.disk_usage(folder).free
    log.info(f"feature cache: {shape[0]:,} images x {shape[1]} x {shape[2]} float16 = {need / 1e9:.2f} GB in "
             f"{folder} ({free / 1e9:.1f} GB free on its disk)")
    if need - allocated > free:
        raise OSError(errno.ENOSPC, f"the feature cache needs {(need - allocated) / 1e9:.2f} GB more in {folder}, "
                                    f"its disk has {free / 1e9:.2f} GB free: free some space or choose another "
                                    f"--cache-dir")
    return need


@torch.no_grad()
def build_feature_cache(encoder, image_folder: str, keys: Sequence[str], out_folder: str, batch_size: int = 32,
                        num_workers: int = 1, device: str = "cpu", progress: bool = True, rank: int = 0,
                        world: int = 1, image_size: Optional[int] = None, meta: Optional[dict] = None) -> FeatureStore:
    """Encode every image once and store the annotation vectors as float16.

    Resumable: rows already written to ``features.npy.partial`` (counted in a progress file) are skipped when
    the same call is repeated after an interruption. The count is checked before it is trusted: if an image
    encoded before the interruption has changed since, the share starts again, and rows that were counted but
    hold only zeros (never written) are encoded again. The finished array is renamed to ``features.npy`` and
    ``index.json`` is written last, so a reader never sees a half-written cache. A finished cache in
    ``out_folder`` is returned as it is if its images are unchanged (sizes and modification times), and built
    again otherwise.

    Distributed (``world`` > 1, inside a torch.distributed process group): every process calls this; process r
    encodes the contiguous rows [r·N/world, (r+1)·N/world) into the shared memory-mapped file (each has its own
    progress file), and rank 0 finishes the cache once all have written their share. The result equals a
    one-process build up to the encoder's batch-composition rounding.

    Args:
        encoder: an :class:`~showattend.captioning.encoders.Encoder` (its name and fingerprint are recorded).
        image_folder: folder the keys are relative to.
        keys: relative image paths, one row each, in this order.
        out_folder: the cache folder (created).
        batch_size: images per forward pass.
        num_workers: DataLoader workers decoding JPEGs.
        device: where the encoder runs.
        progress: show a tqdm bar (rank 0's).
        rank, world: this process and the number of processes sharing the work.
        image_size: input side in pixels (default: the encoder's); recorded in ``index.json``.
        meta: :func:`cache_meta` of this call, when the caller has it already (the files are then not read
            again).

    Returns:
        a :class:`FeatureStore` over the cache.

    Raises:
        ImageError: an image is missing or cannot be read (the message names it); rows written so far are kept.
        ValueError: ``out_folder`` holds another cache (other images, encoder or size), or an inconsistent one.
    """
    from tqdm import tqdm

    barrier = torch.distributed.barrier if world > 1 else (lambda: None)
    os.makedirs(out_folder, exist_ok=True)
    meta = dict(meta) if meta is not None else cache_meta(encoder, image_folder, keys, image_size)
    store = _finished_cache(out_folder, meta, image_folder, keys, rank, barrier)
    if store is not None:
        return store
    encoder = encoder.to(device).eval()
    size = meta["image_size"]
    L, D = encoder.trunk(torch.zeros(1, 3, size, size, device=device)).shape[1:]  # a row (see Encoder.trunk)
    shape = [len(keys), int(L), int(D)]
    partial = os.path.join(out_folder, "features.npy.partial")
    if rank == 0:
        _open_partial(out_folder, partial, shape)
    barrier()
    lo, hi = rank * len(keys) // world, (rank + 1) * len(keys) // world
    progress_file = os.path.join(out_folder, "progress.json" if world == 1 else f"progress.{rank}-of-{world}.json")
    arr = np.lib.format.open_memmap(partial, mode="r+")
    done = _rows_done(progress_file, arr, meta["id"], shape, lo, hi, meta["stats"])
    loader = DataLoader(_ImageFiles(image_folder, keys[done:hi], size), batch_size=batch_size,
                        num_workers=num_workers)
    bar = tqdm(total=hi - lo, initial=done - lo, desc="encoding images", unit="img",
               disable=not progress or rank != 0)
    row = done
    for images in loader:
        feats = encoder.trunk(images.to(device))  # (b, L, D); a fine-tuned encoder's trunk activations
        arr[row:row + len(feats)] = feats.cpu().numpy().astype(np.float16)
        row += len(feats)
        arr.flush()
        kill_if_reached("cache_row", row - len(feats), row)  # written, not yet counted: the fault tests' kill
        atomic_write_text(progress_file, json.dumps({"done": row, "rows": [lo, hi], "id": meta["id"],
                                                     "shape": shape, "stats": _stats_hash(meta["stats"][lo:row])}))
        bar.update(len(feats))
    bar.close()
    del arr
    barrier()  # every share is written
    if rank == 0:
        _finish(out_folder, partial, meta, int(L), int(D), image_folder, keys)
    barrier()
    return FeatureStore(out_folder)


def _finished_cache(out_folder: str, meta: dict, image_folder: str, keys: Sequence[str], rank: int, barrier):
    """The finished cache in ``out_folder`` if its images are unchanged; else None, after removing it (rank 0)
    once every process has read it.

    Raises:
        ValueError: the folder holds another cache.
    """
    final = os.path.join(out_folder, "features.npy")
    if not (os.path.isfile(final) and os.path.isfile(os.path.join(out_folder, "index.json"))):
        return None
    store = FeatureStore(out_folder)
    if store.meta.get("id") != meta["id"]:
        raise ValueError(f"{out_folder} holds a different feature cache (other images, encoder weights or "
                         f"size); choose another folder")
    changed = _changed_since(out_folder, store.meta, image_folder, keys, meta["stats"], save=rank == 0)
    if not changed:
        return store
    barrier()  # every process has read the old cache before rank 0 removes it
    if rank == 0:
        log.warning(f"{out_folder}: {len(changed)} images changed since the cache was built (e.g. {changed[0]}); "
                    f"encoding all again")
        os.remove(os.path.join(out_folder, "index.json"))
        os.remove(final)
    barrier()
    return None


def _open_partial(out_folder: str, partial: str, shape: list) -> None:
    """Reuse a partial array of the right shape, or start one (and forget the old progress), after checking the
    disk has room."""
    try:
        reuse = list(np.load(partial, mmap_mode="r").shape) == shape
    except (OSError, ValueError):
        reuse = False
    check_disk(out_folder, shape, partial if reuse else None)
    if not reuse:
        _remove_progress(out_folder)
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=tuple(shape)).flush()


def _finish(out_folder: str, partial: str, meta: dict, L: int, D: int, image_folder: str,
            keys: Sequence[str]) -> None:
    """Rename the complete array into place, then write ``index.json`` (last: a reader never sees a half cache)."""
    os.replace(partial, os.path.join(out_folder, "features.npy"))
    meta.update(L=L, D=D, digests=file_digests(image_folder, keys))
    atomic_write_text(os.path.join(out_folder, "index.json"), json.dumps(meta))
    _remove_progress(out_folder)


def _remove_progress(out_folder: str) -> None:
    for f in os.listdir(out_folder):
        if f.startswith("progress"):
            os.remove(os.path.join(out_folder, f))


def _rows_done(progress_file: str, arr: np.ndarray, cid: str, shape: list, lo: int, hi: int, stats) -> int:
    """Where this process's share resumes: the progress file's count, if it belongs to this build and its
    images have not changed since, and no counted row is all zeros (never written); else ``lo``."""
    try:
        with open(progress_file, encoding="utf-8") as f:
            prog = json.load(f)
        done = int(prog["done"])
        if (prog.get("id"), prog.get("shape"), prog.get("rows")) != (cid, shape, [lo, hi]) or not lo <= done <= hi \
                or prog.get("stats") != _stats_hash(stats[lo:done]):
            return lo
    except (OSError, ValueError, KeyError, TypeError):
        return lo
    for a in range(lo, done, 256):  # the first all-zero row, if any, was never written
        empty = np.flatnonzero(~np.asarray(arr[a:min(a + 256, done)]).reshape(min(256, done - a), -1).any(axis=1))
        if len(empty):
            return a + int(empty[0])
    return done
