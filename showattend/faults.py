"""Fault injection for the kill-and-resume tests, in one place: a process that reaches a named point kills
itself with SIGKILL, as a power cut or the OOM killer would, so that the tests can check what it leaves behind.

Set by the tests through the environment (unset, or 0, means never):

* ``SHOWATTEND_KILL_AT_STEP=N``: the training engine dies right after optimizer step N, before any checkpoint of
  that step is written;
* ``SHOWATTEND_KILL_AT_CACHE_ROW=N``: the feature-cache build dies once row N is written to the partial array,
  before the progress file counts it;
* ``SHOWATTEND_SLOW_SAVE_S=S``: a checkpoint write pauses S seconds before its rename, so that an outside kill
  can land inside it.
"""
from __future__ import annotations

import os
import signal
import time

__all__ = ["KILL_POINTS", "kill_if_reached", "slow_save"]

#: point name -> environment variable
KILL_POINTS = {"step": "SHOWATTEND_KILL_AT_STEP", "cache_row": "SHOWATTEND_KILL_AT_CACHE_ROW"}


def kill_if_reached(point: str, before: int, now: int) -> None:
    """SIGKILL this process if the environment asks for a kill at ``point`` and the count has just reached it
    (``before`` < N <= ``now``: a run resumed beyond N is not killed again).

    Raises:
        KeyError: an unknown point.
    """
    at = int(os.environ.get(KILL_POINTS[point], "0") or 0)
    if at and before < at <= now:
        os.kill(os.getpid(), signal.SIGKILL)


def slow_save() -> None:
    """Pause a checkpoint write by ``SHOWATTEND_SLOW_SAVE_S`` seconds (0 by default)."""
    seconds = float(os.environ.get("SHOWATTEND_SLOW_SAVE_S", "0") or 0)
    if seconds:
        time.sleep(seconds)
