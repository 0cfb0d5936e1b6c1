"""Exact top-k over blocks and shards (jwae_ext.search.topk) against the full score matrix.

Codes are small integers (divided by 4): every dot product is exact whatever the summation order,
so duplicates give exact ties and the brute-force ranking (score descending, then lower index)
is the one answer. Blocks are made tiny so that every answer crosses many of them.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jwae_ext import ops
from jwae_ext.search import topk


def brute_force(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k of each row of the full (Q, N) score matrix: higher first, ties to lower index."""
    order = [np.lexsort((np.arange(len(row)), -row))[:k] for row in scores.double().numpy()]
    index = torch.from_numpy(np.stack(order))
    return scores.gather(1, index), index


@st.composite
def codes_with_duplicates(draw, max_rows: int = 120, trailing: tuple[int, ...] = ()):
    """(codes (N, *trailing, d) float32 from a small pool of distinct rows, so many repeat;
    queries (Q, d); k, sometimes above N)."""
    seed = draw(st.integers(0, 2**31 - 1))
    rows, d, q = draw(st.integers(1, max_rows)), draw(st.integers(1, 24)), draw(st.integers(1, 5))
    g = torch.Generator().manual_seed(seed)
    pool = torch.randint(-3, 4, (draw(st.integers(1, rows)), *trailing, d), generator=g) / 4
    codes = pool[torch.randint(0, len(pool), (rows,), generator=g)]
    queries = torch.randint(-3, 4, (q, d), generator=g) / 4
    return codes.float().numpy(), queries.float(), draw(st.integers(1, rows + 5))


@pytest.fixture(scope="module", autouse=True)
def tiny_blocks():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(topk, "BLOCK_BYTES", 4 * 24 * 7)  # a few rows per block
        yield


@given(case=codes_with_duplicates())
def test_dot_topk_over_blocks_is_the_full_ranking(case):
    codes, queries, k = case
    scores, index = topk.dot_topk(queries, codes, k)
    want_scores, want_index = brute_force(queries @ torch.from_numpy(codes).T, min(k, len(codes)))
    assert torch.equal(index, want_index)
    assert torch.equal(scores, want_scores)


@given(case=codes_with_duplicates(), cut=st.integers(1, 4))
def test_shards_merged_in_order_are_the_full_ranking(case, cut):
    codes, queries, k = case
    bounds = sorted({0, len(codes), *np.linspace(0, len(codes), cut + 1).astype(int).tolist()})
    best = None
    for start, stop in pairwise(bounds):
        scores, rows = topk.dot_topk(queries, codes[start:stop], k)
        best = topk.merge_best(best, scores, rows + start, k)
    want = brute_force(queries @ torch.from_numpy(codes).T, min(k, len(codes)))
    assert torch.equal(best[1], want[1]) and torch.equal(best[0], want[0])


@given(case=codes_with_duplicates(max_rows=40, trailing=(3,)), lengths=st.data())
def test_xattn_topk_over_blocks_is_the_full_ranking(case, lengths):
    regions, words_flat, k = case
    q, d = words_flat.shape
    n_words = 3
    g = torch.Generator().manual_seed(len(regions))
    words = (torch.randint(-3, 4, (q, n_words, d), generator=g) / 4).float()
    lens = torch.tensor(
        [lengths.draw(st.integers(1, n_words)) for _ in range(q)], dtype=torch.int64
    )
    scores, index = topk.xattn_topk(words, lens, regions, k, {})
    full = ops.xattn_scores(torch.from_numpy(regions), words, lens).T  # (Q, N) at once
    want_scores, want_index = brute_force(full, min(k, len(regions)))
    assert torch.equal(index, want_index)
    assert torch.equal(scores, want_scores)


def test_float16_blocks_are_scored_in_float32():
    codes = np.array([[1.0, 2.0**-12], [1.0, 0.0]], dtype=np.float16)  # 2**-12 is exact in fp16
    queries = torch.tensor([[0.0, 1.0]])
    scores, index = topk.dot_topk(queries, codes, 2)
    assert scores.dtype == torch.float32
    assert index.tolist() == [[0, 1]] and scores[0, 0].item() == 2.0**-12


def test_blocks_stay_within_the_byte_budget():
    row_bytes, extra = 16, 4 * 10  # the per-row scores of 10 queries outweigh the codes
    cuts = list(topk.blocks(1000, row_bytes, extra_row_bytes=extra))
    step = topk.BLOCK_BYTES // extra
    assert cuts == [(a, min(a + step, 1000)) for a in range(0, 1000, step)]
    assert list(topk.blocks(3, 10 * topk.BLOCK_BYTES)) == [(0, 1), (1, 2), (2, 3)]  # >= 1 row
