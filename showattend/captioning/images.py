"""Reading images with Pillow from any source (files, folders, http(s) URLs, PIL images, numpy arrays, tensors):
EXIF orientation, mode conversion, resizing, and clear errors for bad input."""
from __future__ import annotations

import errno
import io
import os
import stat
import warnings
import zlib
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import ImageError

__all__ = ["ImageError", "ImageSource", "open_rgb", "load_image", "fetch", "is_url", "check_file", "expand_inputs",
           "TRANSFORM", "MAX_PIXELS", "IMAGE_EXTENSIONS"]

#: what :func:`load_image` does to a file; the feature cache records it and is keyed by it, so change it whenever
#: load_image changes what it returns
TRANSFORM = ("Pillow RGB (EXIF orientation applied, alpha on white), bicubic resize to size x size (aspect ratio "
             "not kept), float in [0, 1]")

#: an image as the API takes it: a file path or http(s) URL, a PIL image, an (H, W, 3) numpy array (uint8, or
#: float in [0, 1]) or a (3, H, W) tensor in [0, 1]
ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]

#: downloads of images given by URL stop after this many seconds and bytes
URL_TIMEOUT_S, URL_MAX_BYTES = 20.0, 50 * 2 ** 20


#: the most pixels an image may have (Pillow's decompression-bomb limit, ~89.5 million); a JPEG may have 64 times
#: more, since it is decoded at 1/8 of its side (draft mode)
MAX_PIXELS = 89_478_485


#: the file extensions a folder given as input is searched for
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")


def is_url(source) -> bool:
    """Whether ``source`` is an http(s) URL string."""
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


def expand_inputs(paths: Sequence[str], stdin=None):
    """Image sources from the command line: each folder replaced by the image files under it (recursively, by
    extension, sorted), ``-`` by the paths or URLs listed on standard input (one per line), a glob pattern that
    names no file by the files it matches; URLs and other paths kept as given (:func:`open_rgb` reports what is
    wrong with them).

    Returns:
        (sources, errors): what to caption, and {argument: message} for folders or patterns with no image.
    """
    import glob
    import sys

    out, errors = [], {}
    for p in paths:
        if p == "-":
            out += [ln.strip() for ln in (stdin or sys.stdin) if ln.strip()]
            continue
        if is_url(p) or os.path.lexists(p) and not os.path.isdir(p):
            out.append(p)
            continue
        if not os.path.lexists(p) and glob.has_magic(p):
            found = sorted(glob.glob(p, recursive=True))
            if not found:
                errors[p] = f"{p}: no file matches this pattern"
            out += found
            continue
        if not os.path.isdir(p):
            out.append(p)
            continue
        found = sorted(os.path.join(d, f) for d, _, files in os.walk(p) for f in files
                       if f.lower().endswith(IMAGE_EXTENSIONS))
        if not found:
            errors[p] = f"{p}: a folder without images (looked for {', '.join(IMAGE_EXTENSIONS)})"
        out += found
    return out, errors


def check_file(path: str) -> None:
    """Say what is wrong with a path that should be a readable file.

    Raises:
        ImageError: no such file, a broken symbolic link or a link loop, a folder, not a regular file (a FIFO,
            a device), or an empty file.
    """
    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ImageError(f"{path}: symbolic link loop") from None
        if os.path.islink(path):
            raise ImageError(f"{path}: broken symbolic link (to {os.readlink(path)})") from None
        raise ImageError(f"{path}: no such file") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{path}: a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"{path}: not a regular file (a pipe, socket or device)")
    if st.st_size == 0:
        raise ImageError(f"{path}: empty file")


def fetch(url: str, timeout: float = URL_TIMEOUT_S, max_bytes: int = URL_MAX_BYTES) -> bytes:
    """Download an image given by URL (urllib), with a timeout and a size limit.

    Raises:
        ImageError: the download failed (HTTP status, network error, timeout), returned nothing, or is larger
            than ``max_bytes``; the message names the URL.
    """
    import urllib.error
    import urllib.request

    from .._version import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"showattend/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read(max_bytes + 1)
    except urllib.error.HTTPError as err:
        raise ImageError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise ImageError(f"{url}: cannot download ({reason})") from None
    if len(data) > max_bytes:
        raise ImageError(f"{url}: more than {max_bytes / 2 ** 20:.0f} MB; download it first")
    if not data:
        raise ImageError(f"{url}: the server sent no data")
    return data


