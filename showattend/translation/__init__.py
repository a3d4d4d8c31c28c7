"""Attention seq2seq translation on the shared attention core (Bahdanau et al. 2015; Luong et al. 2015).

The public API of this application (names are imported on first use)::

    from showattend.translation import Translator, plot_alignment, train_translator, evaluate_translator
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

_NAMES = {
    "Translator": ".translator", "TranslatorConfig": ".model", "TranslationTrainConfig": ".train",
    "train_translator": ".train", "evaluate_translator": ".train", "plot_alignment": ".plot",
}

__all__ = list(_NAMES)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .model import TranslatorConfig
    from .plot import plot_alignment
    from .train import TranslationTrainConfig, evaluate_translator, train_translator
    from .translator import Translator


__getattr__, __dir__ = lazy_names(__name__, _NAMES)
