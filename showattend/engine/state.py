"""What a resume restores besides weights and optimizer: every RNG's state, and the heartbeat that lets a
``--resume`` count the time an interruption threw away."""
from __future__ import annotations

import json
import logging
import os
import random
import time
from typing import Any, Dict

import numpy as np
import torch

from ..runs import atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["rng_state", "set_rng_state", "Heartbeat"]


def rng_state() -> Dict[str, Any]:
    """The states of Python's, NumPy's and torch's generators, and of the current CUDA device's (each process
    of a DDP run saves its own)."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # this process's device only: a resume may see another number of GPUs
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states (the CUDA one into the current device)."""
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # saved by an older version: every visible device's state
            cuda = cuda[torch.cuda.current_device()] if torch.cuda.current_device() < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


class Heartbeat:
    """``out_dir/running.json`` while training runs: the wall time spent so far and the step of the last
    checkpoint, rewritten atomically at most once a minute, so that a ``--resume`` after an interruption can
    count the time spent since that checkpoint."""

    FILE = "running.json"

    def __init__(self, out_dir: str, every_s: float = 60.0):
        self.path, self.every_s, self.last = os.path.join(out_dir, self.FILE), every_s, 0.0

    def __call__(self, spent_s: float, saved_step: int, force: bool = False) -> None:
        now = time.time()
        if force or now - self.last >= self.every_s:
            self.last = now
            atomic_write_text(self.path, json.dumps({"spent_s": spent_s, "saved_step": saved_step}))

    @classmethod
    def lost_seconds(cls, out_dir: str, spent_s: float, saved_step: int) -> float:
        """Seconds spent after the checkpoint of ``saved_step`` by a run that died: 0 if no heartbeat of that
        checkpoint's run is found."""
        path = os.path.join(out_dir, cls.FILE)
        if not os.path.exists(path):
            return 0.0
        try:
            with open(path, encoding="utf-8") as f:
                beat = json.load(f)
            if int(beat["saved_step"]) == saved_step:
                return max(0.0, float(beat["spent_s"]) - spent_s)
        except (ValueError, KeyError, TypeError) as e:
            log.warning(f"ignoring unreadable {path} ({e})")
        return 0.0
