"""Retrieval ranks, thresholds, counts and top-k against the full-matrix references, and the
ranks' tie rule (a tie is never a hit) against its definition."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from rank_rules import ranks_by_definition

from jwae_ext import ops
from jwae_ext.reference import retrieval as reference

# ---- inputs -------------------------------------------------------------------------------------


def caption_owners(counts: list[int], shuffle: bool, generator: torch.Generator) -> torch.Tensor:
    """cap_to_img for images with counts[i] captions each, grouped (COCO order) or shuffled."""
    owners = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return owners[torch.randperm(len(owners), generator=generator)] if shuffle else owners


def embeddings(rows: int, d: int, integer: bool, generator: torch.Generator, dtype=None):
    """Random float64 rows (tie-free scores), or small integers in float32 (many exact ties; every
    dot product is exact whatever the summation order, so every path computes the same scores)."""
    if integer:
        return torch.randint(-2, 3, (rows, d), generator=generator).to(dtype or torch.float32)
    return torch.randn(rows, d, generator=generator, dtype=dtype or torch.float64)


@st.composite
def retrieval_cases(draw, max_images: int = 200, max_dim: int = 300):
    seed = draw(st.integers(0, 2**31 - 1))
    n_images = draw(st.integers(1, max_images))
    if draw(st.booleans()):
        counts = [draw(st.integers(1, 7))] * n_images
    else:
        counts = draw(st.lists(st.integers(1, 7), min_size=n_images, max_size=n_images))
    d = draw(st.integers(1, max_dim))
    integer = draw(st.booleans())
    shuffle = draw(st.booleans())
    g = torch.Generator().manual_seed(seed)
    cap_to_img = caption_owners(counts, shuffle, g)
    img = embeddings(n_images, d, integer, g)
    cap = embeddings(len(cap_to_img), d, integer, g)
    # Exact duplicates (another image's caption, an image twice) tie in exact arithmetic; only
    # integer-valued scores are exact on every path (a small float GEMM may round two identical
    # columns differently, the reference's included).
    if integer and draw(st.booleans()):
        j = torch.randint(0, len(cap), (max(1, len(cap) // 10),), generator=g)
        cap[j] = cap[torch.randint(0, len(cap), (len(j),), generator=g)]
        img[-1] = img[0]
    return img, cap, cap_to_img


# ---- retrieval_ranks ----------------------------------------------------------------------------


def assert_same(got, want):
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype == torch.int64
        assert torch.equal(a, b)


@given(retrieval_cases())
def test_ranks_equal_the_vsepp_procedure(case):
    img, cap, cap_to_img = case
    want = reference.retrieval_ranks(img, cap, cap_to_img)
    assert_same(ops.retrieval_ranks(img, cap, cap_to_img), want)


@st.composite
def tied_cases(draw):
    """Scores full of exact ties: embeddings of small integers in a few dimensions (exact dot
    products on every path), captions and images repeated, captions with no word (zero rows, as
    a caption of unknown words in a bag of words)."""
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    n_images = draw(st.integers(1, 40))
    counts = draw(st.lists(st.integers(1, 6), min_size=n_images, max_size=n_images))
    cap_to_img = caption_owners(counts, draw(st.booleans()), g)
    d = draw(st.integers(1, 4))
    low = draw(st.sampled_from([0, -1]))
    img = torch.randint(low, 2, (n_images, d), generator=g).float()
    cap = torch.randint(low, 2, (len(cap_to_img), d), generator=g).float()
    repeated = torch.randint(0, len(cap), (len(cap) // 3,), generator=g)
    cap[repeated] = cap[torch.randint(0, len(cap), (len(repeated),), generator=g)]
    cap[torch.randint(0, len(cap), (len(cap) // 5,), generator=g)] = 0.0
    img[torch.randint(0, n_images, (n_images // 3,), generator=g)] = img[0].clone()
    return img, cap, cap_to_img


@given(tied_cases())
def test_ties_count_against_the_query(case):
    img, cap, cap_to_img = case
    want = ranks_by_definition(img.double() @ cap.double().T, cap_to_img)
    assert_same(ops.retrieval_ranks(img, cap, cap_to_img), want)
    assert_same(reference.retrieval_ranks(img, cap, cap_to_img), want)
    thresholds = ops.retrieval_thresholds(img, cap, cap_to_img)
    assert_same(ops.retrieval_count_at_least(img, cap, cap_to_img, *thresholds), want)


@pytest.mark.parametrize("shuffle", [False, True])
def test_tie_free_scores_rank_as_under_the_rule_before(shuffle):
    # Continuous scores tie with probability ~0: counting ties against the query changes nothing
    # there (the README's tables, all measured on such scores, stand), and no query has a tie.
    g = torch.Generator().manual_seed(11)
    cap_to_img = caption_owners([5] * 500 + [1, 2, 3] * 40, shuffle, g)
    for dtype in (torch.float32, torch.float64):
        img = torch.randn(620, 32, generator=g, dtype=dtype)
        cap = img[cap_to_img] + 2.0 * torch.randn(len(cap_to_img), 32, generator=g, dtype=dtype)
        got = ops.retrieval_ranks(img, cap, cap_to_img)
        before = ranks_by_definition(img.double() @ cap.double().T, cap_to_img, ties_count="for")
        assert torch.equal(got.i2t, before[0]) and torch.equal(got.t2i, before[1])
        assert not got.i2t_ties.any() and not got.t2i_ties.any()
        assert 0 < int((got.i2t == 0).sum()) < len(img)  # a case that discriminates


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("integer", [False, True])
def test_ranks_across_many_tiles(shuffle, integer):
    # 600 x 3100 spans 3 x 4 tiles of 256 x 1024, with partial tiles on both edges.
    g = torch.Generator().manual_seed(1)
    cap_to_img = caption_owners([5] * 500 + [6] * 100, shuffle, g)
    img = embeddings(600, 24, integer, g)
    cap = embeddings(len(cap_to_img), 24, integer, g)
    assert_same(
        ops.retrieval_ranks(img, cap, cap_to_img), reference.retrieval_ranks(img, cap, cap_to_img)
    )


def test_duplicate_captions_tie_in_fp32():
    # Copies tie exactly in exact arithmetic. The ranks count those ties against the query
    # although the copies and the own scores sit in different GEMM tiles (thresholds come from
    # the tiles themselves): the duplicated image and the original rank alike, as do the copied
    # captions, each has a tie, and all equal the reference's.
    g = torch.Generator().manual_seed(2)
    cap_to_img = torch.arange(3000) // 5
    img = torch.randn(600, 64, generator=g)
    cap = torch.randn(3000, 64, generator=g)
    cap[2995:] = cap[:5]  # image 599's captions copy image 0's
    img[599] = img[0]
    ranks = ops.retrieval_ranks(img, cap, cap_to_img)
    assert ranks.i2t[0] == ranks.i2t[599] and ranks.i2t_ties[0] > 0
    assert torch.equal(ranks.t2i[:5], ranks.t2i[2995:]) and (ranks.t2i_ties[:5] > 0).all()
    assert_same(ranks, reference.retrieval_ranks(img, cap, cap_to_img))


def test_one_code_for_every_item_ranks_nothing_first():
    # Every score is equal (a model that cannot tell anything apart): every other item ties with
    # the ground truth and counts against it, so no query is a hit.
    img = torch.ones(4, 3)
    cap = torch.ones(9, 3)
    cap_to_img = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 3])
    i2t, t2i, i2t_ties, t2i_ties = ops.retrieval_ranks(img, cap, cap_to_img)
    others = 9 - torch.bincount(cap_to_img)  # captions of the other images
    assert torch.equal(i2t, others) and torch.equal(i2t_ties, others)
    assert torch.equal(t2i, torch.full((9,), 3)) and torch.equal(t2i_ties, torch.full((9,), 3))


def test_ranks_on_a_hand_made_case():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    cap = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 3.0], [1.0, 0.0]])
    cap_to_img = torch.tensor([1, 0, 2, 2])
    # S = [[2, 0, 3, 1], [0, 1, 3, 0], [2, 1, 6, 1]]
    i2t, t2i, i2t_ties, t2i_ties = ops.retrieval_ranks(img, cap, cap_to_img)
    # image 0: own {1}: best 0 -> captions 0, 2, 3 above -> 3; image 1: own {0}: best 0 ->
    # captions 1 and 2 (other images) above and 3 tied -> 3; image 2: own {2, 3}: best 6 -> 0.
    assert i2t.tolist() == [3, 3, 0]
    assert i2t_ties.tolist() == [0, 1, 0]
    # caption 0 (image 1, S=0): images 0 and 2 above -> 2; caption 1 (image 0, S=0): 1 and 2 -> 2;
    # caption 2 (image 2, S=6): 0; caption 3 (image 2, S=1): image 0 ties, a miss -> 1.
    assert t2i.tolist() == [2, 2, 0, 1]
    assert t2i_ties.tolist() == [0, 0, 0, 1]


def test_ranks_do_not_depend_on_the_thread_count():
    g = torch.Generator().manual_seed(3)
    cap_to_img = caption_owners([5] * 700, True, g)
    img = torch.randn(700, 48, generator=g)
    cap = torch.randn(len(cap_to_img), 48, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = ops.retrieval_ranks(img, cap, cap_to_img)
    finally:
        torch.set_num_threads(threads)
    assert_same(ops.retrieval_ranks(img, cap, cap_to_img), single)


def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(4)
    img = torch.randn(40, 16, generator=g, dtype=torch.float64)
    cap = torch.randn(120, 16, generator=g, dtype=torch.float64)
    cap_to_img = torch.arange(120) // 3
    expected = ops.retrieval_ranks(img, cap, cap_to_img)
    img_t = img.T.contiguous().T  # transposed storage
    cap_sliced = torch.stack([cap, torch.zeros_like(cap)], dim=-1)[..., 0]  # column stride 2
    owners_sliced = torch.stack([cap_to_img, cap_to_img], dim=1)[:, 0]  # stride 2
    got = ops.retrieval_ranks(img_t, cap_sliced, owners_sliced)
    assert not img_t.is_contiguous() and not cap_sliced.is_contiguous()
    assert_same(got, expected)
    # expanded (stride-0) inputs: one image, every caption its own
    one = img[:1].expand(1, 16)
    ranks = ops.retrieval_ranks(one, cap, torch.zeros(1, dtype=torch.int64).expand(120))
    assert ranks.i2t.tolist() == [0] and ranks.t2i.tolist() == [0] * 120


def test_inputs_that_require_grad_give_plain_ranks():
    img = torch.randn(5, 3, requires_grad=True)
    cap = torch.randn(10, 3, requires_grad=True)
    cap_to_img = torch.arange(10) // 2
    for out in (
        *ops.retrieval_ranks(img, cap, cap_to_img),
        *ops.retrieval_thresholds(img, cap, cap_to_img),
    ):
        assert not out.requires_grad


# ---- retrieval_thresholds and retrieval_count_at_least ------------------------------------------


@given(retrieval_cases(max_images=60, max_dim=40))
def test_thresholds_and_counts_equal_the_reference(case):
    img, cap, cap_to_img = case
    img, cap = img.float().round(), cap.float().round()  # exact scores on every path
    thresholds = ops.retrieval_thresholds(img, cap, cap_to_img)
    for got, want in zip(
        thresholds, reference.retrieval_thresholds(img, cap, cap_to_img), strict=True
    ):
        assert torch.equal(got, want)
    # external thresholds: the own ones shifted to land on, between and beside the scores
    img_thr = thresholds[0] + torch.randint(-2, 3, thresholds[0].shape).float() * 0.5
    cap_thr = thresholds[1] + torch.randint(-2, 3, thresholds[1].shape).float() * 0.5
    assert_same(
        ops.retrieval_count_at_least(img, cap, cap_to_img, img_thr, cap_thr),
        reference.retrieval_count_at_least(img, cap, cap_to_img, img_thr, cap_thr),
    )


def test_ranks_are_counts_at_least_the_thresholds():
    g = torch.Generator().manual_seed(5)
    cap_to_img = torch.arange(2600) // 5
    img = torch.randn(520, 32, generator=g)
    cap = torch.randn(2600, 32, generator=g)
    thresholds = ops.retrieval_thresholds(img, cap, cap_to_img)
    counts = ops.retrieval_count_at_least(img, cap, cap_to_img, *thresholds)
    assert_same(counts, ops.retrieval_ranks(img, cap, cap_to_img))


def test_sharded_gallery_sums_to_the_ranks():
    # Captions split in two shards: best own scores reduce with max, counts and ties with sum.
    g = torch.Generator().manual_seed(6)
    cap_to_img = caption_owners([1, 3, 5, 2] * 30, True, g)
    img = embeddings(120, 6, True, g)
    cap = embeddings(len(cap_to_img), 6, True, g)
    shards = torch.arange(len(cap)).chunk(2)
    per_shard = [ops.retrieval_thresholds(img, cap[s], cap_to_img[s]) for s in shards]
    img_thr = torch.maximum(per_shard[0][0], per_shard[1][0])
    counts = [
        ops.retrieval_count_at_least(img, cap[s], cap_to_img[s], img_thr, thr[1])
        for s, thr in zip(shards, per_shard, strict=True)
    ]
    ranks = ops.retrieval_ranks(img, cap, cap_to_img)
    assert ranks.i2t_ties.any() and ranks.t2i_ties.any()  # the integer case has ties
    assert torch.equal(counts[0].i2t + counts[1].i2t, ranks.i2t)
    assert torch.equal(counts[0].i2t_ties + counts[1].i2t_ties, ranks.i2t_ties)
    assert torch.equal(torch.cat([counts[0].t2i, counts[1].t2i]), ranks.t2i)
    assert torch.equal(torch.cat([counts[0].t2i_ties, counts[1].t2i_ties]), ranks.t2i_ties)


def test_image_thresholds_without_captions_are_minus_infinity():
    img = torch.eye(3)
    cap = torch.eye(3)[:2]
    img_thr, cap_thr = ops.retrieval_thresholds(img, cap, torch.tensor([0, 0]))
    assert img_thr.tolist() == [1.0, float("-inf"), float("-inf")]
    assert cap_thr.tolist() == [1.0, 0.0]


def test_count_at_least_skips_captions_of_absent_images():
    img = torch.tensor([[1.0], [2.0]])
    cap = torch.tensor([[1.0], [3.0], [5.0]])
    cap_to_img = torch.tensor([0, -1, 1])  # caption 1 belongs to an image of another shard
    img_counts, cap_counts, img_ties, cap_ties = ops.retrieval_count_at_least(
        img, cap, cap_to_img, torch.tensor([2.0, 2.0]), torch.tensor([0.0, 2.0, 0.0])
    )
    # S = [[1, 3, 5], [2, 6, 10]]
    assert img_counts.tolist() == [2, 2]  # image 0: 3, 5 (not its own 1); image 1: 2, 6 (not 10)
    assert img_ties.tolist() == [0, 1]  # image 1: caption 0's 2 equals the threshold
    assert cap_counts.tolist() == [1, 2, 1]  # caption 0: image 1 only; caption 1: both
    assert cap_ties.tolist() == [0, 0, 0]


# ---- topk_search --------------------------------------------------------------------------------


@st.composite
def topk_cases(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    n_queries = draw(st.integers(1, 40))
    n_gallery = draw(st.integers(1, 2500))
    k = draw(st.integers(1, min(n_gallery, 1100)))
    d = draw(st.integers(1, 64))
    integer = draw(st.booleans())
    g = torch.Generator().manual_seed(seed)
    return (
        embeddings(n_queries, d, integer, g),
        embeddings(n_gallery, d, integer, g),
        k,
    )


@given(topk_cases())
def test_topk_equals_a_stable_sort(case):
    queries, gallery, k = case
    scores, indices = ops.topk_search(queries, gallery, k)
    ref_scores, ref_indices = reference.topk_search(queries, gallery, k)
    assert scores.shape == indices.shape == (queries.shape[0], k)
    assert torch.equal(indices, ref_indices)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-12, atol=1e-12)


def test_topk_breaks_ties_by_lower_index_across_tiles():
    gallery = torch.zeros(5000, 2)
    gallery[::7, 0] = 1.0  # 715 equal best scores spread over five 1024-wide tiles
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    scores, indices = ops.topk_search(queries, gallery, 1024)
    assert indices[0, :715].tolist() == list(range(0, 5000, 7))
    assert indices[0, 715:].tolist() == [i for i in range(5000) if i % 7][: 1024 - 715]
    assert indices[1].tolist() == list(range(1024))  # all scores 0: the lowest indices
    assert scores[0, :715].eq(1).all() and scores[0, 715:].eq(0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 9, 300, 1024])
@pytest.mark.parametrize("order", ["ascending", "few values", "narrow range"])
def test_topk_selection_under_adversarial_orders(order, k, dtype):
    """Each shrink of the running top-k picks its floor from a histogram of the candidates' keys:
    scores that rise with the index (every one beats the floor, a shrink every few chunks), a few
    distinct values (one key holds many: the exact k-th) and scores a few ulps apart (many
    refinements) must all give the sort's answer."""
    n = 12000
    position = torch.arange(n, dtype=torch.float64)
    if order == "ascending":
        values = position / n
    elif order == "few values":
        values = torch.remainder(position * 7919, 5)
    else:
        values = 1 + torch.remainder(position * 7919, 251) * torch.finfo(dtype).eps
    gallery = torch.stack([values, torch.zeros(n, dtype=torch.float64)], 1).to(dtype)
    queries = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=dtype)
    scores, indices = ops.topk_search(queries, gallery, k)
    ref_scores, ref_indices = reference.topk_search(queries, gallery, k)
    assert torch.equal(indices, ref_indices)
    assert torch.equal(scores, ref_scores)