def open_rgb(source: ImageSource, max_side: int = 4096) -> Image.Image:
    """Open an image as an RGB PIL image, its EXIF orientation applied (a phone photo stored on its side comes
    out upright).

    Grayscale, palette, RGBA/LA (composited on white) and CMYK images are converted to RGB. Images larger
    than ``max_side`` on either side are reduced while decoding (JPEG draft mode) and then downscaled. Images
    of more than :data:`MAX_PIXELS` pixels (64 times more for a JPEG) are refused before they are decoded
    (Pillow's decompression-bomb guard), and so is image data that ends early: never padded with black.

    Args:
        source: an image file, an http(s) URL (downloaded with a timeout and a size limit: :func:`fetch`), a
            PIL image, an (H, W, 3) numpy array (uint8, or float in [0, 1]) or a (3, H, W) tensor in [0, 1].
        max_side: longest side kept after opening, in pixels.

    Returns:
        a loaded ``PIL.Image.Image`` in mode RGB.

    Raises:
        ImageError: the file is missing, not a regular file, empty, too large, truncated, or not an image
            Pillow can read (see also :func:`check_file`); the download failed; an array of another shape.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(source), max_side)
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return Image.fromarray(_as_uint8_hwc(source))
    if is_url(source):
        return _decode(io.BytesIO(fetch(source)), source, max_side)
    path = os.fspath(source)
    check_file(path)
    return _decode(path, path, max_side)


def _as_uint8_hwc(array) -> np.ndarray:
    """An (H, W, 3) uint8 array from an (H, W, 3) numpy array or a (3, H, W) tensor (uint8, or float in [0, 1])."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        if array.ndim != 3 or array.shape[0] != 3:
            raise ImageError(f"an image tensor must be (3, H, W), got {tuple(array.shape)}")
        array = array.permute(1, 2, 0).numpy()
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageError(f"an image array must be (H, W, 3), got {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(np.asarray(array, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def _decode(fp, name: str, max_side: int) -> Image.Image:
    """Decode a file (path or file object) named ``name`` in messages: the size guard, JPEG draft mode, the
    truncation checks, EXIF orientation, RGB."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    path = name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(fp)
                w, h = img.size
                if w * h > MAX_PIXELS * (64 if img.format == "JPEG" else 1):
                    raise ImageError(f"{path}: {w} x {h} pixels ({w * h / 1e6:.0f} million) is over the limit of "
                                     f"{MAX_PIXELS * (64 if img.format == 'JPEG' else 1) / 1e6:.0f} million "
                                     f"(Pillow's decompression-bomb guard); downscale it first")
                if max(img.size) > max_side and img.format == "JPEG":
                    img.draft("RGB", (max_side, max_side))
                img.load()
                if img.format == "PNG":
                    if hasattr(fp, "getvalue"):
                        _check_png_data(fp.getvalue(), name)
                    else:
                        with open(fp, "rb") as f:
                            _check_png_data(f.read(), name)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file Pillow can identify") from None
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, ImageError):
            raise
        if "truncated" in str(err):
            raise ImageError(f"{path}: truncated image: the file ends before its image data ({err})") from None
        raise ImageError(f"{path}: damaged image data that Pillow cannot decode ({err})") from None
    return _to_rgb(ImageOps.exif_transpose(img), max_side)


def _to_rgb(img: Image.Image, max_side: int) -> Image.Image:
    if max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side))
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def _check_png_data(data: bytes, path: str) -> None:
    """Raise ImageError if a PNG's compressed data holds fewer bytes than its header's rows need (Pillow pads
    the missing rows with black)."""
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        n, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        if kind == b"IHDR":
            header = data[pos + 8:pos + 8 + 13]
        elif kind == b"IDAT":
            idat.append(data[pos + 8:pos + 8 + n])
        pos += 12 + n
    if header is None or len(header) < 13:
        return
    w, h, depth, colour, interlace = (int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big"),
                                      header[8], header[9], header[12])
    bits = depth * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 1)
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)] \
        if interlace else [(0, 0, 1, 1)]
    need = 0
    for x0, y0, dx, dy in passes:
        pw, ph = -(-(w - x0) // dx), -(-(h - y0) // dy)
        if pw > 0 and ph > 0:
            need += ph * (1 + -(-pw * bits // 8))
    inflate, got = zlib.decompressobj(), 0
    try:
        for chunk in idat:
            got += len(inflate.decompress(chunk, max(1, need - got)))
            while inflate.unconsumed_tail and got < need:
                got += len(inflate.decompress(inflate.unconsumed_tail, need - got))
            if got >= need:
                return
    except zlib.error as err:
        raise ImageError(f"{path}: damaged PNG data ({err})") from None
    raise ImageError(f"{path}: truncated image: its data ends after {got * 100 // max(need, 1)}% of the rows "
                     f"({w} x {h} pixels declared)")


def load_image(source: ImageSource, size: int = 224) -> torch.Tensor:
    """Read an image into a float tensor ready for an encoder.

    The image is resized to ``size`` x ``size`` (bicubic, aspect ratio not kept, as the shared Flickr8k copy
    was made). A (3, H, W) float tensor is resized as it is (bicubic, antialiased), without a round trip
    through 8-bit pixels.

    Args:
        source: any :data:`ImageSource` (see :func:`open_rgb`).
        size: output side in pixels.

    Returns:
        (3, size, size) float32 RGB in [0, 1].

    Raises:
        ImageError: see :func:`open_rgb`.
    """
    if isinstance(source, torch.Tensor) and source.is_floating_point():
        if source.ndim != 3 or source.shape[0] != 3:
            raise ImageError(f"an image tensor must be (3, H, W), got {tuple(source.shape)}")
        x = source.detach().float().cpu()
        if tuple(x.shape[1:]) != (size, size):
            x = torch.nn.functional.interpolate(x[None], size=(size, size), mode="bicubic", antialias=True,
                                                align_corners=False)[0].clamp(0, 1)
        return x.contiguous()
    img = open_rgb(source).resize((size, size), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # (3, H, W)
