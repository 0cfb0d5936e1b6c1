"""Ranks counted on a whole score matrix straight from their definition (DESIGN.md §3.3), for the
tests of every ranking path (kernels, references, cross-attention, sharded evaluation).

``ties_count="against"`` is the rule: every other item scoring at least as high as the ground
truth (for i2t, the best of the image's captions; captions of the same image are not "other").
``ties_count="for"`` is the rule before it (strictly higher scores only), kept to check that
tie-free scores rank exactly as they did.
"""

from __future__ import annotations

import torch


def ranks_by_definition(
    scores: torch.Tensor, cap_to_img: torch.Tensor, ties_count: str = "against"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(i2t, t2i, i2t_ties, t2i_ties)`` of an ``(N, M)`` score matrix: per image and per caption
    the other items counted against it, and the other items scoring exactly its ground truth's
    score."""
    n_images, n_captions = scores.shape
    own = scores[cap_to_img, torch.arange(n_captions)]
    other = cap_to_img.view(1, -1) != torch.arange(n_images).view(-1, 1)
    best = torch.full((n_images,), float("-inf"), dtype=scores.dtype)
    best = best.scatter_reduce(0, cap_to_img, own, "amax").view(-1, 1)
    own = own.view(1, -1)
    if ties_count == "against":
        i2t, t2i = scores >= best, scores >= own
    elif ties_count == "for":
        i2t, t2i = scores > best, scores > own
    else:
        raise ValueError(f"ties_count must be 'against' or 'for', got {ties_count!r}")
    return (
        (i2t & other).sum(1),
        (t2i & other).sum(0),
        ((scores == best) & other).sum(1),
        ((scores == own) & other).sum(0),
    )