def test_topk_ties_minus_zero_with_zero():
    # -0.0 == 0.0: the two tie and go by index, as in torch.sort (the kernel orders scores by
    # their bits, which must not put +0 above -0).
    gallery = torch.tensor([[0.0], [-0.0], [0.0], [-1.0], [-0.0], [1.0]])
    for query in (1.0, -1.0):
        scores, indices = ops.topk_search(torch.tensor([[query]]), gallery, 6)
        ref_scores, ref_indices = reference.topk_search(torch.tensor([[query]]), gallery, 6)
        assert torch.equal(indices, ref_indices)
        assert torch.equal(scores, ref_scores)
    assert indices.tolist() == [[3, 0, 1, 2, 4, 5]]


def _in_torch_sort_order(scores: torch.Tensor, indices: torch.Tensor) -> bool:
    """Per row: NaN first, then descending, ties by lower index (torch.sort's stable order)."""
    key = torch.where(scores.isnan(), torch.inf, scores)
    nan = scores.isnan()
    for row in range(scores.shape[0]):
        for a, b in zip(range(scores.shape[1] - 1), range(1, scores.shape[1]), strict=True):
            if nan[row, b] and not nan[row, a]:
                return False
            same = (nan[row, a] and nan[row, b]) or (not nan[row, a] and key[row, a] == key[row, b])
            if key[row, a] < key[row, b] or (same and indices[row, a] > indices[row, b]):
                return False
    return True


