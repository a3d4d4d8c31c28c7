"""The ``showattend`` command line: one tree of commands, each a dataclass parsed by tyro (options from its fields,
help from their docstring entries, choices from ``Literal`` types). The commands live with what they command:
:mod:`showattend.commands` (export, models, and what all commands share), :mod:`showattend.captioning.commands`
and :mod:`showattend.translation.commands`; this module, the program's entry point, is the one place that puts
the applications together.

    showattend [--threads N] [--quiet | --verbose] train | cache | caption | evaluate | export | models
               | translate [train | evaluate] ...

Results go to standard output; messages (progress, warnings, errors) to standard error through the ``showattend``
logger: ``--quiet`` keeps only warnings and errors, ``--verbose`` adds debug messages.

``showattend translate`` translates its arguments (or standard input); a first argument that names one of its
subcommands (``train``, ``evaluate``) selects that subcommand instead. Run ``showattend COMMAND --help`` for a
command's options.
"""
from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import os
import sys
from typing import List, Optional, Tuple

__all__ = ["main", "parse", "UsageError"]

_DESCRIPTION = ("Show, Attend and Tell (Xu et al. 2015): train captioners with visual attention, caption images, "
                "draw attention maps, evaluate with the coco-caption metrics; translate text with Bahdanau or Luong "
                "attention on the same attention core.")


def _tree() -> dict:
    """The command tree: {name: command dataclass, or {subcommand: dataclass} with "" the command itself}."""
    from . import commands as core
    from .captioning import commands as cap
    from .translation import commands as tr

    return {"train": cap.Train, "cache": cap.Cache, "caption": cap.Caption, "evaluate": cap.Evaluate,
            "export": core.Export, "models": core.Models,
            "translate": {"": tr.Translate, "train": tr.TranslateTrain, "evaluate": tr.TranslateEvaluate}}


def _summary(cls) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0].rstrip(".")


def _description(cls) -> str:
    """The command's docstring up to ``Attributes:``, one line per paragraph (the terminal wraps them)."""
    text = inspect.cleandoc(cls.__doc__ or "").split("Attributes:")[0]
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n") if p.strip())


def _usage(tree: dict) -> str:
    lines = [_USAGE, "", _DESCRIPTION, "",
             "commands:"]
    for name, node in tree.items():
        for sub, cls in (node.items() if isinstance(node, dict) else [("", node)]):
            lines.append(f"  {(name + ' ' + sub).strip():<20}{_summary(cls)}")
    lines += ["", "options:", "  -h, --help          show this help message and exit",
              "  --version           show the version and exit",
              "  --threads N         torch CPU threads (default: torch's choice)",
              "  --quiet             only warnings and errors on stderr (results still go to stdout)",
              "  --verbose           also debug messages", "",
              "Run `showattend COMMAND --help` for a command's options."]
    return "\n".join(lines)


_USAGE = "usage: showattend [-h] [--version] [--threads N] [--quiet | --verbose] COMMAND [options]"


@contextlib.contextmanager
def _logging_to_stderr(level: int):
    """While a command runs, the messages of the ``showattend`` loggers go to stderr as plain lines, at ``level``
    and above; afterwards the loggers are as they were (a library user who never calls the CLI sees warnings and
    errors through Python's default handling)."""
    logger = logging.getLogger("showattend")
    saved = logger.level, logger.propagate
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


class UsageError(ValueError):
    """A command line that names no command, an unknown one, or a bad option before it."""


