"""Encoding splits and printing retrieval tables; ``python -m jwae_ext.evaluate`` (issue 6) builds
on these."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from jwae_ext import retrieval
from jwae_ext.data import CaptionSplit, Vocabulary, pad_captions
from jwae_ext.models import JWAE


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


def evaluate_split(
    model: JWAE,
    split: CaptionSplit,
    vocab: Vocabulary,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
    protocol: str = "full",
) -> dict:
    """The retrieval table of ``model`` on ``split`` (see :func:`jwae_ext.retrieval.evaluate`)."""
    img_emb, cap_emb = encode_split(model, split, vocab, device=device, batch_size=batch_size)
    cap_to_img = torch.as_tensor(np.asarray(split.cap_to_img), device=img_emb.device)
    return retrieval.evaluate(img_emb, cap_emb, cap_to_img, protocol=protocol)


def format_table(result: dict) -> str:
    """The standard table: i2t and t2i R@1/5/10, medr, meanr, and rsum."""
    cols = ("r1", "r5", "r10", "medr", "meanr")
    header = f"{'':<6}" + "".join(f"{c:>8}" for c in ("R@1", "R@5", "R@10", "medr", "meanr"))
    lines = [header]
    for direction in ("i2t", "t2i"):
        row = result[direction]
        lines.append(f"{direction:<6}" + "".join(f"{row[c]:>8.1f}" for c in cols))
    lines.append(f"rsum {result['rsum']:.1f}")
    return "\n".join(lines)
