"""A model's codes of a whole split: what evaluation, figures and sharded validation rank."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from jwae_ext.data import CaptionSplit, Vocabulary, pad_captions
from jwae_ext.models import JWAE

__all__ = ["encode_split"]


@torch.no_grad()
def encode_split(
    model: JWAE,
    split: CaptionSplit,
    vocab: Vocabulary,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
    captions: range | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """l2-normalized codes of every image (N, d) and every caption (M, d) of ``split``.

    Words unknown to ``vocab`` become ``<unk>``. The model is put in eval mode. ``captions``
    (a step-1 range, possibly empty) encodes only those captions, in batches starting at its
    first: a shard of a distributed evaluation.
    """
    model.eval()
    chosen = range(split.num_captions) if captions is None else captions
    images, codes = [], []
    for start in range(0, split.num_images, batch_size):
        feats = np.asarray(split.images[start : start + batch_size], dtype=np.float32)
        images.append(model.encode_images(torch.from_numpy(feats).to(device)))
    for start in range(chosen.start, chosen.stop, batch_size):
        chunk = split.captions[start : min(start + batch_size, chosen.stop)]
        tokens, lengths = pad_captions([vocab.encode(c) for c in chunk])
        codes.append(model.encode_captions(tokens.to(device), lengths.to(device)))
    img_emb = torch.cat(images)
    cap_emb = torch.cat(codes) if codes else img_emb.new_empty(0, img_emb.shape[1])
    return F.normalize(img_emb, dim=1), F.normalize(cap_emb, dim=1)
