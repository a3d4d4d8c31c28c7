"""Attention maps over the image, one panel per generated word (the style of Xu et al. Figures 2-3): each word's
map upsampled and smoothed, drawn in a perceptual colour map (viridis) whose opacity grows with the weight, so the
photo stays visible where the model does not look."""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageFilter

from ..runs import save_figure

__all__ = ["upsample_alpha", "plot_attention", "plot_attention_rows", "attention_figure", "AttentionRow",
           "report_item"]


def report_item(name: str, source, result, references: Sequence[str] = (), scores: Optional[dict] = None) -> dict:
    """One image of an HTML report (:func:`showattend.report.write_caption_report`): its name, thumbnail,
    caption, words, α per word (and for ``<end>``), β, grid, log-probability; references and scores when
    evaluating.

    Args:
        name: how the page names the image.
        source: the image (any :data:`~showattend.captioning.images.ImageSource`; EXIF orientation applied).
        result: its :class:`~showattend.captioning.captioner.CaptionResult`.
    """
    from ..report import image_data_uri
    from .images import open_rgb

    return {"name": name, "image": image_data_uri(open_rgb(source)), "caption": result.text,
            "words": list(result.words) + ["<end>"],
            "alphas": [[round(a, 4) for a in row] for row in result.alphas.tolist()],
            "betas": [round(b, 3) for b in result.betas.tolist()], "grid": list(result.grid),
            "log_prob": round(float(result.log_prob), 3), "references": list(references), "scores": scores or {}}


def upsample_alpha(alpha: Union[torch.Tensor, np.ndarray], grid: Sequence[int], size: Sequence[int],
                   smooth: float = 0.04) -> np.ndarray:
    """Turn one step's weights over the grid into a smooth map of the image's size.

    Args:
        alpha: (L,) weights of one step, L = h·w, row-major over the grid.
        grid: (h, w) of the annotation grid.
        size: (width, height) of the output in pixels.
        smooth: Gaussian blur radius as a fraction of the image's longer side (0: none).

    Returns:
        (height, width) float32 array scaled to [0, 1] (the map's maximum is 1).
    """
    a = np.asarray(alpha, dtype=np.float32).reshape(grid)
    a = np.round(255 * a / max(float(a.max()), 1e-12)).astype(np.uint8)  # 8-bit: Pillow blurs mode "L" only
    img = Image.fromarray(a, mode="L").resize(tuple(size), Image.BICUBIC)
    if smooth:
        img = img.filter(ImageFilter.GaussianBlur(radius=smooth * max(size)))
    out = np.asarray(img, dtype=np.float32).clip(0, None)
    return out / max(float(out.max()), 1e-12)


def plot_attention(image: Image.Image, words: Sequence[str], alphas: torch.Tensor, grid: Sequence[int], path: str,
                   title: Optional[str] = None, columns: int = 5, betas: Optional[torch.Tensor] = None,
                   mark_location: bool = False, colorbar: bool = False) -> str:
    """Write a PNG: the image, then one panel per word with its attention map overlaid.

    Args:
        image: the image (any size and mode; shown at 256 px on its longer side).
        words: generated words; ``<end>`` is added as a last panel if ``alphas`` has one more row.
        alphas: (n, L) attention weights per generated token.
        grid: (h, w) of the annotation grid.
        path: output PNG (written atomically).
        title: figure title (default: the caption).
        columns: panels per row.
        betas: optional (n,) gating scalars, shown in the panel titles.
        mark_location: outline the most probable location argmax_i α_ti of each word (for hard-attention models:
            the location a sample most often picks).
        colorbar: add a colour bar (each map is scaled to its own maximum: 0 to max_i α_ti).

    Returns:
        ``path``.
    """
    entry = AttentionRow("image", words, alphas, betas, mark_location)
    return plot_attention_rows(image, [entry], grid, path, title if title is not None else " ".join(words), columns,
                               colorbar)


