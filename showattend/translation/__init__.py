"""Attention seq2seq translation on the shared attention core (Bahdanau et al. 2015; Luong et al. 2015).

The public API of this application (names are imported on first use)::

    from showattend.translation import Translator, plot_alignment, train, evaluate
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

_NAMES = {
    "Translator": ".translator", "TranslationResult": ".translator", "TranslatorConfig": ".config", "TranslationTrainConfig": ".config",
    "train": ".train", "evaluate": ".evaluate", "plot_alignment": ".plot",
}

__all__ = list(_NAMES)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .config import TranslationTrainConfig, TranslatorConfig
    from .evaluate import evaluate
    from .plot import plot_alignment
    from .train import train
    from .translator import TranslationResult, Translator


__getattr__, __dir__ = lazy_names(__name__, _NAMES)
