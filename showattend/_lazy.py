"""Public names imported on first use (PEP 562), so that importing a package stays fast."""
from __future__ import annotations

import importlib
from typing import Callable, Dict, Tuple

__all__ = ["lazy_names"]


def lazy_names(package: str, names: Dict[str, str]) -> Tuple[Callable, Callable]:
    """The ``__getattr__`` and ``__dir__`` of a package whose public ``names`` ({name: relative module}) are
    imported when first used."""
    module = importlib.import_module(package)

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name], package), name)
        setattr(module, name, value)
        return value

    def __dir__():
        return sorted(set(names) | set(vars(module)))

    return __getattr__, __dir__
