"""``load_grounding``: one entry point for the embedded grounding set and Flickr30k Entities
layout folders."""

from __future__ import annotations

import os

from jwae_ext.data import EMBEDDED
from jwae_ext.grounding.data import GroundingSplit, load_entities
from jwae_ext.grounding.synthetic import NUM_PROPOSALS, grounding_split

__all__ = ["load_grounding"]


def load_grounding(
    data: str | os.PathLike,
    split: str,
    *,
    seed: int = 0,
    num_images: int | None = None,
    num_proposals: int = NUM_PROPOSALS,
) -> GroundingSplit:
    """Load ``split`` (``train``, ``val``, ``test``) of ``data``: an embedded name
    (``"synthetic-a"``, ``"synthetic-b"``; generated from ``seed`` with ``num_proposals`` per
    image) or a Flickr30k-Entities-layout folder. ``num_images`` keeps the first images only."""
    name = os.fspath(data)
    if name in EMBEDDED:
        return grounding_split(
            EMBEDDED[name], split, seed=seed, num_images=num_images, num_proposals=num_proposals
        )
    if not os.path.isdir(name):
        raise FileNotFoundError(
            f"jwae_ext: data {name!r} is neither an embedded dataset ({', '.join(EMBEDDED)}) "
            "nor an existing Flickr30k Entities layout folder"
        )
    return load_entities(name, split, num_images=num_images)
