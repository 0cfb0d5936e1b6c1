"""Torch view of a :class:`CaptionSplit`: one item per caption, padded batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from jwae_ext.data.split import CaptionSplit
from jwae_ext.data.vocab import PAD_ID, Vocabulary


class PairBatch(NamedTuple):
    """A collated batch of ``B`` (image, caption) pairs."""

    images: torch.Tensor  # (B, D) float32, or (B, R, D_r) region features
    captions: torch.Tensor  # (B, L) int64, padded with <pad> = 0; L = lengths.max()
    lengths: torch.Tensor  # (B,) int64, token counts including <start> and <end>
    image_ids: torch.Tensor  # (B,) int64, index of each pair's image in the split
    caption_ids: torch.Tensor  # (B,) int64, index of each pair's caption in the split


def pad_captions(
    token_ids: Sequence[Sequence[int] | torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id sequences with ``<pad>`` (0): returns ``(B, L)`` int64 and the ``(B,)``
    int64 lengths, in the given order (use ``enforce_sorted=False`` when packing)."""
    if len(token_ids) == 0:
        raise ValueError("jwae_ext: cannot pad an empty list of captions")
    seqs = [torch.as_tensor(t, dtype=torch.int64) for t in token_ids]
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    padded = torch.full((len(seqs), int(lengths.max())), PAD_ID, dtype=torch.int64)
    for row, seq in enumerate(seqs):
        padded[row, : len(seq)] = seq
    return padded, lengths


class PairDataset(torch.utils.data.Dataset):
    """Item ``j`` is caption ``j`` with its image: ``(features (D,) float32, token ids (L,)
    int64, image index, caption index)``; with ``regions=True`` the image's region features
    ``(R, D_r)`` instead of its pooled features (SCAN). Captions are tokenized once, here; words
    unknown to ``vocab`` become ``<unk>``."""

    def __init__(self, split: CaptionSplit, vocab: Vocabulary, *, regions: bool = False):
        self.split = split
        self.vocab = vocab
        self.tokens = [vocab.encode(c) for c in split.captions]
        self.features = split.require_regions() if regions else split.images

    def __len__(self) -> int:
        return self.split.num_captions

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        if not -len(self) <= j < len(self):
            raise IndexError(f"jwae_ext: caption index {j} out of range [0, {len(self)})")
        j = j % len(self)
        image = int(self.split.cap_to_img[j])
        features = torch.from_numpy(np.array(self.features[image], dtype=np.float32))
        return features, torch.tensor(self.tokens[j], dtype=torch.int64), image, j


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor, int, int]]) -> PairBatch:
    """``DataLoader`` ``collate_fn`` for :class:`PairDataset`."""
    features, tokens, images, captions = zip(*batch, strict=True)
    padded, lengths = pad_captions(tokens)
    return PairBatch(
        images=torch.stack(features),
        captions=padded,
        lengths=lengths,
        image_ids=torch.tensor(images, dtype=torch.int64),
        caption_ids=torch.tensor(captions, dtype=torch.int64),
    )
