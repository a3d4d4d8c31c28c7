"""Checkpoints as plain data: atomic writes, ``torch.load(weights_only=True)`` loading, clear errors.

A checkpoint is a dict of tensors and plain Python values, never a pickled module::

    {"format": "showattend-captioner", "format_version": 1, "config": {...}, "vocab": [...],
     "model": state_dict, "optimizer": ..., "epoch": int, ...}
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

import torch

__all__ = ["FORMAT_VERSION", "CheckpointError", "save_checkpoint", "load_checkpoint", "export_checkpoint"]

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, of another kind or of another format version."""


def save_checkpoint(path: str, payload: Dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, fsync, then rename.

    An interrupted save leaves the previous checkpoint intact.

    Args:
        path: destination file.
        payload: plain data and tensors only (``weights_only`` loadable).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str, kind: Optional[str], map_location: Any = "cpu") -> Dict[str, Any]:
    """Load and validate a checkpoint with ``torch.load(weights_only=True)``.

    Args:
        path: checkpoint file.
        kind: expected ``format`` field, e.g. ``"showattend-captioner"`` (None: any showattend checkpoint).
        map_location: passed to ``torch.load``.

    Returns:
        the checkpoint dict.

    Raises:
        CheckpointError: missing or unreadable file, not a showattend checkpoint, another kind, or another
            format version; the message names the file.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated file, pickle of arbitrary objects, not a torch file ...
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(err).__name__}: {str(err)[:200]})") from None
    if not isinstance(ckpt, dict) or "format" not in ckpt:
        raise CheckpointError(f"{path}: not a showattend checkpoint (no 'format' field)")
    if kind is not None and ckpt["format"] != kind:
        raise CheckpointError(f"{path}: a {ckpt['format']!r} checkpoint, expected {kind!r}")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {ckpt.get('format_version')}, this showattend "
                              f"reads version {FORMAT_VERSION}")
    return ckpt


#: what only resuming needs; an exported checkpoint drops it
TRAINING_STATE = ("optimizer", "scheduler", "engine", "task_state", "rng", "baseline")


def export_checkpoint(src: str, dst: str, half: bool = False) -> Dict[str, Any]:
    """Write an inference-only copy of a training checkpoint of either application (captioner or translator):
    without optimizer, scheduler and engine state, and with ``half`` the model's floating-point weights in
    float16 (they load back into float32 models). Atomic.

    Returns:
        the written dict.

    Raises:
        CheckpointError: ``src`` is not a readable showattend checkpoint.
    """
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise CheckpointError(f"{dst}: export would overwrite its own source; choose another output file")
    ckpt = load_checkpoint(src, None)
    out = {k: v for k, v in ckpt.items() if k not in TRAINING_STATE}
    if half:
        out["model"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    save_checkpoint(dst, out)
    return out
