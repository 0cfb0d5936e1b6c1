"""Reference retrieval ranks and top-k: the full score matrix, then sorting (the VSE++ procedure).

VSE++ (``evaluation.py``: ``i2t``/``t2i``) ranks a query by scoring the whole gallery, sorting it
by descending score and taking the position of the (best) ground truth. Written here for any
number of captions per image, with a stated tie rule: among equal scores the ground truth goes
first (the sort runs over a gallery ordered ground-truth-first, and is stable), so a rank counts
only strictly higher scores. On tie-free scores this is exactly VSE++'s rank.
"""

from __future__ import annotations

import torch

__all__ = [
    "ranks_from_scores",
    "retrieval_count_above",
    "retrieval_ranks",
    "retrieval_thresholds",
    "topk_search",
]


def _scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The full score matrix a @ b.T in the score dtype (float32 for float16/bfloat16)."""
    dtype = torch.float32 if a.dtype in (torch.float16, torch.bfloat16) else a.dtype
    return a.to(dtype) @ b.to(dtype).T


def _first_hit_positions(scores: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
    """Per row: argsort descending (ties: hits first, then by index); position of the first hit."""
    hits_first = torch.argsort((~hits).to(torch.int8), dim=1, stable=True)
    by_score = torch.argsort(
        torch.gather(scores, 1, hits_first), dim=1, descending=True, stable=True
    )
    order = torch.gather(hits_first, 1, by_score)
    return torch.gather(hits, 1, order).to(torch.int8).argmax(dim=1)


def retrieval_ranks(
    img_emb: torch.Tensor, cap_emb: torch.Tensor, cap_to_img: torch.Tensor, chunk: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """i2t and t2i ranks by VSE++'s procedure: the full score matrix, sorted per query.

    i2t rank of image i: position of its first own caption in its row sorted descending; t2i rank
    of caption j: position of its image in its column sorted descending. ``chunk`` queries are
    sorted at a time (the score matrix itself is whole).
    """
    return ranks_from_scores(_scores(img_emb, cap_emb), cap_to_img, chunk)


def ranks_from_scores(
    scores: torch.Tensor, cap_to_img: torch.Tensor, chunk: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
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
    return torch.cat(i2t), torch.cat(t2i)


def retrieval_thresholds(
    img_emb: torch.Tensor, cap_emb: torch.Tensor, cap_to_img: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best own-caption score per image (-inf without captions) and own-image score per caption."""
    scores = _scores(img_emb, cap_emb)
    own = scores[cap_to_img, torch.arange(cap_emb.shape[0], device=scores.device)]
    best = torch.full((img_emb.shape[0],), float("-inf"), dtype=own.dtype, device=own.device)
    return best.scatter_reduce(0, cap_to_img, own, "amax"), own


def retrieval_count_above(
    img_emb: torch.Tensor,
    cap_emb: torch.Tensor,
    cap_to_img: torch.Tensor,
    img_thresholds: torch.Tensor,
    cap_thresholds: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and per caption: items of the other side scoring strictly above its threshold,
    own pairs excluded."""
    scores = _scores(img_emb, cap_emb)
    own = cap_to_img[None, :] == torch.arange(img_emb.shape[0], device=scores.device)[:, None]
    img_counts = ((scores > img_thresholds[:, None]) & ~own).sum(dim=1)
    cap_counts = ((scores > cap_thresholds[None, :]) & ~own).sum(dim=0)
    return img_counts, cap_counts


def topk_search(
    queries: torch.Tensor, gallery: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full score matrix, stable descending sort (ties by lower index), first k."""
    scores, indices = torch.sort(_scores(queries, gallery), dim=1, descending=True, stable=True)
    return scores[:, :k], indices[:, :k]
