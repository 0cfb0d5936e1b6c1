"""Torch view of a :class:`~jwae_ext.grounding.data.GroundingSplit`: one item per image (its
proposals and its evaluated phrases), collated into :class:`GroundingBatch` es."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from jwae_ext.data import Vocabulary, pad_captions
from jwae_ext.grounding.data import GroundingSplit
from jwae_ext.grounding.models import GroundingBatch

__all__ = ["GroundingDataset", "collate_grounding"]

_Item = tuple[torch.Tensor, int, list[list[int]], torch.Tensor]


class GroundingDataset(torch.utils.data.Dataset):
    """Item ``k`` is image ``images[k]`` of ``split``: ``(proposal features (P, D), number of
    proposals, token ids of each of its phrases, their IoU rows (n_k, P))``. Phrases are
    tokenized once, here; words unknown to ``vocab`` become ``<unk>``. ``images`` defaults to
    every image with at least one evaluated phrase."""

    def __init__(
        self, split: GroundingSplit, vocab: Vocabulary, images: Sequence[int] | None = None
    ) -> None:
        self.split = split
        table = split.phrases
        self.tokens = [vocab.encode(text) for text in table.text]
        starts = np.searchsorted(table.image, np.arange(split.num_images + 1))
        self.rows = [range(starts[i], starts[i + 1]) for i in range(split.num_images)]
        if images is None:
            images = [i for i, rows in enumerate(self.rows) if len(rows)]
        self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, k: int) -> _Item:
        image = self.images[k]
        rows = self.rows[image]
        features = torch.from_numpy(self.split.features(np.array([image]))[0])
        iou = torch.from_numpy(self.split.phrases.iou[rows.start : rows.stop])
        count = int(self.split.num_boxes[image])
        return features, count, [self.tokens[r] for r in rows], iou


def collate_grounding(items: Sequence[_Item]) -> GroundingBatch:
    """``DataLoader`` ``collate_fn`` for :class:`GroundingDataset`."""
    features, counts, tokens, ious = zip(*items, strict=True)
    phrase_tokens = [t for phrases in tokens for t in phrases]
    if phrase_tokens:
        padded, lengths = pad_captions(phrase_tokens)
    else:
        padded, lengths = torch.zeros(0, 1, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    return GroundingBatch(
        regions=torch.stack(features),
        num_boxes=torch.tensor(counts, dtype=torch.int64),
        tokens=padded,
        lengths=lengths,
        phrase_image=torch.repeat_interleave(
            torch.arange(len(items)), torch.tensor([len(t) for t in tokens], dtype=torch.int64)
        ),
        iou=torch.cat(ious),
    )
