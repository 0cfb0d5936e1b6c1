"""Thumbnails of indexed images: at most 256 px on the longer side, JPEG, kept in a bounded
least-recently-used cache.

Only files the index names are read, and only when their real path (symbolic links resolved)
lies inside the indexed folder: a link that was swapped in, or that pointed outside the photo
folder when it was indexed, serves nothing.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageOps

from jwae_ext.extract.images import to_rgb

THUMBNAIL_SIZE = 256
JPEG_QUALITY = 85


class ThumbnailUnavailable(LookupError):
    """An indexed image with no thumbnail to give (no file, outside the folder, unreadable)."""


def make_thumbnail(path: Path) -> bytes:
    """The image at ``path`` as JPEG bytes, at most ``THUMBNAIL_SIZE`` px on its longer side,
    upright (EXIF orientation applied), transparency on white."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            # JPEG decoders can scale down while decoding: much faster on big photos.
            image.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            image.load()
            rgb = to_rgb(ImageOps.exif_transpose(image))
    rgb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


class Thumbnails:
    """Thumbnails by image id, made on first request and cached up to ``max_bytes`` in all.

    ``image_path(id)`` gives the indexed file (``None`` when indexed from features; ``KeyError``
    for an unknown id, which propagates); ``root``: the indexed folder, symbolic links resolved
    (``None`` when indexed from features).
    """

    def __init__(
        self, image_path: Callable[[int], Path | None], root: Path | None, max_bytes: int
    ) -> None:
        self._image_path = image_path
        self._root = root
        self._max_bytes = max_bytes
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()

    def get(self, image_id: int) -> bytes:
        """The JPEG thumbnail of indexed image ``image_id``. Raises ``KeyError`` for an id the
        index does not have, :class:`ThumbnailUnavailable` (with the reason) when it has no
        readable file inside the indexed folder."""
        with self._lock:
            if image_id in self._cache:
                self._cache.move_to_end(image_id)
                return self._cache[image_id]
        path = self._readable_path(image_id)
        try:
            data = make_thumbnail(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            reason = f"its file cannot be decoded ({type(err).__name__})"
            raise ThumbnailUnavailable(f"image {image_id}: {reason}") from None
        with self._lock:
            if image_id not in self._cache and len(data) <= self._max_bytes:
                self._cache[image_id] = data
                self._cached_bytes += len(data)
                while self._cached_bytes > self._max_bytes:
                    _, dropped = self._cache.popitem(last=False)
                    self._cached_bytes -= len(dropped)
        return data

    def _readable_path(self, image_id: int) -> Path:
        path = self._image_path(image_id)
        if path is None or self._root is None:
            raise ThumbnailUnavailable(f"image {image_id} was indexed from features: no file")
        real = Path(os.path.realpath(path))
        if not real.is_relative_to(self._root) or not real.is_file():
            raise ThumbnailUnavailable(f"image {image_id}: its file is not inside the photo folder")
        return real
