"""Semantic continuity of a latent space: do images that are close in code space show the same
things?

The poster claims that matching the image codes to a Gaussian prior makes the image latent space
semantically continuous even without within-domain supervision. This module turns that claim into
numbers, using the image codes alone (no text): for every image, its ``k`` nearest other images by
cosine similarity (:func:`jwae_ext.ops.topk_search`, tiled, so memory stays O(N k)), and

- ``class_agreement[kind]``: the fraction of those neighbours whose main object has the same
  class (``"shape"``, ``"colour"``, ``"shape+colour"``; see
  :meth:`~jwae_ext.data.SceneAttributes.semantic_class`), averaged over images;
- ``jaccard``: the mean attribute overlap (Jaccard index of the sets of (shape, colour) objects)
  between an image and its neighbours.

Each comes with its chance level, the value for neighbours drawn uniformly from the other images,
computed exactly, so that a reader can tell structure from class imbalance.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from jwae_ext import ops
from jwae_ext.data import SceneAttributes

__all__ = ["CLASS_KINDS", "JACCARD_KEYS", "continuity", "format_continuity", "nearest_neighbours"]

CLASS_KINDS = ("shape", "colour", "shape+colour")
JACCARD_KEYS = ("shape", "colour")
_CHANCE_ROWS = 64  # anchor images per block when averaging the Jaccard index over all pairs


def nearest_neighbours(codes: torch.Tensor, k: int) -> torch.Tensor:
    """``(N, k)`` int64: for each row of ``codes`` (N, d), its ``k`` most cosine-similar other
    rows, most similar first (ties to the lower index). A row is never its own neighbour, even
    when other rows are identical to it."""
    if codes.dim() != 2 or codes.shape[0] < 2:
        raise ValueError(
            f"jwae_ext: argument 'codes' must be (N, d) with N >= 2, got shape {tuple(codes.shape)}"
        )
    n = codes.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"jwae_ext: argument 'k' must be in [1, {n - 1}] for {n} codes, got {k}")
    unit = F.normalize(codes.detach().to(torch.float32), dim=1)
    _, idx = ops.topk_search(unit, unit, k + 1)
    # Self is normally first, but equal scores go to the lower index, so a duplicate code may
    # push it anywhere in (or out of) the k + 1: drop it by value, keep the first k of the rest.
    is_self = idx == torch.arange(n, device=idx.device).unsqueeze(1)
    order = torch.argsort(is_self.to(torch.int8), dim=1, stable=True)[:, :k]
    return torch.gather(idx, 1, order).cpu()


def _class_chance(classes: np.ndarray) -> float:
    """Probability that a uniformly drawn *other* image shares the class of a uniform image."""
    n = len(classes)
    counts = np.bincount(classes).astype(np.float64)
    return float((counts * (counts - 1)).sum() / (n * (n - 1)))


def _jaccard_chance(attributes: SceneAttributes) -> float:
    """Mean Jaccard index over all ordered pairs of distinct images, in blocks of anchor rows
    (O(N^2) pairs, O(N) memory per block)."""
    n = len(attributes)
    total = 0.0
    others = np.arange(n)
    for start in range(0, n, _CHANCE_ROWS):
        anchors = np.arange(start, min(start + _CHANCE_ROWS, n))[:, None]
        overlap = attributes.jaccard(anchors, others[None, :], keys=JACCARD_KEYS)
        total += overlap.sum() - len(anchors)  # minus each image with itself (overlap 1)
    return float(total / (n * (n - 1)))


def continuity(img_codes: torch.Tensor, attributes: SceneAttributes, k: int = 10) -> dict:
    """Semantic continuity of the image codes ``img_codes`` (N, d) of a split whose images are
    described by ``attributes`` (N rows). ``k`` is lowered to N - 1 for tiny splits.

    Returns ``{"k", "class_agreement": {kind: value}, "class_chance": {kind: value}, "jaccard",
    "jaccard_chance"}``, every value in [0, 1].
    """
    n = img_codes.shape[0] if img_codes.dim() == 2 else -1
    if n != len(attributes):
        raise ValueError(
            f"jwae_ext: argument 'img_codes' must have one row per image of 'attributes' "
            f"({len(attributes)}), got shape {tuple(img_codes.shape)}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"jwae_ext: argument 'k' must be a positive int, got {k!r}")
    k = min(k, n - 1)
    neighbours = nearest_neighbours(img_codes, k).numpy()
    anchors = np.arange(n)[:, None]
    agreement, chance = {}, {}
    for kind in CLASS_KINDS:
        classes = attributes.semantic_class(kind)
        agreement[kind] = float((classes[neighbours] == classes[anchors]).mean())
        chance[kind] = _class_chance(classes)
    return {
        "k": k,
        "class_agreement": agreement,
        "class_chance": chance,
        "jaccard": float(attributes.jaccard(anchors, neighbours, keys=JACCARD_KEYS).mean()),
        "jaccard_chance": _jaccard_chance(attributes),
    }


def format_continuity(result: dict) -> str:
    """One line of a :func:`continuity` result: class agreement of the k nearest image codes and
    their Jaccard overlap, each with its chance level in brackets."""
    parts = [
        f"{kind} {value:.3f} ({result['class_chance'][kind]:.3f})"
        for kind, value in result["class_agreement"].items()
    ]
    parts.append(f"Jaccard {result['jaccard']:.3f} ({result['jaccard_chance']:.3f})")
    return f"continuity, {result['k']} nearest images (chance): " + ", ".join(parts)
