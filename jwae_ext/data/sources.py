"""``load_split``: one entry point for the embedded datasets and precomp folders."""

from __future__ import annotations

import os

from jwae_ext.data.precomp import load_precomp
from jwae_ext.data.split import CaptionSplit
from jwae_ext.data.synthetic import synthetic_split

EMBEDDED = {"synthetic-a": "a", "synthetic-b": "b"}


def load_split(
    data: str | os.PathLike,
    split: str,
    *,
    seed: int = 0,
    num_images: int | None = None,
    captions_per_image: int | None = None,
) -> CaptionSplit:
    """Load ``split`` of ``data``: an embedded name (``"synthetic-a"``, ``"synthetic-b"``;
    generated from ``seed``) or a precomp folder (``captions_per_image`` as in
    :func:`~jwae_ext.data.precomp.load_precomp`). ``num_images`` limits the split to its first
    images (for the embedded data: generates only those)."""
    name = os.fspath(data)
    if name in EMBEDDED:
        if captions_per_image not in (None, 5):
            raise ValueError(
                f"jwae_ext: {name} has 5 captions per image, got captions_per_image="
                f"{captions_per_image}"
            )
        return synthetic_split(EMBEDDED[name], split, seed=seed, num_images=num_images)
    if not os.path.isdir(name):
        raise FileNotFoundError(
            f"jwae_ext: data {name!r} is neither an embedded dataset ({', '.join(EMBEDDED)}) "
            "nor an existing precomp folder"
        )
    return load_precomp(name, split, captions_per_image=captions_per_image, num_images=num_images)
