"""Helpers shared by the applications' training and evaluation code: device choice, atomic files, logs."""
from __future__ import annotations

import csv
import io
import json
import os
from typing import TYPE_CHECKING, Dict, List, Optional

if TYPE_CHECKING:
    import torch

__all__ = ["resolve_device", "atomic_write_text", "save_figure", "write_metrics", "plot_curves"]


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; "cpu", "cuda" or "cuda:N" otherwise.

    Raises:
        ValueError: another device string, or cuda asked for where torch sees no CUDA device.
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: choose auto, cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch sees no CUDA device here (use --device cpu or auto)")
    return dev


def check_output_file(path: str, option: str) -> None:
    """Check, before any work, that a file can be written at ``path`` (an output option's value; "" is an unset
    option and passes): its folder, or the nearest one of its parents that exists (the write makes the rest),
    must take a new file.

    Raises:
        ValueError: ``path`` is a folder, a parent of it is a file, or no file can be made there (named as
            ``option``, with the system's reason: permissions, a read-only or special file system).
    """
    if path and os.path.isdir(path):
        raise ValueError(f"{option} {path}: a folder; give a file name")
    if path:
        _check_folder_takes_files(os.path.dirname(os.path.abspath(path)), path, option)


def check_output_folder(path: str, option: str) -> None:
    """Check, before any work, that ``path`` is a folder or can be made one, and that files can be written in
    it (or, when it does not exist yet, in the nearest of its parents that does); "" passes (an unset option).

    Raises:
        ValueError: ``path`` or a parent of it is a file, or nothing can be written there (named as ``option``).
    """
    if path:
        _check_folder_takes_files(os.path.abspath(path), path, option)


def _check_folder_takes_files(folder: str, path: str, option: str) -> None:
    """``folder`` (absolute) exists or can be made, and a file can be made in it or in the nearest of its parents
    that exists: an empty file is made and removed there, the one sure test (os.access answers from the
    permission bits, and says yes to root in /proc). Errors name ``option`` and its value ``path``."""
    import tempfile

    while folder and not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if folder and not os.path.isdir(folder):
        raise ValueError(f"{option} {path}: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".showattend-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"{option} {path}: cannot write in {folder} ({e.strerror or e})") from None


def atomic_write_text(path: str, text: str) -> None:
    """Write a text file atomically (temporary file in the same folder, fsync, rename); the folder is created, and
    the temporary file removed if the write fails."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_figure(fig, path: str, dpi: int = 100) -> str:
    """Save a matplotlib figure as PNG atomically, close it, and return ``path``."""
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}.png"
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_metrics(out_dir: str, history: List[Dict]) -> None:
    """Write the epoch rows to ``out_dir/metrics.jsonl`` and ``out_dir/metrics.csv`` (whole files, atomically,
    so they always agree with the checkpoint that holds the same history)."""
    atomic_write_text(os.path.join(out_dir, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in history))
    names = list(dict.fromkeys(k for r in history for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=names)
    w.writeheader()
    w.writerows(history)
    atomic_write_text(os.path.join(out_dir, "metrics.csv"), buf.getvalue())


LABELS = {"train_ce": "train cross-entropy (nats/word)", "train_loss": "train loss (nats/token)",
          "val_bleu4": "validation BLEU-4", "val_cider": "validation CIDEr-D",
          "val_bleu": "validation BLEU (sacreBLEU)"}


def plot_curves(history: List[Dict], loss_key: str, score_key: str, path: str) -> Optional[str]:
    """Training loss and validation score per epoch, the best epoch marked; returns ``path`` (None if empty)."""
    rows = [h for h in history if loss_key in h and score_key in h]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in rows]
    best = max(rows, key=lambda h: h[score_key])
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    ax1.plot(ep, [h[loss_key] for h in rows], "o-", color="tab:blue")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel(LABELS.get(loss_key, loss_key), color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(ep, [h[score_key] for h in rows], "s-", color="tab:red")
    ax2.plot([best["epoch"]], [best[score_key]], "*", color="gold", markersize=16, markeredgecolor="black")
    ax1.set_title(f"best (star): epoch {best['epoch']}, {LABELS.get(score_key, score_key)} {best[score_key]:g}",
                  fontsize=9)
    ax1.axvline(best["epoch"], color="grey", linestyle=":", linewidth=1)
    ax2.set_ylabel(LABELS.get(score_key, score_key), color="tab:red")
    from matplotlib.ticker import MaxNLocator

    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return save_figure(fig, path)