@pytest.mark.parametrize("k", [1, 5, 40])
def test_topk_of_overflowing_scores(k):
    # Finite embeddings whose scores overflow to +inf, -inf or NaN (inf - inf, where the GEMM's
    # summation order decides: a tile's GEMM and the full one may differ there). Every slot must
    # still be a distinct gallery item in torch.sort's order, the same for any thread count, and
    # rows without NaN must equal the reference.
    g = torch.Generator().manual_seed(3)
    gallery = torch.randn(3000, 2, generator=g, dtype=torch.float64)
    gallery[0::4] = torch.tensor([1e300, -1e300], dtype=torch.float64)
    gallery[1::4] = torch.tensor([1e300, 1e300], dtype=torch.float64)
    gallery[2::4] = torch.tensor([-1e300, -1e300], dtype=torch.float64)
    queries = torch.tensor(
        [[1e10, 1e10], [1e10, -1e10], [-1e10, 0.0], [0.0, 0.0]], dtype=torch.float64
    )
    previous = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(ops.topk_search(queries, gallery, k))
    finally:
        torch.set_num_threads(previous)
    (scores, indices), (scores2, indices2) = results
    assert torch.equal(indices, indices2)
    torch.testing.assert_close(scores, scores2, equal_nan=True, rtol=0, atol=0)
    assert indices.min() >= 0 and indices.max() < len(gallery)
    assert all(len(set(row)) == k for row in indices.tolist())
    assert _in_torch_sort_order(scores, indices)
    ref_scores, ref_indices = reference.topk_search(queries[2:], gallery, k)
    assert ref_scores[0].isinf().all()  # query 2 meets +inf and -inf scores, never NaN
    assert torch.equal(indices[2:], ref_indices)
    assert torch.equal(scores[2:], ref_scores)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_topk_ranks_nan_scores_first_like_torch_sort(k):
    big = 1e300
    gallery = torch.tensor(
        [[big, -big], [1, 2], [big, big], [-big, -big], [3, 1], [big, -big], [0, 0]],
        dtype=torch.float64,
    )
    queries = torch.tensor([[1e10, 1e10], [1e10, -1e10], [0, 1]], dtype=torch.float64)
    ref_scores, ref_indices = reference.topk_search(queries, gallery, k)
    assert ref_scores[:2, 0].isnan().all()  # inf - inf: this is what the NaN case is about
    scores, indices = ops.topk_search(queries, gallery, k)
    assert torch.equal(indices, ref_indices)
    torch.testing.assert_close(scores, ref_scores, equal_nan=True, rtol=0, atol=0)


