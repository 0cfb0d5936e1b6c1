"""Unpaired images and captions: data the jWAE terms can learn from without pairs.

The reconstructions and the prior matching need no pairs, so images and captions of a domain
with no pairs for it (``--unpaired-images``, ``--unpaired-captions``) can join training through
those terms alone. A source is

- an embedded dataset name (``synthetic-b``): its training split, generated from the run's seed;
- a precomp folder (``FOLDER``: its ``train`` split) or one of its splits (``FOLDER:SPLIT``);
- for captions only, a plain text file with one caption per line.

:func:`unpaired_batch` draws batch ``n`` of a run: the items of a source in a fresh seeded
permutation per pass, so the draw depends only on (seed, n) and a resumed run sees the same one.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jwae_ext.data.dataset import pad_captions
from jwae_ext.data.precomp import load_precomp, read_captions
from jwae_ext.data.sources import EMBEDDED, embedded_style, folder_and_split, load_split
from jwae_ext.data.split import CaptionSplit, FeatureArray

__all__ = ["UnpairedData", "load_unpaired_captions", "load_unpaired_images", "unpaired_batch"]

# Seed offsets of the image and caption draws: independent of each other and of the epochs'.
_IMAGE_STREAM, _CAPTION_STREAM = 7919, 15_485_863


def _split_of(source: str, argument: str, seed: int) -> CaptionSplit | None:
    """The split ``source`` names, or None when it names a file (not a dataset)."""
    if embedded_style(source) is not None:
        return load_split(source, "train", seed=seed)
    folder, split = folder_and_split(source, "train")
    if os.path.isdir(folder):
        try:
            return load_precomp(folder, split)
        except (OSError, ValueError) as err:
            raise ValueError(f"{argument} {source}: {err}") from None
    if os.path.isfile(source):
        return None
    raise ValueError(
        f"{argument}: {source!r} is neither an embedded dataset ({', '.join(EMBEDDED)}), a "
        "precomp folder (FOLDER or FOLDER:SPLIT) nor a caption file (one caption per line)"
    )


def load_unpaired_images(
    source: str, *, seed: int, regions: bool, feature_dim: int, argument: str
) -> FeatureArray:
    """The image features of ``source`` (``(N, D)``; ``(N, R, D)`` region features when
    ``regions``), checked against the paired data's ``feature_dim``. Errors name ``argument``."""
    split = _split_of(source, argument, seed)
    if split is None:
        raise ValueError(
            f"{argument}: {source} is a file; images come from an embedded dataset or a precomp "
            "folder (a plain file can only hold captions)"
        )
    try:
        features = split.require_regions() if regions else split.images
    except ValueError as err:
        raise ValueError(f"{argument} {source}: {err}") from None
    if features.shape[-1] != feature_dim:
        kind = "region" if regions else "image"
        raise ValueError(
            f"{argument} {source}: {features.shape[-1]}-dimensional {kind} features, but the "
            f"paired training data has {feature_dim}-dimensional ones"
        )
    return features


def load_unpaired_captions(source: str, *, seed: int, argument: str) -> list[str]:
    """The captions of ``source``. Errors name ``argument``."""
    split = _split_of(source, argument, seed)
    if split is not None:
        return split.captions
    try:
        return read_captions(Path(source))
    except (OSError, ValueError) as err:
        raise ValueError(f"{argument} {source}: {err}") from None


def unpaired_batch(num_items: int, batch_size: int, seed: int, number: int) -> list[int]:
    """The item indices of unpaired batch ``number`` (0, 1, ...) of ``batch_size`` out of
    ``num_items``: consecutive slices of a sequence of permutations, one per pass over the items,
    each seeded by (``seed``, pass), wrapping into the next pass where one ends."""
    start = number * batch_size
    indices: list[int] = []
    while len(indices) < batch_size:
        cycle, offset = divmod(start + len(indices), num_items)
        order = torch.randperm(
            num_items, generator=torch.Generator().manual_seed(seed * 100_003 + cycle)
        )
        indices += order[offset : offset + batch_size - len(indices)].tolist()
    return indices


@dataclass
class UnpairedData:
    """The unpaired images (``(N, D)`` or ``(N, R, D)`` features) and captions (token ids) of a
    run, drawn ``ratio`` batches of ``batch_size`` per paired batch (a ratio below 1 skips
    steps: batch ``n`` goes to the step where ``floor(step * ratio)`` passes ``n``)."""

    images: FeatureArray
    tokens: list[list[int]]
    batch_size: int
    ratio: float
    seed: int

    def batches_at(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The ``(images, tokens, lengths)`` of the unpaired batches of global step ``step``
        (0-based); images and captions are drawn independently, so they do not correspond."""
        first, stop = math.floor(step * self.ratio), math.floor((step + 1) * self.ratio)
        batches = []
        for number in range(first, stop):
            rows = unpaired_batch(
                len(self.images), self.batch_size, self.seed * 2 + _IMAGE_STREAM, number
            )
            images = np.stack([np.asarray(self.images[i], dtype=np.float32) for i in rows])
            picked = unpaired_batch(
                len(self.tokens), self.batch_size, self.seed * 2 + _CAPTION_STREAM, number
            )
            tokens, lengths = pad_captions([self.tokens[i] for i in picked])
            batches.append((torch.from_numpy(images), tokens, lengths))
        return batches
