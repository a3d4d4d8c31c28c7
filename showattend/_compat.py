"""Import shims, in one place.

torchvision 0.28.0 is the only torchvision release that matches torch 2.13.0 on PyPI, and it is a CUDA
build. With the CPU build of torch its C extension (``torchvision._C``) cannot load, and
``import torchvision`` then fails in ``torchvision/_meta_registrations.py`` with
``RuntimeError: operator torchvision::nms does not exist``: that module registers fake kernels for
``torchvision::nms`` and ``torchvision::qnms`` unconditionally, although their schemas come from the
extension that did not load.

:func:`import_torchvision` defines those two schemas (exactly as torchvision's C++ code declares them)
when, and only when, they are missing, and then imports torchvision. The models and transforms work;
the operators themselves (NMS) and ``torchvision.io`` image decoding do not, and showattend uses neither
(images are read with Pillow). Every torchvision import in showattend goes through this function.
"""
from __future__ import annotations

import functools

import torch

__all__ = ["import_torchvision"]

_MISSING_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY = None  # keep the Library object alive: dropping it would drop the schemas


def _op_exists(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


@functools.lru_cache(None)
def import_torchvision():
    """Import and return the ``torchvision`` module, registering missing op schemas first if needed.

    Returns:
        the ``torchvision`` module.

    Raises:
        ImportError: torchvision is not installed.
    """
    global _LIBRARY
    try:
        import torchvision  # noqa: F401

        return torchvision
    except RuntimeError as err:
        if "does not exist" not in str(err):
            raise
    # The failed import left partial modules behind: drop them and retry with the schemas defined.
    import sys

    for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[mod]
    missing = {k: v for k, v in _MISSING_SCHEMAS.items() if not _op_exists(k)}
    if missing:
        _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
        for schema in missing.values():
            _LIBRARY.define(schema)
    import torchvision

    return torchvision
