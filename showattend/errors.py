"""The errors users see, in a module without heavy imports (the command line's --help loads no torch).

The command line's exit codes follow them: an input that is missing, unreadable or wrong (these errors, a missing
file) exits with 1; a bad option, a bad setting from a ``--config`` file, or options that exclude each other
exit with 2 (a ValueError raised while the command line is checked)."""
from __future__ import annotations

__all__ = ["InputError", "CheckpointError", "ImageError"]


class InputError(ValueError):
    """An input file (data, a ``--config`` file) that cannot be read as what it should be; the message names it."""


class CheckpointError(InputError):
    """A checkpoint file is missing, unreadable, of another kind or of another format version."""


class ImageError(InputError):
    """An input image is missing, empty, truncated or not an image; the message names the file."""
