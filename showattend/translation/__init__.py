"""Attention seq2seq translation on the shared attention core (Bahdanau et al. 2015; Luong et al. 2015).

The public API of this application (names are imported on first use)::

    from showattend.translation import Translator, plot_alignment, train_translator, evaluate_translator
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'showattend.translation' has no attribute {name!r}")


def __dir__():
    return sorted(set(__all__) | set(globals()))
