"""Reading images with Pillow: mode conversion, resizing, and clear errors for bad files."""
from __future__ import annotations

import os
import warnings
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

__all__ = ["ImageError", "open_rgb", "load_image", "TRANSFORM"]

#: what :func:`load_image` does to a file; the feature cache records it and is keyed by it, so change it whenever
#: load_image changes what it returns
TRANSFORM = "Pillow RGB (alpha on white), bicubic resize to size x size (aspect ratio not kept), float in [0, 1]"


class ImageError(ValueError):
    """An input image is missing, empty, truncated or not an image; the message names the file."""


def open_rgb(path: Union[str, os.PathLike], max_side: int = 4096) -> Image.Image:
    """Open an image file as an RGB PIL image.

    Grayscale, palette, RGBA/LA (composited on white) and CMYK images are converted to RGB. Images larger
    than ``max_side`` on either side are reduced while decoding (JPEG draft mode) and then downscaled, so a
    very large photo costs neither much memory nor Pillow's decompression-bomb error.

    Args:
        path: image file.
        max_side: longest side kept after opening, in pixels.

    Returns:
        a loaded ``PIL.Image.Image`` in mode RGB.

    Raises:
        ImageError: the file is missing, empty, truncated, or not an image Pillow can read.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise ImageError(f"{path}: empty file")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(path)
                if max(img.size) > max_side and img.format == "JPEG":
                    img.draft("RGB", (max_side, max_side))
                img.load()
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file Pillow can identify") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: cannot decode image ({err})") from None
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side))
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def load_image(path: Union[str, os.PathLike], size: int = 224) -> torch.Tensor:
    """Read an image into a float tensor ready for an encoder.

    The image is resized to ``size`` x ``size`` (bicubic, aspect ratio not kept, as the shared Flickr8k copy
    was made).

    Args:
        path: image file.
        size: output side in pixels.

    Returns:
        (3, size, size) float32 RGB in [0, 1].

    Raises:
        ImageError: see :func:`open_rgb`.
    """
    img = open_rgb(path).resize((size, size), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # (3, H, W)
