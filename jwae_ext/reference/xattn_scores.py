"""Stacked cross-attention scores (SCAN, Lee et al. 2018), the straightforward way.

One caption at a time against every image: the word-region products, SCAN's ``raw_feature_norm``
over the query items, a softmax with temperature ``lambda_softmax`` over the context items, the
attended context vectors themselves (``(n_image, n_query, d)`` per caption), the cosine of every
query item with its attended vector, and an aggregation over the query items. Direction ``t2i``
attends each word over the image's regions; ``i2t`` each region over the caption's words. What the
kernel (:mod:`jwae_ext.ops.xattn_scores`) is tested and benchmarked against; differentiable by
autograd. The one deliberate difference from SCAN's code: LogSumExp is evaluated stably
(``torch.logsumexp``), the same value without overflow for large ``lambda_lse``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from jwae_ext.reference.retrieval import Ranks, ranks_from_scores

__all__ = ["AGGREGATIONS", "DIRECTIONS", "RAW_FEATURE_NORMS", "xattn_ranks", "xattn_scores"]

DIRECTIONS = ("t2i", "i2t")
AGGREGATIONS = ("lse", "mean", "max", "sum")
RAW_FEATURE_NORMS = ("clipped_l2norm", "l2norm", "clipped", "softmax", "no_norm")
EPS = 1e-8  # SCAN's eps in its l2norm and cosine similarity
LEAKY_SLOPE = 0.1  # SCAN's LeakyReLU(0.1) in "clipped" and "clipped_l2norm"


def _l2_normalized(x: torch.Tensor) -> torch.Tensor:
    """SCAN's l2norm over the last dim: eps is added to the norm, not clamped under it."""
    return x / (x.pow(2).sum(dim=-1, keepdim=True).sqrt() + EPS)


def _raw_feature_norm(products: torch.Tensor, norm: str) -> torch.Tensor:
    """Normalize (batch, context, query) products over the query items of each context item."""
    if norm == "softmax":
        return torch.softmax(products, dim=-1)
    if norm in ("clipped", "clipped_l2norm"):
        products = F.leaky_relu(products, LEAKY_SLOPE)
    if norm in ("l2norm", "clipped_l2norm"):
        return _l2_normalized(products)
    return products


def _attended(query, context, norm: str, lambda_softmax: float) -> torch.Tensor:
    """For each query item, the softmax-weighted sum of the context items: (batch, query, d)."""
    products = context @ query.transpose(1, 2)  # (batch, context, query)
    weights = torch.softmax(lambda_softmax * _raw_feature_norm(products, norm).transpose(1, 2), -1)
    return weights @ context


def _cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SCAN's cosine similarity over the last dim: the product of the norms clamped at eps."""
    return (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1)).clamp(min=EPS)


def _aggregate(similarity: torch.Tensor, agg: str, lambda_lse: float) -> torch.Tensor:
    """(batch, query) -> (batch,) over the query items."""
    if agg == "lse":
        return torch.logsumexp(lambda_lse * similarity, dim=1) / lambda_lse
    if agg == "mean":
        return similarity.mean(dim=1)
    if agg == "max":
        return similarity.max(dim=1).values
    return similarity.sum(dim=1)


def xattn_scores(
    images: torch.Tensor,
    captions: torch.Tensor,
    cap_lens: torch.Tensor,
    *,
    direction: str = "t2i",
    lambda_softmax: float = 9.0,
    agg: str = "lse",
    lambda_lse: float = 6.0,
    raw_feature_norm: str = "clipped_l2norm",
    region_grams: torch.Tensor | None = None,
) -> torch.Tensor:
    """SCAN's ``xattn_score_t2i`` / ``xattn_score_i2t``: (n_image, n_caption) scores.

    ``images`` (n_image, R, d), ``captions`` (n_caption, L, d) padded, ``cap_lens`` (n_caption,)
    the number of real words of each caption (only those are read). ``region_grams`` is
    accepted for the operator's signature and not used: SCAN forms the attended vectors.
    """
    columns = []
    for c, n_words in enumerate(cap_lens.tolist()):
        words = captions[c, :n_words].unsqueeze(0).expand(images.shape[0], -1, -1)
        if direction == "t2i":
            attended = _attended(words, images, raw_feature_norm, lambda_softmax)
            similarity = _cosine(words, attended)
        else:
            attended = _attended(images, words, raw_feature_norm, lambda_softmax)
            similarity = _cosine(images, attended)
        columns.append(_aggregate(similarity, agg, lambda_lse))
    return torch.stack(columns, dim=1)


def xattn_region_grams(images: torch.Tensor) -> torch.Tensor:
    """``images[i] @ images[i].T`` for every image: (n_image, R, R), in float32 (float64 for
    float64 images)."""
    regions = images.to(torch.promote_types(images.dtype, torch.float32))
    return torch.bmm(regions, regions.transpose(1, 2))


def xattn_ranks(
    images: torch.Tensor,
    captions: torch.Tensor,
    cap_lens: torch.Tensor,
    cap_to_img: torch.Tensor,
    part: int = 0,
    parts: int = 1,
    **options,
) -> Ranks:
    """Exact i2t and t2i ranks (and ties) by VSE++'s procedure on the whole matrix of
    :func:`xattn_scores` (``options`` are its keyword arguments). Split into ``parts`` (as the
    operator's distributed count), part 0 holds every count and the others none: the sum over
    the parts is the whole, as the operator's."""
    if not 0 <= part < parts:
        raise ValueError(f"jwae_ext: part must be in [0, parts={parts}), got {part}")
    ranks = ranks_from_scores(xattn_scores(images, captions, cap_lens, **options), cap_to_img)
    return ranks if part == 0 else Ranks(*(torch.zeros_like(t) for t in ranks))
