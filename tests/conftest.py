import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
ASSETS = os.path.join(ROOT, "assets")


def shared_path(*parts):
    """Path under ../shared/data, or skip the test when it is absent (e.g. on a user's machine)."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"shared data not available: {path}")
    return path
