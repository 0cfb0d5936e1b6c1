"""Image files: finding them in a folder, decoding any mode to RGB pixels of one size.

Decoding applies the EXIF orientation, flattens transparency on white (a transparent logo on
black would read as a different picture), scales 16-bit grey to 8 bits, and squashes the image
to ``size x size`` (the whole picture is kept, so every grid region sees part of it). A file
that cannot be decoded (not an image, truncated, a decompression bomb) is reported by name with
the decoder's reason, never silently dropped.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)


def find_images(folder: str | os.PathLike) -> dict[str, Path]:
    """Image files under ``folder`` (recursively; hidden files and folders, such as macOS's
    ``._NAME.jpg`` companions, skipped), by their path relative to it with ``/`` separators, in
    sorted order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"jwae_ext: image folder {folder} does not exist")
    found = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                path = Path(root, name)
                found[path.relative_to(folder).as_posix()] = path
    return dict(sorted(found.items()))


class UnreadableImage(Exception):
    """An image file that cannot be decoded; the message says why."""


def load_rgb(path: str | os.PathLike, size: int) -> np.ndarray:
    """The image at ``path`` as ``(size, size, 3)`` uint8 RGB (see the module docstring).
    Raises :class:`UnreadableImage` with the decoder's reason."""
    try:
        with warnings.catch_warnings():
            # Big panoramas warn; only Pillow's hard limit (DecompressionBombError) skips a file.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return rgb_pixels(image, size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImage(f"{type(err).__name__}: {err}") from None


def rgb_pixels(image: Image.Image, size: int) -> np.ndarray:
    """An opened image (a file :func:`load_rgb` opened, or one in hand: a query of
    :mod:`jwae_ext.search`) as ``(size, size, 3)`` uint8 RGB."""
    # JPEG decoders can scale down by 1/2..1/8 while decoding: much faster on photos.
    image.draft("RGB", (size, size))
    image.load()
    rgb = to_rgb(ImageOps.exif_transpose(image))
    rgb = rgb.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(rgb, dtype=np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` in RGB: 16-bit grey scaled to 8 bits, transparency flattened on white (what
    the decoding of indexed images and of thumbnails both do)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey: convert("L") would clip at 255 instead of scaling.
        grey = np.asarray(image.convert("I"), dtype=np.int64)
        top = 65535 if image.mode.startswith("I;16") else max(int(grey.max()), 1)
        grey = (np.clip(grey, 0, top) * 255 + top // 2) // top
        return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")
