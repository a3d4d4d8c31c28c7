"""The layers of a training command's settings beneath its command line (which :mod:`showattend.cli` parses once,
with tyro): the dataclass defaults, the defaults of a kind of run (``--scst``, ``--init``), with ``--resume`` the
run's own settings (from ``OUT_DIR/last.pt``, so that a resumed run goes on as it started), then those of a
``--config`` file; the options given on the command line win over all of them. A setting from a file goes through
the same checks as the same option on the command line."""
from __future__ import annotations

import dataclasses
import os
import typing
from typing import Sequence, Set

__all__ = ["given_options", "run_settings", "rebuild", "read_config", "data_path", "data_hint", "DATA_VARIABLE"]

#: the environment variable naming the folder that the data options default to (flickr8k/, multi30k/ under it)
DATA_VARIABLE = "SHOWATTEND_DATA"


def data_path(*parts: str) -> str:
    """A data option's default: ``parts`` under the folder that ``$SHOWATTEND_DATA`` names, or "" (no default)
    when it is unset, so that a command without ``--data`` says what is missing."""
    root = os.environ.get(DATA_VARIABLE, "")
    return os.path.join(root, *parts) if root else ""


def data_hint(label: str) -> str:
    """The ``--help`` note of a data option's default (tyro's ``help_behavior_hint``): the path, or that there is
    none while ``$SHOWATTEND_DATA`` is unset (instead of an empty ``(default: )``)."""
    return f"(default: {label})" if label.strip("'\"() ") else f"(default: none, ${DATA_VARIABLE} is unset)"


def given_options(argv: Sequence[str]) -> Set[str]:
    """The settings named on a command line, as field names (``--batch-size 32`` and ``--batch-size=32``:
    ``batch_size``; ``--no-progress``: ``progress``), so that the layers beneath the command line leave them as
    given. Only names are read here: tyro parses the command line, values and all; after ``--`` come positional
    arguments."""
    names = set()
    for arg in argv:
        if arg == "--":
            break
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0].replace("-", "_")
            names.update((name, name[3:]) if name.startswith("no_") else (name,))
    return names


def run_settings(out_dir: str, ignore=()) -> dict:
    """A run's own settings, from ``OUT_DIR/last.pt`` (none when there is no such file): {field: (value, source)}.

    Raises:
        CheckpointError: an unreadable ``last.pt``.
    """
    path = os.path.join(out_dir, "last.pt")
    if not os.path.isfile(path):
        return {}
    from .checkpoint import load_checkpoint  # torch: not for --help

    ckpt = load_checkpoint(path, None)
    values = {k: v for k, v in ckpt.get("config", {}).items() if k not in ignore}
    values.update(ckpt.get("train_config", {}))
    return {k: (v, f"{out_dir}/last.pt") for k, v in values.items()}


def rebuild(cls, parsed, given: Set[str], values: dict):
    """``cls`` with the settings given on the command line as tyro parsed them (in ``parsed``), the others from
    ``values`` ({field: (value, source)}, checked against the field's type) or, missing there, its defaults.

    Raises:
        ValueError: a value of the wrong type, naming the setting and where it came from; or one that ``cls``
            refuses.
    """
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in given:
            kwargs[f.name] = getattr(parsed, f.name)
        elif f.name in values:
            value, source = values[f.name]
            kwargs[f.name] = _coerce(value, hints[f.name], f.name, source)
    return cls(**kwargs)


def _coerce(value, hint, name: str, source: str):
    """A file's (or a checkpoint's) value as the field's type, refused as the command line would refuse it:
    ``epochs: true`` is not 1, ``epochs:`` (null) is no number; YAML reads ``1e-3`` as a string, which is taken.

    Raises:
        ValueError: named after the setting and its source.
    """
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        if value is None:
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise ValueError(f"{source}: {name} must be one of {', '.join(map(str, typing.get_args(hint)))}, "
                             f"got {value!r}")
        return value
    if origin is tuple:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items or not all(isinstance(x, str) and x for x in items):
            raise ValueError(f"{source}: {name} must be a file name or a list of them, got {value!r}")
        return tuple(items)
    target = {int: int, float: float, bool: bool, str: str}.get(hint)
    if target is None:
        return value
    kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[target]
    wrong = target is str and not isinstance(value, (str, int, float))  # a number is taken as its text
    if value is None or isinstance(value, bool) != (target is bool) or wrong:
        raise ValueError(f"{source}: {name} must be {kind}, got {'null' if value is None else repr(value)}")
    try:
        if target is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return target(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: {name} must be {kind}, got {value!r}") from None


def read_config(path: str, classes, ignore=()) -> dict:
    """Settings from a YAML (or JSON) file: flat ``{setting: value}``, or a run's saved ``config.json`` with
    ``{"model": {...}, "train": {...}}``. Names may be spelt as options (``batch-size``) or as fields.

    Raises:
        FileNotFoundError: no such file. InputError: a folder, not YAML, or not a mapping. ValueError: unknown
            settings (named).
    """
    import yaml

    from .errors import InputError

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"--config {path}: a folder, not a YAML or JSON file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a YAML or JSON file ({str(err).splitlines()[0]})") from None
    if data is None:  # an empty file
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of setting: value")
    flat = {}
    for k, v in data.items():
        if k in ("model", "train") and isinstance(v, dict):
            flat.update({str(a).replace("-", "_"): b for a, b in v.items()})
        elif k not in ("world", "resumed_at_step", "resolved"):  # what config.json records about the run itself
            flat[str(k).replace("-", "_")] = v
    known = {f.name for c in classes for f in dataclasses.fields(c)}
    unknown = sorted(set(flat) - known - set(ignore))
    if unknown:
        raise ValueError(f"{path}: unknown settings {', '.join(unknown)}")
    return {k: v for k, v in flat.items() if k not in ignore}