def test_topk_when_every_score_is_minus_infinity():
    gallery = torch.full((50, 1), -1e300, dtype=torch.float64)
    scores, indices = ops.topk_search(torch.tensor([[1e300]], dtype=torch.float64), gallery, 50)
    assert indices.tolist() == [list(range(50))]
    assert scores.eq(-torch.inf).all()


def test_topk_gradients():
    g = torch.Generator().manual_seed(7)
    queries = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    gallery = torch.randn(30, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, g: ops.topk_search(q, g, 7)[0], (queries, gallery))


# ---- operator registration ----------------------------------------------------------------------


def _opcheck_cases():
    g = torch.Generator().manual_seed(8)
    img = torch.randn(6, 4, generator=g)
    cap = torch.randn(13, 4, generator=g)
    cap_to_img = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 5])
    img_thr, cap_thr = ops.retrieval_thresholds(img, cap, cap_to_img)
    return [
        ("retrieval_ranks", (img, cap, cap_to_img)),
        ("retrieval_thresholds", (img, cap, cap_to_img)),
        ("retrieval_count_at_least", (img, cap, cap_to_img, img_thr, cap_thr)),
        ("topk_search", (img, cap, 5)),
        ("topk_search", (img.double().requires_grad_(), cap.double().requires_grad_(), 13)),
    ]


