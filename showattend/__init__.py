"""showattend: "Show, Attend and Tell" (Xu et al., ICML 2015) in PyTorch, on one shared attention core.

The public API::

    from showattend import Captioner, open_rgb, plot_attention
    captioner = Captioner.from_pretrained("flickr8k-lite0-soft")     # a bundled model (showattend.list_models())
    result = captioner.caption(["photo.jpg"])[0]                     # CaptionResult: text, words, alphas, betas
    plot_attention(open_rgb("photo.jpg"), result.words, result.alphas, result.grid, "photo_attention.png")

    from showattend import Translator
    translator = Translator.from_checkpoint("runs/translator/best.pt")
    translator.translate(["Ein Hund läuft."])[0]["text"]

Names are imported on first use, so ``import showattend`` (and ``showattend --version``) stays fast.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_NAMES = {
    "Captioner": ".captioning.model", "CaptionResult": ".captioning.model", "ModelConfig": ".captioning.model",
    "TrainConfig": ".captioning.train", "train": ".captioning.train", "evaluate": ".captioning.evaluate",
    "load_image": ".captioning.images", "open_rgb": ".captioning.images", "ImageError": ".captioning.images",
    "plot_attention": ".captioning.overlay",
    "Translator": ".translation.translator", "TranslatorConfig": ".translation.model",
    "TranslationTrainConfig": ".translation.train", "train_translator": ".translation.train",
    "evaluate_translator": ".translation.train", "plot_alignment": ".translation.plot",
    "Attention": ".attention", "CheckpointError": ".checkpoint", "caption_metrics": ".metrics",
    "PRETRAINED": ".pretrained", "list_models": ".pretrained",
}

__all__ = ["__version__", *_NAMES]

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .attention import Attention
    from .captioning.evaluate import evaluate
    from .captioning.images import ImageError, load_image, open_rgb
    from .captioning.model import Captioner, CaptionResult, ModelConfig
    from .captioning.overlay import plot_attention
    from .captioning.train import TrainConfig, train
    from .checkpoint import CheckpointError
    from .metrics import caption_metrics
    from .pretrained import PRETRAINED, list_models
    from .translation.model import TranslatorConfig
    from .translation.plot import plot_alignment
    from .translation.train import TranslationTrainConfig, evaluate_translator, train_translator
    from .translation.translator import Translator


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'showattend' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
