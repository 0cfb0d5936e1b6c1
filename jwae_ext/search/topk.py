"""Exact top-k over codes too many to score at once: block by block, k-best merged.

Order everywhere: higher score first, NaN above every number (as :func:`jwae_ext.ops.topk_search`
and ``torch.sort``), equal scores by lower position. Blocks are offered in ascending position
(within an index, then shard after shard), so a stable sort of "best so far, then the new block"
keeps every tie with the lower position: the answer is the one of the whole score matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from jwae_ext import ops

# Bytes of codes (as float32) per block: bounds the memory of a query whatever the index size.
BLOCK_BYTES = 64 * 2**20

Best = tuple[torch.Tensor, torch.Tensor]  # (scores (Q, <=k) float32, positions (Q, <=k) int64)


def merge_best(best: Best | None, scores: torch.Tensor, positions: torch.Tensor, k: int) -> Best:
    """The k best of ``best`` and a later block's candidates (``scores``, ``positions``: (Q, c),
    positions above every one in ``best``)."""
    if best is not None:
        scores = torch.cat([best[0], scores], dim=1)
        positions = torch.cat([best[1], positions], dim=1)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), positions.gather(1, order)


def blocks(rows: int, row_bytes: int, extra_row_bytes: int = 0) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive blocks of ``rows`` rows, each within :data:`BLOCK_BYTES`
    for its codes (``row_bytes`` per row as float32) and for what is computed per row
    (``extra_row_bytes``, e.g. one score per query)."""
    step = max(1, BLOCK_BYTES // max(row_bytes, extra_row_bytes, 1))
    for start in range(0, rows, step):
        yield start, min(start + step, rows)


def float32_blocks(
    codes: np.ndarray, device: torch.device, extra_row_bytes: int = 0
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, block)``: the (memory-mapped) ``codes`` block by block as float32 on ``device``.
    float32 blocks are views of the map; float16 ones are converted into one reused buffer
    (a fresh buffer per block would cost more in page faults than the conversion itself)."""
    row_bytes = 4 * int(np.prod(codes.shape[1:]))
    buffer = None
    for start, stop in blocks(len(codes), row_bytes, extra_row_bytes):
        block = torch.from_numpy(codes[start:stop])
        if block.dtype != torch.float32:
            if buffer is None:
                buffer = torch.empty((stop - start, *codes.shape[1:]), dtype=torch.float32)
            block = buffer[: stop - start].copy_(block)
        yield start, block.to(device)


def dot_topk(
    queries: torch.Tensor,
    codes: np.ndarray,
    k: int,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Best:
    """The k best rows of ``codes`` (memory-mapped, (n, ...)) for each query (Q, d) by dot
    product through :func:`jwae_ext.ops.topk_search` (which never holds more than its tiles of
    scores). float32 codes go to it whole, as mapped; others block by block as float32.
    ``transform`` maps a block of float32 codes to (rows, d) first (SCAN: the mean region
    code)."""
    if codes.dtype == np.float32 and transform is None:
        gallery = torch.from_numpy(codes).to(queries.device)
        return ops.topk_search(queries, gallery, min(k, len(codes)))
    best = None
    for start, block in float32_blocks(codes, queries.device):
        gallery = block if transform is None else transform(block)
        scores, index = ops.topk_search(queries, gallery.contiguous(), min(k, len(block)))
        best = merge_best(best, scores, index + start, k)
    return best


def xattn_topk(
    words: torch.Tensor,
    lengths: torch.Tensor,
    regions: np.ndarray,
    k: int,
    options: dict,
    grams: np.ndarray | None = None,
) -> Best:
    """The k best images (memory-mapped region codes (n, R, d)) for each caption (word codes
    (Q, L, d), lengths (Q,)) by the cross-attention score with ``options``
    (:func:`jwae_ext.ops.xattn_scores`), one block of images at a time: never more scores than
    one block's (images x queries). ``grams``: the images' :func:`jwae_ext.ops.xattn_region_grams`
    (memory-mapped (n, R, R) float32), passed so that no query recomputes them."""
    best = None
    for start, block in float32_blocks(regions, words.device, extra_row_bytes=4 * len(words)):
        block_grams = None
        if grams is not None:
            block_grams = torch.from_numpy(grams[start : start + len(block)]).to(words.device)
        scores = ops.xattn_scores(block, words, lengths, **options, region_grams=block_grams)
        positions = torch.arange(start, start + len(block), device=words.device)
        positions = positions.expand(len(words), -1)
        best = merge_best(best, scores.T, positions, k)
    return best