@pytest.mark.parametrize(("name", "args"), _opcheck_cases())
def test_opcheck(name, args):
    torch.library.opcheck(getattr(torch.ops.jwae_ext, name).default, args)


# ---- bad input ----------------------------------------------------------------------------------


def _valid():
    return torch.randn(4, 3), torch.randn(8, 3), torch.arange(8) // 2


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda i, c, o: (i, c[:, :2], o), ValueError, "same embedding size"),
        (lambda i, c, o: (i[0], c, o), ValueError, "'img_emb' must be a 2-D tensor"),
        (lambda i, c, o: (i, c.double(), o), TypeError, "same dtype"),
        (lambda i, c, o: (i.int(), c.int(), o), TypeError, "float32 or float64"),
        (lambda i, c, o: (i.half(), c.half(), o), TypeError, "float16/bfloat16 are CUDA-only"),
        (lambda i, c, o: (i, c, o[:7]), ValueError, "'cap_to_img' must have 8 entries"),
        (lambda i, c, o: (i, c, o.int()), TypeError, "'cap_to_img' must be int64"),
        (lambda i, c, o: (i, c, o.float()), TypeError, "'cap_to_img' must be int64"),
        (lambda i, c, o: (i, c, o[:, None]), ValueError, "'cap_to_img' must be a 1-D"),
        (lambda i, c, o: (i, c, o + 1), ValueError, r"image ids in \[0, 4\)"),
        (lambda i, c, o: (i, c, o - 1), ValueError, r"image ids in \[0, 4\)"),
        (lambda i, c, o: (i, c, o.clamp(max=2)), ValueError, "the first is image 3"),
        (lambda i, c, o: (i[:0], c, o), ValueError, "'img_emb' must not be empty"),
        (lambda i, c, o: (i, c[:0], o[:0]), ValueError, "'cap_emb' must not be empty"),
        (lambda i, c, o: (i[:, :0], c[:, :0], o), ValueError, "must not be empty"),
        (
            lambda i, c, o: (i.index_fill(0, torch.tensor([1]), float("nan")), c, o),
            ValueError,
            "finite",
        ),
        (
            lambda i, c, o: (i, c.index_fill(0, torch.tensor([1]), float("inf")), o),
            ValueError,
            "finite",
        ),
        (lambda i, c, o: (i.numpy(), c, o), TypeError, "must be a torch.Tensor"),
    ],
)
def test_bad_retrieval_input(change, error, message):
    with pytest.raises(error, match=message):
        ops.retrieval_ranks(*change(*_valid()))


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda it, ct: (it[:3], ct), ValueError, "'img_thresholds' must have 4 entries"),
        (lambda it, ct: (it, ct[:, None]), ValueError, "'cap_thresholds' must be a 1-D"),
        (lambda it, ct: (it.double(), ct), TypeError, "score dtype"),
        (lambda it, ct: (it, ct.fill_(float("nan"))), ValueError, "must not hold NaN"),
    ],
)
def test_bad_thresholds(change, error, message):
    img, cap, owners = _valid()
    thresholds = ops.retrieval_thresholds(img, cap, owners)
    with pytest.raises(error, match=message):
        ops.retrieval_count_at_least(img, cap, owners, *change(*thresholds))


