"""Reference retrieval ranks and top-k: the full score matrix, then sorting (the VSE++ procedure).

VSE++ (``evaluation.py``: ``i2t``/``t2i``) ranks a query by scoring the whole gallery, sorting it
by descending score and taking the position of the (best) ground truth. Written here for any
number of captions per image, with a stated tie rule (DESIGN.md §3.3): among equal scores the
ground truth goes last (the sort runs over a gallery ordered ground-truth-last, and is stable), so
a rank counts every other item scoring at least as high: a tie is never a hit. On tie-free scores
this is exactly VSE++'s rank.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "Ranks",
    "ranks_from_scores",
    "retrieval_count_at_least",
    "retrieval_ranks",
    "retrieval_thresholds",
    "topk_search",
]


class Ranks(NamedTuple):
    """Per image (``i2t``, (N,)) and per caption (``t2i``, (M,)), int64: the other items counted
    against it, and of those the ones tied with its ground truth's score (``*_ties``; a query has
    a tie when its entry is > 0). For ``retrieval_count_at_least``, counts against the given
    thresholds."""

    i2t: torch.Tensor
    t2i: torch.Tensor
    i2t_ties: torch.Tensor
    t2i_ties: torch.Tensor


def _scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The full score matrix a @ b.T in the score dtype (float32 for float16/bfloat16)."""
    dtype = torch.float32 if a.dtype in (torch.float16, torch.bfloat16) else a.dtype
    return a.to(dtype) @ b.to(dtype).T


def _first_hit_positions(
    scores: torch.Tensor, hits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: argsort descending (ties: hits last, then by index); the position of the first
    hit, and how many non-hits score exactly as high as it (its ties)."""
    hits_last = torch.argsort(hits.to(torch.int8), dim=1, stable=True)
    by_score = torch.argsort(
        torch.gather(scores, 1, hits_last), dim=1, descending=True, stable=True
    )
    order = torch.gather(hits_last, 1, by_score)
    position = torch.gather(hits, 1, order).to(torch.int8).argmax(dim=1)
    best_hit = torch.gather(scores, 1, torch.gather(order, 1, position[:, None]))
    return position, ((scores == best_hit) & ~hits).sum(dim=1)


def retrieval_ranks(
    img_emb: torch.Tensor, cap_emb: torch.Tensor, cap_to_img: torch.Tensor, chunk: int = 256
) -> Ranks:
    """i2t and t2i ranks by VSE++'s procedure: the full score matrix, sorted per query.

    i2t rank of image i: position of its first own caption in its row sorted descending; t2i rank
    of caption j: position of its image in its column sorted descending (own items after the
    others they tie with). ``chunk`` queries are sorted at a time (the score matrix itself is
    whole). Returns :class:`Ranks` as :func:`jwae_ext.ops.retrieval_ranks`.
    """
    return ranks_from_scores(_scores(img_emb, cap_emb), cap_to_img, chunk)


def ranks_from_scores(scores: torch.Tensor, cap_to_img: torch.Tensor, chunk: int = 256) -> Ranks:
    """The ranks of :func:`retrieval_ranks` from a whole (N, M) score matrix of any model."""
    n_img, n_cap = scores.shape
    images = torch.arange(n_img, device=scores.device)
    i2t = [
        _first_hit_positions(rows, cap_to_img[None, :] == images[s : s + chunk, None])
        for s, rows in zip(range(0, n_img, chunk), scores.split(chunk, dim=0), strict=True)
    ]
    t2i = [
        _first_hit_positions(cols.T, images[None, :] == cap_to_img[s : s + chunk, None])
        for s, cols in zip(range(0, n_cap, chunk), scores.split(chunk, dim=1), strict=True)
    ]
    return Ranks(
        torch.cat([rank for rank, _ in i2t]),
        torch.cat([rank for rank, _ in t2i]),
        torch.cat([ties for _, ties in i2t]),
        torch.cat([ties for _, ties in t2i]),
    )


def retrieval_thresholds(
    img_emb: torch.Tensor, cap_emb: torch.Tensor, cap_to_img: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best own-caption score per image (-inf without captions) and own-image score per caption."""
    scores = _scores(img_emb, cap_emb)
    own = scores[cap_to_img, torch.arange(cap_emb.shape[0], device=scores.device)]
    best = torch.full((img_emb.shape[0],), float("-inf"), dtype=own.dtype, device=own.device)
    return best.scatter_reduce(0, cap_to_img, own, "amax"), own


def retrieval_count_at_least(
    img_emb: torch.Tensor,
    cap_emb: torch.Tensor,
    cap_to_img: torch.Tensor,
    img_thresholds: torch.Tensor,
    cap_thresholds: torch.Tensor,
) -> Ranks:
    """Per image and per caption: items of the other side scoring at least its threshold, own
    pairs excluded, then those scoring exactly the threshold."""
    scores = _scores(img_emb, cap_emb)
    other = cap_to_img[None, :] != torch.arange(img_emb.shape[0], device=scores.device)[:, None]
    img_thr, cap_thr = img_thresholds[:, None], cap_thresholds[None, :]
    return Ranks(
        ((scores >= img_thr) & other).sum(dim=1),
        ((scores >= cap_thr) & other).sum(dim=0),
        ((scores == img_thr) & other).sum(dim=1),
        ((scores == cap_thr) & other).sum(dim=0),
    )


def topk_search(
    queries: torch.Tensor, gallery: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full score matrix, stable descending sort (ties by lower index), first k."""
    scores, indices = torch.sort(_scores(queries, gallery), dim=1, descending=True, stable=True)
    return scores[:, :k], indices[:, :k]
