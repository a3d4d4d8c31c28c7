"""Command-line options from the configuration dataclasses: one ``--field-name`` option per field, its help from
the docstring's ``Attributes:`` entry, choices from ``Literal`` types; settings from ``--config`` files and, for
``--resume``, from the run's checkpoint."""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import typing

__all__ = ["field_docs", "add_dataclass_options", "build_config", "base_settings", "add_run_options"]


def field_docs(cls) -> dict:
    """The entries of the ``Attributes:`` (or ``Args:``) sections of a dataclass's docstring and its bases':
    {field name: text} (a subclass's entry wins).

    An entry is ``name: text`` or ``name_a, name_b: text`` (one text for several fields); lines indented deeper
    than the entry continue its text. Sphinx markup is reduced to plain text for ``--help``.
    """
    docs = {}
    for klass in reversed(cls.__mro__):
        docs.update(_docstring_entries(klass.__doc__ if klass.__dict__.get("__doc__") else ""))
    return docs


def _docstring_entries(doc: str) -> dict:
    docs, names, section, indent = {}, [], None, 0
    for ln in (doc or "").splitlines():
        depth, text = len(ln) - len(ln.lstrip()), ln.strip()
        head, _, rest = text.partition(":")
        if text in ("Attributes:", "Args:"):
            section, names = depth, []
        elif section is None or not text or depth <= section:  # outside the section, or a blank line
            section, names = (None if text else section), []
        elif names and depth > indent:
            for n in names:
                docs[n] += " " + text
        elif rest.strip() and all(n.strip().isidentifier() for n in head.split(",")):
            names, indent = [n.strip() for n in head.split(",")], depth
            for n in names:
                docs[n] = rest.strip()
    return {n: re.sub(r":\w+:`~?(?:[\w.]*\.)?(\w+)`", r"\1", t).replace("``", "") for n, t in docs.items()}


def add_dataclass_options(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One ``--field-name`` option per dataclass field, defaulting to None (= keep the dataclass default)."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_line = docs.get(f.name, "")
        default = f.default
        if typing.get_origin(hints[f.name]) is typing.Literal:  # choices from the field's Literal type
            parser.add_argument(flag, dest=f.name, choices=typing.get_args(hints[f.name]), default=None,
                                help=f"{help_line} (default: {default})")
        elif f.type in (bool, "bool"):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{help_line} (default: {default})")
        else:
            typ = {"int": int, "float": float}.get(str(f.type), None) or \
                (type(default) if default is not None and not isinstance(default, str) else str)
            parser.add_argument(flag, dest=f.name, type=typ, default=None, help=f"{help_line} (default: {default})")


def build_config(cls, args, skip=()):
    """The dataclass from the options given on the command line over the ``--config`` file's settings over its
    defaults."""
    base = getattr(args, "config_values", None) or {}
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
        elif f.name in base:
            values[f.name] = _coerce(base[f.name], hints[f.name], f.name, args.config or "last.pt's settings")
    return cls(**values)


def _coerce(value, hint, name: str, path: str):
    """A config-file value as the field's type (YAML reads ``1e-3`` as a string)."""
    target = {int: int, float: float, bool: bool, str: str}.get(hint)
    if target is None or value is None or isinstance(value, target) and not (target is int and isinstance(value, bool)):
        return value
    try:
        if target is bool or target is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return target(value)
    except (TypeError, ValueError):
        kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[target]
        raise ValueError(f"{path}: {name} must be {kind}, got {value!r}") from None


def base_settings(args, classes, default_out_dir: str, ignore=()) -> dict:
    """The settings the command line overrides: with ``--resume``, the run's own (from ``OUT_DIR/last.pt``), so
    that a resumed run goes on as it started; then those of a ``--config`` file."""
    from .checkpoint import load_checkpoint

    from_file = _read_config(args.config, classes, ignore) if args.config else {}
    values = {}
    out_dir = args.out_dir or from_file.get("out_dir") or default_out_dir
    if args.resume and os.path.isfile(os.path.join(out_dir, "last.pt")):
        ckpt = load_checkpoint(os.path.join(out_dir, "last.pt"), None)
        values.update({k: v for k, v in ckpt.get("config", {}).items() if k not in ignore})
        values.update(ckpt.get("train_config", {}))
    values.update(from_file)
    return values


def _read_config(path: str, classes, ignore=()) -> dict:
    """Settings from a YAML (or JSON) file: flat ``{setting: value}``, or a run's saved ``config.json`` with
    ``{"model": {...}, "train": {...}}``.

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
            flat[str(k).replace("-", "_")] = v  # batch-size: as the option is spelt works too
    known = {f.name for c in classes for f in dataclasses.fields(c)}
    unknown = sorted(set(flat) - known - set(ignore))
    if unknown:
        raise ValueError(f"{path}: unknown settings {', '.join(unknown)}")
    return {k: v for k, v in flat.items() if k not in ignore}


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of both training commands that are about the run, not its settings."""
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT_DIR/last.pt exactly where it was saved, with the run's own settings "
                             "(options given again override them)")
    parser.add_argument("--overwrite", action="store_true", help="a new run replaces the run files in OUT_DIR")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML or JSON file of settings (option names with underscores, e.g. batch_size: 32), or "
                             "a run's config.json; options given on the command line win")
