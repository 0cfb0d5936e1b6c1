"""``load_split``: one entry point for the embedded datasets and precomp folders."""

from __future__ import annotations

import os

from jwae_ext.data.precomp import load_precomp
from jwae_ext.data.shift import check_strength
from jwae_ext.data.split import CaptionSplit
from jwae_ext.data.synthetic import synthetic_split

EMBEDDED = {"synthetic-a": "a", "synthetic-b": "b"}
_SHIFTED = "synthetic-b@"  # + a shift strength: style "b" that far from style "a"


def embedded_style(name: str) -> tuple[str, float] | None:
    """``(style, shift strength)`` of an embedded dataset's name (``synthetic-a``,
    ``synthetic-b`` or ``synthetic-b@S``: style "b" at shift strength ``S``, see
    :mod:`jwae_ext.data.shift`), or None for any other name."""
    if name in EMBEDDED:
        return EMBEDDED[name], 1.0
    if not name.startswith(_SHIFTED):
        return None
    text = name[len(_SHIFTED) :]
    try:
        return "b", check_strength(float(text))
    except ValueError:
        raise ValueError(
            f"jwae_ext: data {name!r}: the shift strength after '@' must be a finite number "
            f">= 0, got {text!r}"
        ) from None


def folder_and_split(source: str, default: str) -> tuple[str, str]:
    """The folder and split that ``FOLDER`` (its ``default`` split) or ``FOLDER:SPLIT`` names
    (an existing folder whose own name has a colon is a folder)."""
    if not os.path.isdir(source) and ":" in source:
        folder, split = source.rsplit(":", 1)
        return folder, split
    return source, default


def load_split(
    data: str | os.PathLike,
    split: str,
    *,
    seed: int = 0,
    num_images: int | None = None,
    captions_per_image: int | None = None,
) -> CaptionSplit:
    """Load ``split`` of ``data``: an embedded name (``"synthetic-a"``, ``"synthetic-b"``,
    ``"synthetic-b@S"``: see :func:`embedded_style`; generated from ``seed``) or a precomp
    folder (``captions_per_image`` as in :func:`~jwae_ext.data.precomp.load_precomp`).
    ``num_images`` limits the split to its first images (for the embedded data: generates only
    those)."""
    name = os.fspath(data)
    embedded = embedded_style(name)
    if embedded is not None:
        if captions_per_image not in (None, 5):
            raise ValueError(
                f"jwae_ext: {name} has 5 captions per image, got captions_per_image="
                f"{captions_per_image}"
            )
        style, shift = embedded
        return synthetic_split(style, split, seed=seed, num_images=num_images, shift=shift)
    if not os.path.isdir(name):
        raise FileNotFoundError(
            f"jwae_ext: data {name!r} is neither an embedded dataset ({', '.join(EMBEDDED)}, "
            f"{_SHIFTED}S) "
            "nor an existing precomp folder"
        )
    return load_precomp(name, split, captions_per_image=captions_per_image, num_images=num_images)
