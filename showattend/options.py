"""The starting settings of a training command, before its command-line options (which :mod:`showattend.cli`
parses with tyro) override them: the dataclass defaults, then with ``--resume`` the run's own settings (from
``OUT_DIR/last.pt``, so that a resumed run goes on as it started), then those of a ``--config`` file."""
from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from typing import Sequence

__all__ = ["layered_settings", "settings_instance", "read_config", "data_path", "DATA_VARIABLE"]

#: the environment variable naming the folder that the data options default to (flickr8k/, multi30k/ under it)
DATA_VARIABLE = "SHOWATTEND_DATA"


def data_path(*parts: str) -> str:
    """A data option's default: ``parts`` under the folder that ``$SHOWATTEND_DATA`` names, or "" (no default)
    when it is unset, so that a command without ``--data`` says what is missing."""
    root = os.environ.get(DATA_VARIABLE, "")
    return os.path.join(root, *parts) if root else ""


def layered_settings(argv: Sequence[str], classes, default_out_dir: str, ignore=()) -> dict:
    """The settings that the command line of a training command overrides: {field name: (value, source)}.

    Only ``--config``, ``--resume`` and ``--out-dir`` are read from ``argv`` here (they say where the other
    layers are); tyro parses the whole command line afterwards.

    Args:
        argv: the command's arguments (after ``train`` or ``translate train``).
        classes: the command's settings dataclasses (model and training).
        default_out_dir: the training dataclass's default run folder.
        ignore: settings not taken from a checkpoint or a file (set by the program).

    Raises:
        FileNotFoundError: no such ``--config`` file. ValueError: a bad ``--config`` file (see
            :func:`read_config`). CheckpointError: an unreadable ``last.pt`` with ``--resume``.
    """
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default="")
    pre.add_argument("--resume", action="store_true")
    pre.add_argument("--out-dir", default=None)
    known, _ = pre.parse_known_args(list(argv))
    from_file = read_config(known.config, classes, ignore) if known.config else {}
    values = {}
    out_dir = known.out_dir or from_file.get("out_dir") or default_out_dir
    if known.resume and os.path.isfile(os.path.join(out_dir, "last.pt")):
        from .checkpoint import load_checkpoint  # torch: not for --help

        ckpt = load_checkpoint(os.path.join(out_dir, "last.pt"), None)
        values.update({k: v for k, v in ckpt.get("config", {}).items() if k not in ignore})
        values.update(ckpt.get("train_config", {}))
        values = {k: (v, f"{out_dir}/last.pt") for k, v in values.items()}
    values.update({k: (v, known.config) for k, v in from_file.items()})
    return values


def settings_instance(cls, values: dict):
    """``cls`` built from :func:`layered_settings`' values for its fields, each checked against the field's type.

    Raises:
        ValueError: a value of the wrong type, naming the setting and where it came from.
    """
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            value, source = values[f.name]
            kwargs[f.name] = _coerce(value, hints[f.name], f.name, source)
    return cls(**kwargs)


def _coerce(value, hint, name: str, source: str):
    """A file's value as the field's type (YAML reads ``1e-3`` as a string)."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    target = {int: int, float: float, bool: bool, str: str}.get(hint)
    if target is None or value is None or isinstance(value, target) and not (target is int and isinstance(value, bool)):
        return value
    try:
        if target is bool or target is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return target(value)
    except (TypeError, ValueError):
        kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[target]
        raise ValueError(f"{source}: {name} must be {kind}, got {value!r}") from None


def read_config(path: str, classes, ignore=()) -> dict:
    """Settings from a YAML (or JSON) file: flat ``{setting: value}``, or a run's saved ``config.json`` with
    ``{"model": {...}, "train": {...}}``. Names may be spelt as options (``batch-size``) or as fields.

    Raises:
        FileNotFoundError: no such file. ValueError: not YAML, not a mapping, or unknown settings (named).
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"--config {path}: a folder, not a YAML or JSON file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a YAML or JSON file ({str(err).splitlines()[0]})") from None
    if data is None:  # an empty file
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of setting: value")
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
