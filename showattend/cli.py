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
import io
import logging
import os
import sys
from dataclasses import dataclass, field
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


@dataclass
class _Line:
    """A command line, read once: the options before the command, then the command and its arguments."""

    threads: int = 0
    quiet: bool = False
    verbose: bool = False
    help: bool = False
    version: bool = False
    name: str = ""
    command: Optional[type] = None
    rest: List[str] = field(default_factory=list)


def _read(argv: List[str]) -> _Line:
    """The options before the command, and the command with its arguments (not parsed yet: tyro does that).

    Raises:
        UsageError: an unknown option before the command (even beside --help or --version), a bad --threads, no
            command (unless --help or --version), an unknown one.
    """
    line, i = _Line(), 0
    while i < len(argv) and argv[i].startswith("-"):
        opt, eq, value = argv[i].partition("=")
        flag = {"-h": "help", "--help": "help", "--version": "version", "--quiet": "quiet", "--verbose": "verbose"}
        if opt in flag and not eq:
            setattr(line, flag[opt], True)
        elif opt == "--threads":
            if not eq:
                i += 1
                value = argv[i] if i < len(argv) else ""
            if not value.isdigit():
                raise UsageError(f"--threads needs a number of threads >= 0, got {value!r}")
            line.threads = int(value)
        else:
            raise UsageError(f"unknown option {argv[i]} before the command")
        i += 1
    if line.help or line.version:
        return line
    if line.quiet and line.verbose:
        raise UsageError("--quiet and --verbose exclude each other")
    tree = _tree()
    if i == len(argv):
        raise UsageError("a command is required: " + ", ".join(tree))
    line.name, line.rest = argv[i], argv[i + 1:]
    if line.name not in tree:
        close = difflib.get_close_matches(line.name, tree, n=1)
        raise UsageError(f"unknown command {line.name!r}" + (f" (did you mean {close[0]!r}?)" if close else "") +
                         "; the commands are " + ", ".join(tree))
    node = tree[line.name]
    line.command = node
    if isinstance(node, dict):  # translate: a first argument naming a subcommand selects it
        sub = line.rest[0] if line.rest and line.rest[0] in node and line.rest[0] else ""
        line.command, line.name = node[sub], f"{line.name} {sub}".strip()
        line.rest = line.rest[1:] if sub else line.rest
    return line


def _tyro_error(text: str) -> str:
    """tyro's boxed usage error as one line: its message. The box (a title, then sections between rules: the
    message, the option's help, where to find help) is drawn with box characters on a terminal and with dashes
    elsewhere."""
    sections, current = [], []
    for row in text.splitlines():
        row = row.strip().strip("│").strip()
        title = row.startswith("╭")
        row = row.strip("╭╮╰╯─ ") if title or row.startswith("╰") else row
        if title or not row or set(row) <= set("-─"):  # a rule: the section before it ends
            sections += [current, [row]] if title else [current]
            current = []
        else:
            current.append(row)
    parts = [s for s in sections + [current] if s]
    message = " ".join(" ".join(parts[1] if len(parts) > 1 else parts[0] if parts else ["bad command line"]).split())
    close = [w for p in parts if p[0].startswith(("Perhaps you meant", "Arguments similar"))
             for w in " ".join(p[1:]).split() if w.startswith("--")]
    return message + (f" (did you mean {close[0]}?)" if close else "")


def _parse(cls, name: str, argv: List[str]):
    """One command's dataclass from its arguments, parsed once by tyro; a training command then puts the layers
    of settings beneath them (--scst's and --init's defaults, --resume's run, --config's file); every setting is
    checked.

    Raises:
        UsageError: tyro refused the command line (its message, one line).
        InputError, FileNotFoundError: a missing or unreadable --config file, last.pt or --init checkpoint.
        ValueError: a bad setting (from the command line or a --config file), options that exclude each other.
        SystemExit: --help (0).
    """
    import tyro

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            command = tyro.cli(cls, args=argv, prog=f"showattend {name}", description=_description(cls))
    except SystemExit as exit_:
        if exit_.code:
            raise UsageError(_tyro_error(errors.getvalue())) from None
        raise
    if hasattr(command, "settle"):
        command.settle(argv)
    if hasattr(command, "validate"):  # every setting, before any long work
        command.validate()
    return command


def parse(argv: List[str]) -> Tuple[str, object]:
    """Parse a ``showattend`` command line (the arguments after ``showattend``) into its command name and
    command dataclass, checking every setting, without running anything (the README test checks its examples
    with it).

    Raises:
        UsageError, ValueError, InputError, FileNotFoundError, SystemExit: as :func:`main` reports them.
    """
    line = _read(list(argv))
    return line.name, _parse(line.command, line.name, line.rest)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the process exit code: 0 success; 1 an input that is missing, unreadable or wrong
    (a file, an image, a checkpoint, data), or a run that failed; 2 a bad command line: an unknown command or
    option, a bad value (also from a --config file), options that exclude each other; 130 interrupted."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _main(argv: List[str]) -> int:
    try:
        line = _read(argv)
    except UsageError as err:
        print(_USAGE, file=sys.stderr)
        print(f"showattend: error: {err}", file=sys.stderr)
        return 2
    if line.help:
        print(_usage(_tree()))
        return 0
    if line.version:
        from ._version import __version__

        print(f"showattend {__version__}")
        return 0
    if line.threads:
        import torch

        torch.set_num_threads(line.threads)
    with _logging_to_stderr(logging.WARNING if line.quiet else logging.DEBUG if line.verbose else logging.INFO):
        return _run(line.command, line.name, line.rest)


def _run(cls, name: str, argv: List[str]) -> int:
    """Parse one command's options, check them, run it; errors become one line on stderr and an exit code
    (see :func:`main`)."""
    from .engine.config import SettingsError
    from .errors import InputError

    try:
        command = _parse(cls, name, argv)
    except UsageError as err:
        print(f"showattend {name}: error: {err} (see showattend {name} --help)", file=sys.stderr)
        return 2
    except (InputError, FileNotFoundError) as err:  # an input read while the settings are put together
        print(f"showattend {name}: error: {err}", file=sys.stderr)
        return 1
    except ValueError as err:  # a bad setting
        print(f"showattend {name}: error: {err}", file=sys.stderr)
        return 2
    try:
        return command.run()
    except BrokenPipeError:  # not an error of the command: main() stops quietly
        raise
    except SettingsError as err:  # a setting refused once the run's checkpoint was read (--resume)
        print(f"showattend {name}: error: {err}", file=sys.stderr)
        return 2
    except (InputError, OSError, ValueError, KeyError) as err:  # OSError: e.g. a full disk
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        if "Original Traceback" in str(msg):  # an error raised in a DataLoader worker: its own last line
            msg = str(msg).strip().splitlines()[-1]
        print(f"showattend {name}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
