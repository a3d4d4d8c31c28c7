"""showattend: "Show, Attend and Tell" (Xu et al., ICML 2015) in PyTorch, on one shared attention core.

The package is the core (attention, search, checkpoints, the training engine, the registry of bundled models)
and two applications of it, each with its own public API: ``showattend.captioning`` (``Captioner``,
``open_rgb``, ``load_image``, ``plot_attention``, ``train``, ``evaluate``) and ``showattend.translation``
(``Translator``, ``plot_alignment``, ``train``, ``evaluate``)::

    from showattend.captioning import Captioner
    from showattend.translation import Translator
    Captioner.from_pretrained("flickr8k-lite2-soft").caption("photo.jpg").text
    Translator.from_pretrained("multi30k-de-en").translate("Ein Hund läuft.").text

The core never imports an application, this module included. Names are imported on first use, so ``import showattend`` (and
``showattend --version``) loads no application module.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_names
from ._version import __version__

_NAMES = {"Attention": ".attention", "CheckpointError": ".checkpoint", "PRETRAINED": ".pretrained",
          "list_models": ".pretrained"}

__all__ = ["__version__", *_NAMES]

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .attention import Attention
    from .checkpoint import CheckpointError
    from .pretrained import PRETRAINED, list_models


__getattr__, __dir__ = lazy_names(__name__, _NAMES)
