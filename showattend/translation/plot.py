"""Alignment heatmaps: attention weights with source subwords on one axis and target subwords on the other."""
from __future__ import annotations

from typing import Sequence

import torch

from ..runs import save_figure

__all__ = ["plot_alignment"]


def plot_alignment(source: Sequence[str], target: Sequence[str], alpha: torch.Tensor, path: str,
                   title: str = "") -> str:
    """Write a PNG heatmap of α (rows: target tokens, columns: source tokens), as Bahdanau et al. Figure 3.

    Args:
        source: source subwords (columns).
        target: generated subwords (rows).
        alpha: (len(target), len(source)) attention weights.
        path: output PNG (written atomically).
        title: figure title.

    Returns:
        ``path``.

    Raises:
        ValueError: the shape of ``alpha`` does not match the tokens.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alpha = torch.as_tensor(alpha).float().cpu()
    if tuple(alpha.shape) != (len(target), len(source)):
        raise ValueError(f"alpha has shape {tuple(alpha.shape)}, expected ({len(target)}, {len(source)})")
    fig, ax = plt.subplots(figsize=(0.45 * len(source) + 2.5, 0.4 * len(target) + 2))
    ax.imshow(alpha.numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(source)), labels=list(source), rotation=90)
    ax.set_yticks(range(len(target)), labels=list(target))
    ax.set_xlabel("source")
    ax.set_ylabel("translation")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
