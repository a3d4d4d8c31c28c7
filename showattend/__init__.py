"""showattend: "Show, Attend and Tell" (Xu et al., ICML 2015) in PyTorch, on one shared attention core.

The package is the core (attention, search, checkpoints, the training engine, the registry of bundled models)
and two applications of it, each with its own public API: ``showattend.captioning`` (``Captioner``,
``open_rgb``, ``load_image``, ``plot_attention``, ``train``, ``evaluate``) and ``showattend.translation``
(``Translator``, ``plot_alignment``, ``train``, ``evaluate``). Their user-facing objects are also here::

    from showattend import Captioner, Translator
    Captioner.from_pretrained("flickr8k-lite2-soft").caption("photo.jpg").text
    Translator.from_pretrained("multi30k-de-en").translate("Ein Hund läuft.").text

Every name is imported on first use, so ``import showattend`` (and ``showattend --version``) loads no
application module. The core's modules never import an application: ``Captioner`` and ``Translator`` are named
here by module path only (no import statement, not even for type checkers), so the package root is the public
face of both applications without the core depending on either.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_names
from ._version import __version__

_NAMES = {"Attention": ".attention", "CheckpointError": ".checkpoint", "PRETRAINED": ".pretrained",
          "list_models": ".pretrained",
          "Captioner": ".captioning.captioner", "Translator": ".translation.translator"}  # the applications' faces

__all__ = ["__version__", *_NAMES]

if TYPE_CHECKING:  # what type checkers and IDEs see (the applications' names: their own modules)
    from .attention import Attention
    from .checkpoint import CheckpointError
    from .pretrained import PRETRAINED, list_models


__getattr__, __dir__ = lazy_names(__name__, _NAMES)
