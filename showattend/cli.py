"""The ``showattend`` command line: one tree of commands, each a dataclass of :mod:`showattend.commands` parsed
by tyro (options from its fields, help from their docstring entries, choices from ``Literal`` types).

    showattend [--threads N] train | cache | caption | evaluate | export | models | translate [train | evaluate] ...

``showattend translate`` translates its arguments (or standard input); a first argument that names one of its
subcommands (``train``, ``evaluate``) selects that subcommand instead. Run ``showattend COMMAND --help`` for a
command's options.
"""
from __future__ import annotations

import difflib
import inspect
import os
import sys
from typing import List, Optional

__all__ = ["main"]

_DESCRIPTION = ("Show, Attend and Tell (Xu et al. 2015): train captioners with visual attention, caption images, "
                "draw attention maps, evaluate with the coco-caption metrics; translate text with Bahdanau or Luong "
                "attention on the same attention core.")


def _tree() -> dict:
    """The command tree: {name: command dataclass, or {subcommand: dataclass} with "" the command itself}."""
    from . import commands as c

    return {"train": c.Train, "cache": c.Cache, "caption": c.Caption, "evaluate": c.Evaluate, "export": c.Export,
            "models": c.Models, "translate": {"": c.Translate, "train": c.TranslateTrain, "evaluate": c.TranslateEvaluate}}


def _summary(cls) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0].rstrip(".")


def _description(cls) -> str:
    """The command's docstring up to ``Attributes:``, one line per paragraph (the terminal wraps them)."""
    text = inspect.cleandoc(cls.__doc__ or "").split("Attributes:")[0]
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n") if p.strip())


def _usage(tree: dict) -> str:
    lines = ["usage: showattend [-h] [--version] [--threads N] COMMAND [options]", "", _DESCRIPTION, "",
             "commands:"]
    for name, node in tree.items():
        for sub, cls in (node.items() if isinstance(node, dict) else [("", node)]):
            lines.append(f"  {(name + ' ' + sub).strip():<20}{_summary(cls)}")
    lines += ["", "options:", "  -h, --help          show this help message and exit",
              "  --version           show the version and exit",
              "  --threads N         torch CPU threads (default: torch's choice)", "",
              "Run `showattend COMMAND --help` for a command's options."]
    return "\n".join(lines)


def _fail(message: str) -> int:
    print("usage: showattend [-h] [--version] [--threads N] COMMAND [options]", file=sys.stderr)
    print(f"showattend: error: {message}", file=sys.stderr)
    return 2


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the process exit code: 0 success, 1 failed input, 2 a usage error or a bad setting
    (tyro's own usage errors and ``--help`` exit through SystemExit, with code 2 and 0)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    tree = _tree()
    threads, i = 0, 0
    while i < len(argv) and argv[i].startswith("-"):  # the options before the command
        opt, _, value = argv[i].partition("=")
        if opt in ("-h", "--help"):
            print(_usage(tree))
            return 0
        if opt == "--version":
            from . import __version__

            print(f"showattend {__version__}")
            return 0
        if opt != "--threads":
            return _fail(f"unknown option {argv[i]} before the command")
        if not value:
            i += 1
            value = argv[i] if i < len(argv) else ""
        if not value.lstrip("-").isdigit() or int(value) < 0:
            return _fail(f"--threads needs a number of threads >= 0, got {value!r}")
        threads, i = int(value), i + 1
    if i == len(argv):
        return _fail("a command is required: " + ", ".join(tree))
    name, rest = argv[i], argv[i + 1:]
    if name not in tree:
        close = difflib.get_close_matches(name, tree, n=1)
        return _fail(f"unknown command {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "") +
                     "; the commands are " + ", ".join(tree))
    node = tree[name]
    if isinstance(node, dict):  # translate: a first argument naming a subcommand selects it
        if rest and rest[0] in node and rest[0]:
            name, cls, rest = f"{name} {rest[0]}", node[rest[0]], rest[1:]
        else:
            cls = node[""]
    else:
        cls = node
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        return _run(cls, name, rest)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _run(cls, name: str, argv: List[str]) -> int:
    """Parse one command's options (over its starting settings, for the training commands), check them, run it."""
    import tyro

    from .captioning.images import ImageError
    from .checkpoint import CheckpointError

    try:
        default = cls.starting_settings(argv) if hasattr(cls, "starting_settings") else None
        kwargs = {"default": default} if default is not None else {}
        command = tyro.cli(cls, args=argv, prog=f"showattend {name}", description=_description(cls), **kwargs)
        if hasattr(command, "validate"):  # every setting, before any long work
            command.validate()
    except (FileNotFoundError, ValueError, CheckpointError) as err:  # a bad setting, --config file or last.pt
        print(f"showattend {name}: error: {err}", file=sys.stderr)
        return 2
    try:
        return command.run()
    except (CheckpointError, ImageError, FileNotFoundError, ValueError, KeyError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        if "Original Traceback" in str(msg):  # an error raised in a DataLoader worker: its own last line
            msg = str(msg).strip().splitlines()[-1]
        print(f"showattend {name}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
