"""Boxes and the phrase-localization metrics (docs/design.md, "Phrase localization").

Boxes are ``(x1, y1, x2, y2)`` in pixel coordinates with *inclusive* corners, as the Flickr30k
Entities evaluation code treats them: a box covers ``x2 - x1 + 1`` pixel columns. A phrase's
ground truth is the union box of all boxes of its entity. R@K is the share of phrases for which
one of the K best-scored proposals overlaps the ground truth with IoU >= 0.5; proposals of equal
score are ranked by index (the lowest first), so results never depend on the sort's whims.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "SUCCESS_IOU",
    "box_iou",
    "rank_proposals",
    "recall_at",
    "union_box",
]

SUCCESS_IOU = 0.5  # a localization is correct from this IoU on (Flickr30k Entities, CITE)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of inclusive pixel boxes: ``a`` ``(..., 4)`` against ``b`` ``(..., 4)``, broadcast
    over the leading dimensions; float64 in [0, 1]. A degenerate box (``x2 < x1``) has no area
    and overlaps nothing."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape[-1:] != (4,) or b.shape[-1:] != (4,):
        raise ValueError(
            f"jwae_ext: boxes must have 4 coordinates in their last dimension, "
            f"got shapes {a.shape} and {b.shape}"
        )
    width = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1
    height = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    union = _area(a) + _area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _area(box: np.ndarray) -> np.ndarray:
    return np.clip(box[..., 2] - box[..., 0] + 1, 0, None) * np.clip(
        box[..., 3] - box[..., 1] + 1, 0, None
    )


def union_box(boxes: np.ndarray) -> np.ndarray:
    """The smallest box holding every box of ``boxes`` ``(n, 4)``, n >= 1: the ground truth of a
    phrase whose entity has several boxes."""
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] == 0:
        raise ValueError(f"jwae_ext: union_box needs (n >= 1, 4) boxes, got shape {boxes.shape}")
    return np.concatenate([boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)])


def rank_proposals(scores: torch.Tensor, num_boxes: torch.Tensor, k: int) -> torch.Tensor:
    """The indices ``(n, k)`` of each phrase's ``k`` best proposals: ``scores`` ``(n, P)``
    (higher is better), of which each row's first ``num_boxes`` ``(n,)`` are real (the rest is
    padding, never chosen). Ties go to the lowest index; ``-1`` where a row has fewer than ``k``
    real proposals."""
    if scores.ndim != 2 or num_boxes.shape != scores.shape[:1]:
        raise ValueError(
            f"jwae_ext: scores must be (n, P) and num_boxes (n,), got {tuple(scores.shape)} and "
            f"{tuple(num_boxes.shape)}"
        )
    k = min(k, scores.shape[1])
    real = torch.arange(scores.shape[1], device=scores.device) < num_boxes.unsqueeze(1)
    masked = torch.where(real, scores, torch.full_like(scores, -torch.inf))
    # A stable sort keeps equal scores in index order; padding sorts last (-inf, and after any
    # real proposal scored -inf because it comes later).
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.where(torch.gather(real, 1, order), order, torch.full_like(order, -1))


def recall_at(
    chosen: torch.Tensor, iou: torch.Tensor, threshold: float = SUCCESS_IOU
) -> torch.Tensor:
    """Per phrase, whether one of its ``chosen`` proposals ``(n, k)`` (``-1``: none) reaches
    ``threshold`` IoU; ``iou`` ``(n, P)`` holds each phrase's IoU with every proposal."""
    valid = chosen >= 0
    hit = torch.gather(iou, 1, chosen.clamp(min=0)) >= threshold
    return (hit & valid).any(dim=1)
