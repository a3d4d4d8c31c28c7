"""Helpers shared by the applications' training and evaluation code: device choice, atomic files, logs."""
from __future__ import annotations

import csv
import json
import os
from typing import Dict

import torch

__all__ = ["resolve_device", "atomic_write_text", "save_figure", "append_metrics"]


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def atomic_write_text(path: str, text: str) -> None:
    """Write a text file atomically (temporary file in the same folder, fsync, rename)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_figure(fig, path: str, dpi: int = 100) -> str:
    """Save a matplotlib figure as PNG atomically, close it, and return ``path``."""
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}.png"
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def append_metrics(out_dir: str, row: Dict) -> None:
    """Append one epoch's row to ``out_dir/metrics.jsonl`` and ``out_dir/metrics.csv``."""
    with open(os.path.join(out_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    csv_path = os.path.join(out_dir, "metrics.csv")
    new = not os.path.exists(csv_path)
    with open(csv_path, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
