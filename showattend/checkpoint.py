"""Checkpoints as plain data: atomic writes, ``torch.load(weights_only=True)`` loading, clear errors.

A checkpoint is a dict of tensors and plain Python values, never a pickled module::

    {"format": "showattend-captioner", "format_version": 1, "config": {...}, "vocab": [...],
     "model": state_dict, "optimizer": ..., "epoch": int, ..., "checksum": "sha256:..."}

The checksum (SHA-256 over every value, tensors by their bytes) is written with the checkpoint and verified
when it is loaded, so a damaged file is reported as corrupt instead of failing somewhere inside decoding.
Checkpoints written before checksums existed load unverified.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from typing import Any, Dict, Optional, Sequence

import torch

from .errors import CheckpointError
from .faults import slow_save

__all__ = ["FORMAT_VERSION", "CheckpointError", "save_checkpoint", "load_checkpoint", "export_checkpoint",
           "checksum", "load_weights", "quantize_int8", "dequantize_int8"]

FORMAT_VERSION = 1


def checksum(payload: Dict[str, Any]) -> str:
    """``"sha256:<hex>"`` over every value of a checkpoint dict except its ``checksum`` field: tensors by dtype,
    shape and bytes, other values by type and ``repr``, dict entries in key order."""
    h = hashlib.sha256()

    def walk(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(x.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(f"D{len(x)}".encode())
            for k in sorted(x, key=repr):
                walk(k)
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(f"L{len(x)}".encode())
            for v in x:
                walk(v)
        elif isinstance(x, (bytes, bytearray)):
            h.update(b"B%d:" % len(x) + bytes(x))
        else:
            h.update(f"{type(x).__name__}:{x!r};".encode())

    walk({k: v for k, v in payload.items() if k != "checksum"})
    return "sha256:" + h.hexdigest()


def save_checkpoint(path: str, payload: Dict[str, Any]) -> None:
    """Write ``payload`` and its :func:`checksum` to ``path`` atomically: a temporary file in the same folder,
    fsync, then rename.

    An interrupted save leaves the previous checkpoint intact (the fault tests slow the write down with
    :func:`showattend.faults.slow_save` to kill a process inside it).

    Args:
        path: destination file.
        payload: plain data and tensors only (``weights_only`` loadable).
    """
    payload = {**payload, "checksum": checksum(payload)}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        slow_save()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str, kind: Optional[str], map_location: Any = "cpu",
                    required: Sequence[str] = ()) -> Dict[str, Any]:
    """Load and validate a checkpoint with ``torch.load(weights_only=True)``.

    Args:
        path: checkpoint file.
        kind: expected ``format`` field, e.g. ``"showattend-captioner"`` (None: any showattend checkpoint).
        map_location: passed to ``torch.load``.
        required: fields the caller needs (``config``, ``model``, ...).

    Returns:
        the checkpoint dict.

    Raises:
        CheckpointError: missing or unreadable file, not a showattend checkpoint, another kind, another format
            version, contents that do not match the checksum written with them, or a required field missing;
            the message names the file.
    """
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"  # torch.save's format; older torch files are plain pickles
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: the error below says it all
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated file, pickle of arbitrary objects, not a torch file ...
        if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err) and zipped:
            why = "it holds Python objects other than tensors and plain data, refused (unpickling them could run code)"
        elif zipped:
            why = f"truncated or damaged file ({type(err).__name__})"
        else:
            why = "not a PyTorch checkpoint file"
        raise CheckpointError(f"{path}: cannot read checkpoint: {why}") from None
    if not isinstance(ckpt, dict) or "format" not in ckpt:
        raise CheckpointError(f"{path}: not a showattend checkpoint (no 'format' field)")
    if kind is not None and ckpt["format"] != kind:
        raise CheckpointError(f"{path}: a {ckpt['format']!r} checkpoint, expected {kind!r}")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {ckpt.get('format_version')}, this showattend "
                              f"reads version {FORMAT_VERSION}")
    if "checksum" in ckpt and ckpt["checksum"] != checksum(ckpt):
        raise CheckpointError(f"{path}: corrupt checkpoint: its contents do not match the checksum written with "
                              f"it (damaged on disk or in a copy); use another copy")
    if "int8_scales" in ckpt:  # an export with int8 weight matrices: float32 again, as every caller expects
        ckpt = dequantize_int8(ckpt, path)
    missing = [f for f in required if f not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: incomplete {ckpt['format']} checkpoint: no {', '.join(missing)}")
    return ckpt


def load_weights(module: torch.nn.Module, state: Dict[str, torch.Tensor], path: str, what: str = "model") -> None:
    """``module.load_state_dict(state)`` after checking that the names and shapes match the module, which is
    built from the checkpoint's config.

    Raises:
        CheckpointError: missing or unexpected tensors, or a tensor of another shape (named, with both shapes).
    """
    own = module.state_dict()
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: the {what} weights are not a state dict")
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"{path}: the {what} weights do not match its config: "
                              + "; ".join(f"{len(v)} {n} tensors ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                                          for n, v in (("missing", missing), ("unexpected", unexpected)) if v))
    for k, t in state.items():
        if not isinstance(t, torch.Tensor) or t.shape != own[k].shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise CheckpointError(f"{path}: {what} tensor {k} has shape {got}, its config makes "
                                  f"{tuple(own[k].shape)}: corrupt or edited checkpoint")
    module.load_state_dict(state)


#: what only resuming needs; an exported checkpoint drops it
TRAINING_STATE = ("optimizer", "scheduler", "engine", "task_state", "rng", "baseline")


#: the weights of a checkpoint: a model's, and a fine-tuned encoder's top blocks
WEIGHT_PARTS = ("model", "encoder")


def quantize_int8(weight: torch.Tensor):
    """Symmetric int8 quantisation with one scale per output row: ``q = round(w / s)``, ``s = max|w_row| / 127``.

    Args:
        weight: (R, ...) floating tensor, R output rows (a Linear's (out, in), an embedding's (V, m), a
            convolution's (out, in, kh, kw)).

    Returns:
        ``(q, s)``: q int8 of ``weight``'s shape, s (R,) float16. An all-zero row gets scale 0 (and q 0). Each
        element's error ``|q s - w|`` is at most s / 2 (plus float16's rounding of s).
    """
    w = weight.detach().float()
    scale = (w.reshape(w.shape[0], -1).abs().amax(dim=1) / 127).half()  # rounded first: q is made with it
    s = scale.float().reshape(-1, *([1] * (w.ndim - 1)))
    q = (w / torch.where(s > 0, s, 1)).round().clamp(-127, 127).to(torch.int8)  # s = 0: |w| < 2^-24 * 127
    return q, scale


def dequantize_int8(ckpt: Dict[str, Any], path: str = "checkpoint") -> Dict[str, Any]:
    """A checkpoint written with int8 weight matrices (:func:`export_checkpoint` with ``int8=True``), its
    weights float32 again: ``w = q s`` for each tensor named in ``ckpt["int8_scales"][part]``.

    Raises:
        CheckpointError: a scale without its int8 tensor, or of the wrong length (an edited file).
    """
    out = {k: v for k, v in ckpt.items() if k != "int8_scales"}
    for part, scales in ckpt["int8_scales"].items():
        weights = dict(out.get(part) or {})
        for name, scale in scales.items():
            q = weights.get(name)
            if not isinstance(q, torch.Tensor) or q.dtype != torch.int8 or scale.shape != (q.shape[0],):
                raise CheckpointError(f"{path}: int8 weight {part}.{name} is missing or does not match its scales")
            weights[name] = q.float() * scale.float().reshape(-1, *([1] * (q.ndim - 1)))
        out[part] = weights
    return out


def export_checkpoint(src: str, dst: str, half: bool = False, int8: bool = False) -> Dict[str, Any]:
    """Write an inference-only copy of a training checkpoint of either application (captioner or translator):
    without optimizer, scheduler and engine state; with ``half`` the model's floating-point weights in float16;
    with ``int8`` its weight matrices (every floating tensor of 2 or more dimensions) as int8 with one float16
    scale per row (:func:`quantize_int8`), the rest in float16, about half the size of ``half``. Both load back
    into float32 models (:func:`load_checkpoint` dequantises). Atomic.

    Returns:
        the written dict.

    Raises:
        CheckpointError: ``src`` is not a readable showattend checkpoint.
    """
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise CheckpointError(f"{dst}: export would overwrite its own source; choose another output file")
    ckpt = load_checkpoint(src, None)
    out = {k: v for k, v in ckpt.items() if k not in TRAINING_STATE}
    scales: Dict[str, Dict[str, torch.Tensor]] = {}
    for part in WEIGHT_PARTS if half or int8 else ():
        if not isinstance(ckpt.get(part), dict):
            continue
        out[part] = {}
        for k, v in ckpt[part].items():
            if int8 and v.is_floating_point() and v.ndim >= 2:
                out[part][k], scales.setdefault(part, {})[k] = quantize_int8(v)
            else:
                out[part][k] = v.half() if v.is_floating_point() else v
    if scales:
        out["int8_scales"] = scales
    save_checkpoint(dst, out)
    return out
