"""Image captioning with visual attention (Xu et al. 2015) on the shared attention core.

The public API of this application (names are imported on first use)::

    from showattend.captioning import Captioner, open_rgb, load_image, plot_attention, evaluate, train
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

_NAMES = {
    "Captioner": ".captioner", "CaptionResult": ".captioner", "ModelConfig": ".config", "TrainConfig": ".config",
    "train": ".train", "evaluate": ".evaluate", "load_image": ".images", "open_rgb": ".images",
    "ImageError": ".images", "plot_attention": ".overlay",
}

__all__ = list(_NAMES)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .captioner import Captioner, CaptionResult
    from .config import ModelConfig, TrainConfig
    from .evaluate import evaluate
    from .images import ImageError, load_image, open_rgb
    from .overlay import plot_attention
    from .train import train


__getattr__, __dir__ = lazy_names(__name__, _NAMES)
