"""showattend: "Show, Attend and Tell" (Xu et al., ICML 2015) in PyTorch, on one shared attention core.

The package is the core (attention, search, checkpoints, metrics, the training engine, the registry of bundled
models) and two applications of it, each with its own public API: ``showattend.captioning`` (``Captioner``,
``open_rgb``, ``load_image``, ``plot_attention``, ``train``, ``evaluate``; e.g.
``Captioner.from_pretrained("flickr8k-lite2-soft").caption("photo.jpg")``) and ``showattend.translation``
(``Translator``, ``plot_alignment``, ``train_translator``, ``evaluate_translator``). The README shows both.

The core never imports an application. Names are imported on first use, so ``import showattend`` (and
``showattend --version``) stays fast.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_names

__version__ = "0.1.0"

_NAMES = {"Attention": ".attention", "CheckpointError": ".checkpoint", "caption_metrics": ".metrics",
          "PRETRAINED": ".pretrained", "list_models": ".pretrained"}

__all__ = ["__version__", *_NAMES]

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .attention import Attention
    from .checkpoint import CheckpointError
    from .metrics import caption_metrics
    from .pretrained import PRETRAINED, list_models


__getattr__, __dir__ = lazy_names(__name__, _NAMES)
