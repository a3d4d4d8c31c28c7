"""The errors users see, in a module without heavy imports (the command line's --help loads no torch)."""
from __future__ import annotations

__all__ = ["CheckpointError", "ImageError"]


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, of another kind or of another format version."""


class ImageError(ValueError):
    """An input image is missing, empty, truncated or not an image; the message names the file."""
