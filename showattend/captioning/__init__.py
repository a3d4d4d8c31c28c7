"""Image captioning with visual attention (Xu et al. 2015) on the shared attention core.

The public API of this application (names are imported on first use)::

    from showattend.captioning import Captioner, open_rgb, load_image, plot_attention, evaluate, train
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_NAMES = {
    "Captioner": ".model", "CaptionResult": ".model", "ModelConfig": ".model", "TrainConfig": ".train",
    "train": ".train", "evaluate": ".evaluate", "load_image": ".images", "open_rgb": ".images",
    "ImageError": ".images", "plot_attention": ".overlay",
}

__all__ = list(_NAMES)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .evaluate import evaluate
    from .images import ImageError, load_image, open_rgb
    from .model import Captioner, CaptionResult, ModelConfig
    from .overlay import plot_attention
    from .train import TrainConfig, train


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'showattend.captioning' has no attribute {name!r}")


def __dir__():
    return sorted(set(__all__) | set(globals()))