def test_count_at_least_takes_minus_one_but_nothing_lower():
    img, cap, owners = _valid()
    thresholds = ops.retrieval_thresholds(img, cap, owners)
    with pytest.raises(ValueError, match=r"image ids in \[-1, 4\)"):
        ops.retrieval_count_at_least(img, cap, owners - 2, *thresholds)


@pytest.mark.parametrize(
    ("k", "error", "message"),
    [
        (0, ValueError, r"'k' must be in \[1, 8\]"),
        (-3, ValueError, r"'k' must be in \[1, 8\]"),
        (9, ValueError, r"'k' must be in \[1, 8\]"),
        (2.0, TypeError, "'k' must be an int"),
        (True, TypeError, "'k' must be an int"),
    ],
)
def test_bad_k(k, error, message):
    img, cap, _ = _valid()
    with pytest.raises(error, match=message):
        ops.topk_search(img, cap, k)


def test_bad_topk_embeddings():
    img, cap, _ = _valid()
    with pytest.raises(ValueError, match="same embedding size"):
        ops.topk_search(img, cap[:, :2], 1)
    with pytest.raises(ValueError, match="'gallery' must not be empty"):
        ops.topk_search(img, cap[:0], 1)


# ---- CUDA against CPU ---------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shuffle", [False, True])
def test_cuda_ranks_equal_cpu(dtype, shuffle):
    # Small integers: every dtype holds them and every product sum exactly, so CPU fp32 is the
    # exact answer; 1500 x 9000 spans several CUDA tiles.
    g = torch.Generator().manual_seed(9)
    cap_to_img = caption_owners([6] * 1500, shuffle, g)
    img = embeddings(1500, 40, True, g)
    cap = embeddings(len(cap_to_img), 40, True, g)
    expected = ops.retrieval_ranks(img, cap, cap_to_img)
    got = ops.retrieval_ranks(img.to("cuda", dtype), cap.to("cuda", dtype), cap_to_img.cuda())
    for a, b in zip(got, expected, strict=True):
        assert a.is_cuda and torch.equal(a.cpu(), b)
    thresholds = ops.retrieval_thresholds(
        img.to("cuda", dtype), cap.to("cuda", dtype), cap_to_img.cuda()
    )
    assert thresholds[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


@pytest.mark.cuda
def test_cuda_ranks_random_float64():
    g = torch.Generator().manual_seed(10)
    cap_to_img = caption_owners([5] * 1200, True, g)
    img = torch.randn(1200, 32, generator=g, dtype=torch.float64)
    cap = torch.randn(len(cap_to_img), 32, generator=g, dtype=torch.float64)
    expected = ops.retrieval_ranks(img, cap, cap_to_img)
    got = ops.retrieval_ranks(img.cuda(), cap.cuda(), cap_to_img.cuda())
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a.cpu(), b)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 10, 1024])
def test_cuda_topk_equals_cpu(dtype, k):
    g = torch.Generator().manual_seed(11)
    queries = embeddings(300, 20, True, g)
    gallery = embeddings(9000, 20, True, g)
    scores, indices = ops.topk_search(queries.to("cuda", dtype), gallery.to("cuda", dtype), k)
    ref_scores, ref_indices = ops.topk_search(queries, gallery, k)
    assert scores.dtype == torch.float32
    assert torch.equal(indices.cpu(), ref_indices) and torch.equal(scores.cpu(), ref_scores)


@pytest.mark.cuda
def test_cuda_opcheck_and_mixed_devices():
    img, cap, owners = (t.cuda() for t in _valid())
    torch.library.opcheck(torch.ops.jwae_ext.retrieval_ranks.default, (img, cap, owners))
    torch.library.opcheck(torch.ops.jwae_ext.topk_search.default, (img, cap, 3))
    with pytest.raises(ValueError, match="same device"):
        ops.retrieval_ranks(img, cap.cpu(), owners)
    with pytest.raises(ValueError, match="same device"):
        ops.retrieval_ranks(img, cap, owners.cpu())
    with pytest.raises(ValueError, match="same device"):
        ops.topk_search(img.cpu(), cap, 2)
