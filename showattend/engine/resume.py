"""What a ``--resume`` may change: the settings given again are checked against those ``last.pt`` was saved with,
before any long work (see :func:`check_resume_settings`)."""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Dict, Optional

from .config import EngineConfig, SettingsError
from .task import Task

__all__ = ["BATCH_SETTINGS", "check_resume_settings", "differing_options"]


def differing_options(given, saved, skip=()) -> list:
    """``--option value (the checkpoint: value)`` for each field of the dataclass ``given`` that differs from
    ``saved``'s, fields in ``skip`` aside."""
    return [f"--{k.replace('_', '-')} {v!r} (the checkpoint: {getattr(saved, k)!r})"
            for k, v in vars(given).items() if k not in skip and v != getattr(saved, k)]


#: the engine's settings that fix an epoch's batches: they may change between epochs, not inside one
BATCH_SETTINGS = ("batch_size", "seed", "max_steps")


def check_resume_settings(ckpt: Dict[str, Any], cfg: EngineConfig, task_cls: type = Task,
                          items: Optional[int] = None) -> Dict[str, tuple]:
    """The training settings of ``cfg`` that differ from those ``last.pt`` was saved with, checked before any
    long work: a resumed run cannot change its task's :attr:`Task.fixed_settings` (they made the model or its
    vocabulary), and inside an epoch neither the settings of its batches (:data:`BATCH_SETTINGS`) nor its data
    (:attr:`Task.data_settings`).

    Args:
        ckpt: the ``last.pt`` dict; cfg: the settings of this start; task_cls: the task's class;
        items: the training set's size now, when known (a checkpoint saved inside an epoch records it: a data
            set of another size would give the epoch other batches).

    Returns:
        {setting: (saved value, value now)} of the changes, which the run applies.

    Raises:
        SettingsError: a refused change, naming the settings and why.
    """
    before = json.loads(json.dumps(ckpt.get("train_config", {})))  # tuples and lists compare equal as JSON
    now = json.loads(json.dumps(asdict(cfg)))
    changed = {k: (before[k], v) for k, v in now.items() if k in before and before[k] != v}

    def options(names):
        return ", ".join(f"--{k.replace('_', '-')} ({changed[k][0]!r} -> {changed[k][1]!r})" for k in names)

    fixed = sorted(k for k in changed if k in task_cls.fixed_settings)
    if fixed:
        raise SettingsError(f"--resume continues a run whose model and vocabulary these settings made; they cannot "
                            f"change: {options(fixed)}. Start a new run (another --out-dir, or --init from its "
                            f"best.pt) to change them")
    engine = ckpt.get("engine") or {"pos": 0}
    inside = sorted(k for k in changed if k in BATCH_SETTINGS + tuple(task_cls.data_settings))
    if engine["pos"] and inside:
        raise SettingsError(f"last.pt was saved inside epoch {engine['epoch']}: resuming there needs the same "
                            f"batches and data, but these settings changed: {options(inside)}. Resume with them "
                            f"as they were, and change them once the epoch has ended")
    if engine["pos"] and items is not None and engine.get("items", items) != items:
        raise SettingsError(f"last.pt was saved inside epoch {engine['epoch']} of a training set of "
                            f"{engine['items']} items; it now has {items} (another version of the data, or of "
                            f"showattend's reading of it), so the epoch's batches would differ. Resume with the "
                            f"version that saved it, or resume from an epoch's end")
    return changed