def _split(argv: List[str]) -> Tuple[int, str, type, List[str]]:
    """(threads, command name, command class, its arguments) of a command line without -h/--version
    (--quiet and --verbose are read by :func:`main`).

    Raises:
        UsageError: no command, an unknown command or option, a bad --threads.
    """
    tree = _tree()
    threads, i = 0, 0
    while i < len(argv) and argv[i].startswith("-"):  # the options before the command
        opt, _, value = argv[i].partition("=")
        if opt in ("--quiet", "--verbose"):
            i += 1
            continue
        if opt != "--threads":
            raise UsageError(f"unknown option {argv[i]} before the command")
        if not value:
            i += 1
            value = argv[i] if i < len(argv) else ""
        if not value.lstrip("-").isdigit() or int(value) < 0:
            raise UsageError(f"--threads needs a number of threads >= 0, got {value!r}")
        threads, i = int(value), i + 1
    if i == len(argv):
        raise UsageError("a command is required: " + ", ".join(tree))
    name, rest = argv[i], argv[i + 1:]
    if name not in tree:
        close = difflib.get_close_matches(name, tree, n=1)
        raise UsageError(f"unknown command {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "") +
                         "; the commands are " + ", ".join(tree))
    node = tree[name]
    if not isinstance(node, dict):
        return threads, name, node, rest
    if rest and rest[0] in node and rest[0]:  # translate: a first argument naming a subcommand selects it
        return threads, f"{name} {rest[0]}", node[rest[0]], rest[1:]
    return threads, name, node[""], rest


def _parse(cls, name: str, argv: List[str]):
    """One command's dataclass from its arguments (over its starting settings, for the training commands), every
    setting checked.

    Raises:
        ValueError, FileNotFoundError, CheckpointError: a bad setting, --config file or last.pt.
        SystemExit: tyro's own usage errors (2) and --help (0).
    """
    import tyro

    default = cls.starting_settings(argv) if hasattr(cls, "starting_settings") else None
    kwargs = {"default": default} if default is not None else {}
    command = tyro.cli(cls, args=argv, prog=f"showattend {name}", description=_description(cls), **kwargs)
    if hasattr(command, "validate"):  # every setting, before any long work
        command.validate()
    return command


def parse(argv: List[str]) -> Tuple[str, object]:
    """Parse a ``showattend`` command line (the arguments after ``showattend``) into its command name and
    command dataclass, checking every setting, without running anything (the README test checks its examples
    with it).

    Raises:
        UsageError, ValueError, FileNotFoundError, CheckpointError, SystemExit: as :func:`main` reports them.
    """
    _, name, cls, rest = _split(list(argv))
    return name, _parse(cls, name, rest)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the process exit code: 0 success, 1 failed input, 2 a usage error or a bad setting
    (tyro's own usage errors and ``--help`` exit through SystemExit, with code 2 and 0)."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _main(argv: List[str]) -> int:
    k, head = 0, []
    while k < len(argv) and argv[k].startswith("-"):  # the options before the command
        head.append(argv[k])
        k += 2 if argv[k] == "--threads" else 1
    if any(a in ("-h", "--help") for a in head):
        print(_usage(_tree()))
        return 0
    if "--version" in head:
        from ._version import __version__

        print(f"showattend {__version__}")
        return 0
    if "--quiet" in head and "--verbose" in head:
        print(_USAGE, file=sys.stderr)
        print("showattend: error: --quiet and --verbose exclude each other", file=sys.stderr)
        return 2
    with _logging_to_stderr(logging.WARNING if "--quiet" in head else logging.DEBUG if "--verbose" in head
                            else logging.INFO):
        return _dispatch(argv)


def _dispatch(argv: List[str]) -> int:
    try:
        threads, name, cls, rest = _split(argv)
    except UsageError as err:
        print(_USAGE, file=sys.stderr)
        print(f"showattend: error: {err}", file=sys.stderr)
        return 2
    if threads:
        import torch

        torch.set_num_threads(threads)
    return _run(cls, name, rest)


def _run(cls, name: str, argv: List[str]) -> int:
    """Parse one command's options, check them, run it; errors become one line on stderr and an exit code."""
    from .engine.config import SettingsError
    from .errors import CheckpointError, ImageError

    try:
        command = _parse(cls, name, argv)
    except (FileNotFoundError, ValueError, CheckpointError) as err:  # a bad setting, --config file or last.pt
        print(f"showattend {name}: error: {err}", file=sys.stderr)
        return 2
    try:
        return command.run()
    except SettingsError as err:  # a setting refused once the run's checkpoint was read (--resume)
        print(f"showattend {name}: error: {err}", file=sys.stderr)
        return 2
    except (CheckpointError, ImageError, OSError, ValueError, KeyError) as err:  # OSError: e.g. a full disk
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        if "Original Traceback" in str(msg):  # an error raised in a DataLoader worker: its own last line
            msg = str(msg).strip().splitlines()[-1]
        print(f"showattend {name}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
