"""Attention maps over the image, one panel per generated word (the style of Xu et al. Figures 2-3)."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageFilter

from ..runs import save_figure

__all__ = ["upsample_alpha", "plot_attention"]


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
                   mark_location: bool = False) -> str:
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

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches
    import matplotlib.pyplot as plt

    scale = 256 / max(image.size)  # keep the photo's aspect ratio; the grid covers the whole image
    image = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    labels = list(words) + (["<end>"] if len(alphas) > len(words) else [])
    n = len(labels) + 1
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(image)
    axes.flat[0].set_title("image", fontsize=10)
    for i, word in enumerate(labels):
        ax = axes.flat[i + 1]
        ax.imshow(image)
        ax.imshow(upsample_alpha(alphas[i], grid, image.size), cmap="Greys_r", alpha=0.75, vmin=0, vmax=1)
        if mark_location:
            h, w = grid
            k = int(torch.as_tensor(alphas[i]).argmax())
            cw, ch = image.width / w, image.height / h
            ax.add_patch(matplotlib.patches.Rectangle(((k % w) * cw, (k // w) * ch), cw, ch, fill=False,
                                                      edgecolor="red", linewidth=2))
        label = word if betas is None else f"{word}  (β={float(betas[i]):.2f})"
        ax.set_title(label, fontsize=10)
    fig.suptitle(title if title is not None else " ".join(words), fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)
