"""Alignment heatmaps: attention weights with source subwords on one axis and target subwords on the other."""
from __future__ import annotations

from typing import Sequence

import torch

from ..runs import save_figure

__all__ = ["plot_alignment", "readable_pieces", "report_items"]


def report_items(results: Sequence) -> list:
    """The sentences of an HTML alignment report (:func:`showattend.report.write_alignment_report`), from
    :meth:`~showattend.translation.translator.Translator.translate` results."""
    return [{"source": "".join(r.source_pieces).replace("▁", " ").strip(), "text": r.text,
             "src": readable_pieces(r.source_pieces), "tgt": readable_pieces(r.target_pieces),
             "alpha": [[round(a, 4) for a in row] for row in r.alpha.tolist()]} for r in results]


def readable_pieces(pieces: Sequence[str]) -> list:
    """Subwords for people: sentencepiece's word-start mark ``▁`` dropped, and a piece that continues a word
    shown with a leading hyphen ("▁Fahr", "rad" -> "Fahr", "-rad"); special tokens such as ``</s>`` kept."""
    out = []
    for p in pieces:
        if p.startswith("<") and p.endswith(">"):
            out.append(p)
        elif p.startswith("▁"):
            out.append(p[1:] or "▁")
        else:
            out.append("-" + p)
    return out


def plot_alignment(source: Sequence[str], target: Sequence[str], alpha: torch.Tensor, path: str,
                   title: str = "") -> str:
    """Write a PNG heatmap of α (rows: target tokens, columns: source tokens), as Bahdanau et al. Figure 3, with
    a colour bar (viridis, 0 to 1) and the subwords made readable (:func:`readable_pieces`).

    Args:
        source: source subwords (columns), as sentencepiece gives them.
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
    fig, ax = plt.subplots(figsize=(0.45 * len(source) + 3.2, 0.4 * len(target) + 2), layout="constrained")
    im = ax.imshow(alpha.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(source)), labels=readable_pieces(source), rotation=90)
    ax.set_yticks(range(len(target)), labels=readable_pieces(target))
    ax.set_xlabel("source subwords")
    ax.set_ylabel("translation subwords")
    fig.colorbar(im, ax=ax, shrink=0.9, label="α")
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)