class AttentionRow(NamedTuple):
    """One model's caption of an image, for :func:`plot_attention_rows`.

    Attributes:
        label: title of the row's first panel (the plain image), e.g. "soft attention".
        words: generated words.
        alphas: (n, L) attention weights, one row per generated token (``<end>`` last if n = len(words) + 1).
        betas: optional (n,) gating scalars β_t shown in the panel titles.
        mark_location: outline argmax_i α_ti per word (the location a hard-attention sample most often picks).
    """

    label: str
    words: Sequence[str]
    alphas: torch.Tensor
    betas: Optional[torch.Tensor] = None
    mark_location: bool = False


def plot_attention_rows(image: Image.Image, rows: Sequence[AttentionRow], grid: Sequence[int], path: str,
                        title: Optional[str] = None, columns: int = 5, colorbar: bool = False) -> str:
    """Write a PNG with one block of panels per caption of the same image (e.g. soft vs hard attention).

    Each block starts with the plain image titled ``row.label``, then one panel per word with its map (see
    :func:`attention_figure` for the arguments).

    Returns:
        ``path``.

    Raises:
        ValueError: ``rows`` is empty.
    """
    return save_figure(attention_figure(image, rows, grid, title, columns, colorbar), path, dpi=90)


def attention_figure(image: Image.Image, rows: Sequence[AttentionRow], grid: Sequence[int],
                     title: Optional[str] = None, columns: int = 5, colorbar: bool = False):
    """The matplotlib figure of :func:`plot_attention_rows`: panels sized to the image's aspect ratio and laid
    out by matplotlib's constrained layout, so no title overlaps an image at any aspect ratio.

    Args:
        image: the image (any size and mode; shown at 256 px on its longer side).
        rows: the captions to show, one :class:`AttentionRow` each.
        grid: (h, w) of the annotation grid, h·w = L.
        title: figure title (default: "label: caption" per row, one line each).
        columns: panels per line.
        colorbar: add a colour bar for the maps.

    Returns:
        the figure (the caller saves or closes it).

    Raises:
        ValueError: ``rows`` is empty.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.cm
    import matplotlib.colors
    import matplotlib.patches
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("plot_attention_rows needs at least one row")
    scale = 256 / max(image.size)  # keep the photo's aspect ratio; the grid covers the whole image
    image = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    labels = [list(r.words) + (["<end>"] if len(r.alphas) > len(r.words) else []) for r in rows]
    lines = [math.ceil((len(lab) + 1) / columns) for lab in labels]  # panel lines per block
    if title is None:
        title = "\n".join(f"{r.label}: {' '.join(r.words)}" for r in rows)
    panel_h = 2.2 * image.height / image.width + 0.4  # the photo at 2.2 in wide, and a line for its title
    fig, axes = plt.subplots(sum(lines), columns, squeeze=False, layout="constrained",
                             figsize=(2.2 * columns + 0.8 * colorbar,
                                      panel_h * sum(lines) + 0.3 * (title.count("\n") + 1)))
    cmap = plt.get_cmap("viridis")
    for ax in axes.flat:
        ax.axis("off")
    top = 0
    h, w = grid
    cw, ch = image.width / w, image.height / h
    for row, lab, n_lines in zip(rows, labels, lines):
        panels = axes[top:top + n_lines].flat
        top += n_lines
        panels[0].imshow(image)
        panels[0].set_title(row.label, fontsize=10, fontweight="bold")
        for i, word in enumerate(lab):
            ax = panels[i + 1]
            ax.imshow(image)
            m = upsample_alpha(row.alphas[i], grid, image.size)
            overlay = cmap(m)  # (H, W, 4): viridis, more opaque where the weight is higher
            overlay[..., 3] = 0.15 + 0.6 * m
            ax.imshow(overlay)
            if row.mark_location:
                k = int(torch.as_tensor(row.alphas[i]).argmax())
                ax.add_patch(matplotlib.patches.Rectangle(((k % w) * cw, (k // w) * ch), cw, ch, fill=False,
                                                          edgecolor="red", linewidth=2))
            ax.set_title(word if row.betas is None else f"{word}  (β={float(row.betas[i]):.2f})", fontsize=10)
    fig.suptitle(title, fontsize=11)
    if colorbar:
        scale = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, 1), cmap)
        fig.colorbar(scale, ax=axes, shrink=0.6, label="α / max α of the word")
    return fig
