"""Uploaded query images: decoded by Pillow in full before the index sees them, so that a file
that is not an image, a truncated image or a decompression bomb is refused with its reason."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError


class RefusedImage(ValueError):
    """An upload that is not a usable image; the message says why."""


def check_image(data: bytes) -> str:
    """Decode ``data`` completely and return its format (``"JPEG"``, ``"PNG"`` ...).

    Raises :class:`RefusedImage` naming why: empty, not an image, a decompression bomb (over
    Pillow's pixel limit, ``Image.MAX_IMAGE_PIXELS`` x 2), truncated, or otherwise unreadable."""
    if not data:
        raise RefusedImage("empty upload: the file has no bytes")
    try:
        with warnings.catch_warnings():
            # Pillow warns from MAX_IMAGE_PIXELS on and refuses from twice that; the refusal is
            # its pixel limit, the warning only a hint (big panoramas are real photos).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return image.format or "unknown"
    except Image.DecompressionBombError as err:
        raise RefusedImage(f"decompression bomb: {err}") from None
    except UnidentifiedImageError:
        raise RefusedImage("not an image: Pillow cannot identify the file's format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        if "truncated" in str(err).lower() or isinstance(err, EOFError):
            raise RefusedImage(f"truncated image: {err}") from None
        raise RefusedImage(f"unreadable image: {type(err).__name__}: {err}") from None
