"""Exact retrieval under cross-attention scores (ops.xattn_ranks, retrieval.evaluate_xattn) against
the tables of retrieval.evaluate on the full score matrix; the parts of a distributed count."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from rank_rules import ranks_by_definition

from jwae_ext import ops, reference, retrieval
from jwae_ext.reference.xattn_scores import AGGREGATIONS, DIRECTIONS, RAW_FEATURE_NORMS
from jwae_ext.reference.xattn_scores import xattn_scores as reference_scores


def owners(counts: list[int], shuffle: bool, g: torch.Generator) -> torch.Tensor:
    cap_to_img = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return cap_to_img[torch.randperm(len(cap_to_img), generator=g)] if shuffle else cap_to_img


def features(n, length, d, g):
    return torch.randn(n, length, d, generator=g, dtype=torch.float64)


def matrix_tables(scores: torch.Tensor, cap_to_img: torch.Tensor, protocol: str = "full"):
    """retrieval.evaluate's tables on a full score matrix: scores = scores @ I."""
    eye = torch.eye(scores.shape[1], dtype=scores.dtype)
    return retrieval.evaluate(scores, eye, cap_to_img, protocol=protocol)


@st.composite
def cases(draw, duplicates: bool = False):
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    n_images = draw(st.integers(1, 25))
    per_image = draw(st.sampled_from([1, 5, None]))
    counts = (
        [per_image] * n_images
        if per_image
        else draw(st.lists(st.integers(1, 6), min_size=n_images, max_size=n_images))
    )
    cap_to_img = owners(counts, draw(st.booleans()), g)
    regions, max_words = draw(st.integers(1, 12)), draw(st.integers(1, 8))
    # d >= 2: in one dimension every cosine is +-1, and such ties of different pairs are exact in
    # neither computation. Random features tie only where they are duplicated.
    d = draw(st.integers(2, 16))
    images = features(n_images, regions, d, g)
    captions = features(len(cap_to_img), max_words, d, g)
    lengths = torch.randint(1, max_words + 1, (len(cap_to_img),), generator=g)
    if duplicates:
        # Duplicates tie exactly only where every word-region product is exact: a float product
        # computed at another row of the kernel's GEMM can differ in the last bit from the
        # original's. Small integers are exact (and tie in other ways too).
        images, captions = images.round(), captions.round()
        j = torch.randint(0, len(captions), (max(1, len(captions) // 4),), generator=g)
        source = torch.randint(0, len(captions), (len(j),), generator=g)
        captions[j], lengths[j] = captions[source], lengths[source]
        images[-1] = images[0]
    kwargs = {
        "direction": draw(st.sampled_from(DIRECTIONS)),
        "agg": draw(st.sampled_from(AGGREGATIONS)),
        "raw_feature_norm": draw(st.sampled_from(RAW_FEATURE_NORMS)),
        "lambda_softmax": draw(st.sampled_from([9.0, 4.0])),
        "lambda_lse": draw(st.sampled_from([6.0, 20.0])),
    }
    return images, captions, lengths, cap_to_img, kwargs


@given(cases())
def test_tables_equal_evaluate_on_the_reference_score_matrix(case):
    images, captions, lengths, cap_to_img, kwargs = case
    scores = reference_scores(images, captions, lengths, **kwargs)
    want = matrix_tables(scores, cap_to_img)
    got = retrieval.evaluate_xattn(images, captions, lengths, cap_to_img, **kwargs)
    assert got == want
    ranks = ops.xattn_ranks(images, captions, lengths, cap_to_img, **kwargs)
    want_ranks = reference.retrieval_ranks(scores, torch.eye(len(cap_to_img), dtype=scores.dtype),
                                         cap_to_img)  # fmt: skip
    for r, w in zip(ranks, want_ranks, strict=True):
        assert torch.equal(r, w)
    assert not ranks.i2t_ties.any() and not ranks.t2i_ties.any()  # random features: no tie


@given(cases(duplicates=True))
def test_ties_count_against_the_query(case):
    # Ties are exact in the kernel's own scores (the reference's may round elsewhere): the ranks
    # are the rule's on the score matrix of ops.xattn_scores, computed by the same tiles.
    images, captions, lengths, cap_to_img, kwargs = case
    ranks = ops.xattn_ranks(images, captions, lengths, cap_to_img, **kwargs)
    scores = ops.xattn_scores(images, captions, lengths, **kwargs)
    for r, w in zip(ranks, ranks_by_definition(scores, cap_to_img), strict=True):
        assert torch.equal(r, w)
    if len(images) > 1:  # the last image copies the first: image 0's captions have a t2i tie
        assert ranks.t2i_ties[cap_to_img == 0].all()


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_ranks_across_many_tiles_with_duplicates(direction):
    # 40 images of 20 regions (25 per image group: 2 groups), 200 captions of 5 words (4 caption
    # groups), shuffled; duplicated captions and images tie exactly.
    g = torch.Generator().manual_seed(2)
    cap_to_img = owners([5] * 40, True, g)
    images = features(40, 20, 6, g)
    captions = features(200, 5, 6, g)
    lengths = torch.randint(1, 6, (200,), generator=g)
    captions[10:20], lengths[10:20] = captions[:10], lengths[:10]
    images[30:35] = images[:5]
    kwargs = {"direction": direction}
    scores = reference_scores(images, captions, lengths, **kwargs)
    got = ops.xattn_ranks(images, captions, lengths, cap_to_img, **kwargs)
    want = reference.retrieval_ranks(scores, torch.eye(200, dtype=scores.dtype), cap_to_img)
    for r, w in zip(got, want, strict=True):
        assert torch.equal(r, w)
    # The copied images tie with the originals for every caption of either: t2i ties, counted
    # against the caption.
    of_copied = (cap_to_img < 5) | ((cap_to_img >= 30) & (cap_to_img < 35))
    assert got.t2i_ties[of_copied].all()
    for r, w in zip(got, ranks_by_definition(scores, cap_to_img), strict=True):
        assert torch.equal(r, w)


@given(st.booleans().flatmap(lambda duplicates: cases(duplicates)), st.integers(2, 5))
def test_parts_of_the_counting_pass_sum_to_the_ranks(case, parts):
    images, captions, lengths, cap_to_img, kwargs = case
    whole = ops.xattn_ranks(images, captions, lengths, cap_to_img, **kwargs)
    split = [
        ops.xattn_ranks(images, captions, lengths, cap_to_img, part=p, parts=parts, **kwargs)
        for p in range(parts)
    ]
    for field, want in zip(zip(*split, strict=True), whole, strict=True):
        assert torch.equal(sum(field), want)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_parts_share_the_caption_tiles(direction):
    # 1000 captions of 5 words in 10 caption groups of 512 words (tiles of whole captions), split
    # 3 ways (3, 3 and 4 groups): every part counts a share of every query's items, none all of
    # them, and the shares, ties included, sum to the ranks. Duplicates of small integers (exact
    # products) tie across the parts.
    g = torch.Generator().manual_seed(9)
    cap_to_img = owners([5] * 200, True, g)
    images = features(200, 4, 6, g).round()
    captions = features(1000, 5, 6, g).round()
    lengths = torch.full((1000,), 5)
    captions[500:600] = captions[:100]
    images[150:160] = images[:10]
    whole = ops.xattn_ranks(images, captions, lengths, cap_to_img, direction=direction)
    split = [
        ops.xattn_ranks(images, captions, lengths, cap_to_img, direction=direction, part=p, parts=3)
        for p in range(3)
    ]
    for field, want in zip(zip(*split, strict=True), whole, strict=True):
        assert torch.equal(sum(field), want)
    assert whole.i2t_ties.any() and whole.t2i_ties.any()
    for part in split:
        # Each part counts the pairs of its own captions: a third or so of the i2t counts, and
        # the t2i counts of its captions only.
        assert 0 < part.i2t.sum() < whole.i2t.sum()
        counted = part.t2i > 0
        assert counted.any() and not counted.all()
    # One caption group, three parts: two of them count nothing.
    few = ops.xattn_ranks(images[:2], captions[:4], lengths[:4], torch.tensor([0, 1, 1, 0]),
                          part=0, parts=3)  # fmt: skip
    assert all(not t.any() for t in few)


@pytest.mark.parametrize(
    ("part", "parts", "error", "message"),
    [
        (0, 0, ValueError, r"'parts' must be >= 1, got 0"),
        (2, 2, ValueError, r"'part' must be in \[0, 2\) \('parts'\), got 2"),
        (-1, 2, ValueError, r"'part' must be in \[0, 2\)"),
        (0.0, 2, TypeError, "'part' must be an int, got float"),
        (0, True, TypeError, "'parts' must be an int, got bool"),
    ],
)
def test_bad_part(part, parts, error, message):
    g = torch.Generator().manual_seed(10)
    images, captions = features(3, 2, 4, g), features(3, 2, 4, g)
    with pytest.raises(error, match=message):
        ops.xattn_ranks(
            images, captions, torch.tensor([1, 2, 2]), torch.arange(3), part=part, parts=parts
        )


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_tie_free_scores_rank_as_under_the_rule_before(direction):
    # Random features give tie-free scores: the ranks are those of the rule before (strictly
    # higher scores only), and no query has a tie.
    g = torch.Generator().manual_seed(8)
    cap_to_img = owners([1, 2, 5] * 10, True, g)
    images = features(30, 7, 6, g)
    captions = features(len(cap_to_img), 5, 6, g)
    lengths = torch.randint(1, 6, (len(cap_to_img),), generator=g)
    scores = reference_scores(images, captions, lengths, direction=direction)
    got = ops.xattn_ranks(images, captions, lengths, cap_to_img, direction=direction)
    before = ranks_by_definition(scores, cap_to_img, ties_count="for")
    assert torch.equal(got.i2t, before[0]) and torch.equal(got.t2i, before[1])
    assert not got.i2t_ties.any() and not got.t2i_ties.any()


def test_the_definition_equals_the_reference_ranks():
    g = torch.Generator().manual_seed(3)
    cap_to_img = owners([1, 3, 2, 5], True, g)
    scores = torch.randint(-3, 4, (4, 11), generator=g).double()  # many ties
    want = reference.retrieval_ranks(scores, torch.eye(11, dtype=torch.float64), cap_to_img)
    for r, w in zip(ranks_by_definition(scores, cap_to_img), want, strict=True):
        assert torch.equal(r, w)


@pytest.mark.parametrize(("protocol", "per_image"), [("1k", 1), ("1k", 5), ("5k", 1)])
def test_coco_protocols(protocol, per_image):
    g = torch.Generator().manual_seed(4)
    cap_to_img = owners([per_image] * 5000, False, g)
    images = features(5000, 2, 3, g)
    captions = features(len(cap_to_img), 3, 3, g)
    lengths = torch.randint(1, 4, (len(cap_to_img),), generator=g)
    got = retrieval.evaluate_xattn(images, captions, lengths, cap_to_img, protocol=protocol)

    def ranks(fold_images, caption_index, fold_cap_to_img):
        scores = ops.xattn_scores(fold_images, captions[caption_index], lengths[caption_index])
        return ranks_by_definition(scores, fold_cap_to_img)

    caption_index = torch.arange(len(cap_to_img))
    want = retrieval.protocol_tables(images, caption_index, cap_to_img, protocol, ranks)
    assert got == want


def test_shuffled_folds_are_copied_not_misread():
    # COCO 1K with captions in random order: each fold's captions are gathered by index.
    g = torch.Generator().manual_seed(5)
    cap_to_img = owners([1] * 5000, True, g)
    images = features(5000, 1, 2, g)
    captions = features(5000, 2, 2, g)
    lengths = torch.randint(1, 3, (5000,), generator=g)
    got = retrieval.evaluate_xattn(images, captions, lengths, cap_to_img, protocol="1k")
    order = torch.argsort(cap_to_img)
    want = retrieval.evaluate_xattn(images, captions[order], lengths[order], cap_to_img[order],
                                    protocol="1k")  # fmt: skip
    assert got == want


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"protocol": "coco"}, ValueError, "'protocol' must be one of"),
        ({"protocol": "1k"}, ValueError, "'images' must have 5000 rows"),
        ({"agg": "LogSumExp"}, ValueError, "'agg' must be one of"),
    ],
)
def test_bad_evaluate_arguments(kwargs, error, message):
    g = torch.Generator().manual_seed(6)
    images, captions = features(3, 2, 4, g), features(3, 2, 4, g)
    with pytest.raises(error, match=message):
        retrieval.evaluate_xattn(
            images, captions, torch.tensor([1, 2, 2]), torch.arange(3), **kwargs
        )


@pytest.mark.parametrize(
    ("cap_to_img", "message"),
    [
        (torch.tensor([0, 1, 3]), r"image ids in \[0, 3\)"),
        (torch.tensor([0, 1, 1]), "the first is image 2"),
        (torch.tensor([0, 1]), "'cap_to_img' must have 3 entries"),
        (torch.tensor([0.0, 1.0, 2.0]), "'cap_to_img' must be int64"),
    ],
)
def test_bad_cap_to_img(cap_to_img, message):
    g = torch.Generator().manual_seed(7)
    images, captions = features(3, 2, 4, g), features(3, 2, 4, g)
    with pytest.raises((ValueError, TypeError), match=message):
        ops.xattn_ranks(images, captions, torch.tensor([1, 2, 2]), cap_to_img)
