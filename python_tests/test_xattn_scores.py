"""Stacked cross-attention scores against SCAN's formulation (the reference): values, gradients,
padding, options, tiles, threads, opcheck, torch.compile and bad input."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from jwae_ext import ops
from jwae_ext.ops.tolerances import tolerance
from jwae_ext.reference.xattn_scores import (
    AGGREGATIONS,
    DIRECTIONS,
    RAW_FEATURE_NORMS,
)
from jwae_ext.reference.xattn_scores import (
    xattn_scores as reference,
)

ALL_OPTIONS = list(itertools.product(DIRECTIONS, AGGREGATIONS, RAW_FEATURE_NORMS))

# ---- inputs -------------------------------------------------------------------------------------


def make_inputs(n_images, regions, n_captions, max_words, d, *, seed=0, dtype=torch.float64,
                normalize=True, lengths=None):  # fmt: skip
    """Region and word features (l2-normalized rows, as the model gives them, unless told
    otherwise), captions padded with NaN past random lengths in [1, max_words]."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n_images, regions, d, generator=g, dtype=torch.float64)
    captions = torch.randn(n_captions, max_words, d, generator=g, dtype=torch.float64)
    if normalize:
        images, captions = F.normalize(images, dim=-1), F.normalize(captions, dim=-1)
    if lengths is None:
        lengths = torch.randint(1, max_words + 1, (n_captions,), generator=g)
    for c, n in enumerate(lengths.tolist()):
        captions[c, n:] = float("nan")
    return images.to(dtype), captions.to(dtype), lengths


def options(direction="t2i", agg="lse", norm="clipped_l2norm", lambda_softmax=9.0, lambda_lse=6.0):
    return {
        "direction": direction,
        "agg": agg,
        "raw_feature_norm": norm,
        "lambda_softmax": lambda_softmax,
        "lambda_lse": lambda_lse,
    }


def scores_and_grads(fn, images, captions, lengths, weights, **kwargs):
    """fn's scores and the gradients of Σ weights * scores for both inputs (float64 copies)."""
    x = images.detach().clone().requires_grad_()
    y = captions.detach().clone().requires_grad_()
    scores = fn(x, y, lengths, **kwargs)
    grad_x, grad_y = torch.autograd.grad((scores * weights.to(scores.dtype)).sum(), (x, y))
    return scores, grad_x, grad_y


def assert_close(got, want, rtol, what):
    """Close relative to the largest magnitude of `want` (gradients span decades)."""
    scale = max(float(want.detach().abs().max()), 1.0)
    torch.testing.assert_close(got.double(), want.double(), rtol=0, atol=rtol * scale, msg=what)


@st.composite
def problems(draw):
    d = draw(st.integers(1, 300))
    # Modest sizes: the reference's loop and its autograd are the slow side.
    budget = max(1, 60_000 // d)
    regions = draw(st.integers(1, 40))
    max_words = draw(st.integers(1, 20))
    n_images = draw(st.integers(1, max(1, min(60, budget // (regions * 8)))))
    n_captions = draw(st.integers(1, max(1, min(60, budget // (max_words * 8)))))
    direction, agg, norm = draw(st.sampled_from(ALL_OPTIONS))
    lambda_softmax = draw(st.sampled_from([4.0, 9.0, 0.5, 20.0]))
    lambda_lse = draw(st.sampled_from([6.0, 5.0, 20.0, 1.0]))
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    seed = draw(st.integers(0, 2**31 - 1))
    inputs = make_inputs(n_images, regions, n_captions, max_words, d, seed=seed, dtype=dtype)
    return inputs, options(direction, agg, norm, lambda_softmax, lambda_lse)


# ---- values and gradients against the reference -------------------------------------------------


@given(problems())
def test_scores_and_gradients_match_the_reference(problem):
    (images, captions, lengths), kwargs = problem
    weights = torch.randn(images.shape[0], captions.shape[0], dtype=torch.float64)
    got = scores_and_grads(ops.xattn_scores, images, captions, lengths, weights, **kwargs)
    # The reference in float64 on the same inputs: the float32 kernel is judged by the truth.
    want = scores_and_grads(reference, images.double(), captions.double(), lengths, weights,
                            **kwargs)  # fmt: skip
    assert got[0].dtype == images.dtype and got[0].shape == want[0].shape
    exact = images.dtype == torch.float64
    # Gradients through the l2 norm of a column of one or two words can be large and sensitive.
    tolerances = (1e-9, 1e-7, 1e-7) if exact else (1e-4, 2e-3, 2e-3)
    names = ("scores", "d images", "d captions")
    for g, w, what, tol in zip(got, want, names, tolerances, strict=True):
        assert_close(torch.nan_to_num(g), torch.nan_to_num(w), tol, what)


@pytest.mark.parametrize(("direction", "agg", "norm"), ALL_OPTIONS)
def test_every_option_matches_the_reference(direction, agg, norm):
    images, captions, lengths = make_inputs(5, 7, 6, 9, 13, seed=3)
    kwargs = options(direction, agg, norm, lambda_softmax=4.0, lambda_lse=5.0)
    weights = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = scores_and_grads(ops.xattn_scores, images, captions, lengths, weights, **kwargs)
    want = scores_and_grads(reference, images, captions, lengths, weights, **kwargs)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, torch.nan_to_num(w), rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_many_tiles_and_a_caption_longer_than_a_group(direction):
    # 30 images of 36 regions make 3 image groups (14 per group); 40 captions of up to 16 words
    # make several caption groups of <= 256 words, and a 300-word caption forms a group alone.
    g = torch.Generator().manual_seed(4)
    lengths = torch.cat([torch.randint(8, 17, (39,), generator=g), torch.tensor([300])])
    images, captions, lengths = make_inputs(30, 36, 40, 300, 8, seed=4, lengths=lengths)
    weights = torch.randn(30, 40, dtype=torch.float64)
    kwargs = options(direction)
    got = scores_and_grads(ops.xattn_scores, images, captions, lengths, weights, **kwargs)
    want = scores_and_grads(reference, images, captions, lengths, weights, **kwargs)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, torch.nan_to_num(w), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(("direction", "agg", "norm"), ALL_OPTIONS)
def test_gradcheck(direction, agg, norm):
    images, captions, lengths = make_inputs(3, 4, 3, 4, 5, seed=5, normalize=False)
    captions = torch.nan_to_num(captions)  # finite differences perturb the padding too
    kwargs = options(direction, agg, norm, lambda_softmax=2.0, lambda_lse=3.0)

    def fn(x, y):
        return ops.xattn_scores(x, y, lengths, **kwargs)

    assert torch.autograd.gradcheck(fn, (images.requires_grad_(), captions.requires_grad_()))


def test_one_input_requiring_grad():
    images, captions, lengths = make_inputs(4, 5, 3, 6, 7, seed=6)
    weights = torch.randn(4, 3, dtype=torch.float64)
    _, want_x, want_y = scores_and_grads(ops.xattn_scores, images, captions, lengths, weights)
    x = images.clone().requires_grad_()
    (got_x,) = torch.autograd.grad((ops.xattn_scores(x, captions, lengths) * weights).sum(), x)
    y = captions.clone().requires_grad_()
    (got_y,) = torch.autograd.grad((ops.xattn_scores(images, y, lengths) * weights).sum(), y)
    assert torch.equal(got_x, want_x)
    assert torch.equal(got_y, want_y)


# ---- padding, layout, threads -------------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("fill", [float("nan"), float("inf"), 1e30, 0.0])
def test_padding_changes_nothing(direction, fill):
    images, captions, lengths = make_inputs(6, 5, 7, 8, 9, seed=7)
    weights = torch.randn(6, 7, dtype=torch.float64)
    clean = captions.nan_to_num(0.0)
    filled = captions.nan_to_num(fill)
    kwargs = options(direction)
    want = scores_and_grads(ops.xattn_scores, images, clean, lengths, weights, **kwargs)
    got = scores_and_grads(ops.xattn_scores, images, filled, lengths, weights, **kwargs)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
    padding = torch.arange(8).view(1, 8) >= lengths.view(7, 1)
    assert torch.equal(got[2][padding], torch.zeros_like(got[2][padding]))


def test_layouts_do_not_change_the_result():
    images, captions, lengths = make_inputs(5, 6, 4, 7, 10, seed=8)
    want = ops.xattn_scores(images, captions, lengths)
    strided_images = images.transpose(1, 2).contiguous().transpose(1, 2)
    strided_captions = torch.cat([captions, captions], dim=2)[:, :, :10]
    got = ops.xattn_scores(strided_images, strided_captions, lengths)
    assert torch.equal(got, want)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_results_do_not_depend_on_the_thread_count(direction):
    lengths = torch.randint(8, 17, (60,), generator=torch.Generator().manual_seed(9))
    images, captions, lengths = make_inputs(40, 36, 60, 16, 24, seed=9, dtype=torch.float32,
                                            lengths=lengths)  # fmt: skip
    weights = torch.randn(40, 60)
    kwargs = options(direction)
    _assert_same_at_1_2_3_threads(
        lambda: scores_and_grads(ops.xattn_scores, images, captions, lengths, weights, **kwargs)
    )


def _assert_same_at_1_2_3_threads(compute):
    """``compute()`` (a tuple of tensors) gives the same bits with 1, 2 and 3 torch threads."""
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(compute())
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            assert torch.equal(got, want)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_scores_and_ranks_equal_whichever_group_the_threads_sweep(direction):
    """About 10 caption groups of 512 words: 1 and 2 threads sweep by caption group, 3 threads
    by image group (too few caption groups to share out); every score and rank is the same."""
    gen = torch.Generator().manual_seed(4)
    lengths = torch.randint(8, 17, (400,), generator=gen)
    images, captions, lengths = make_inputs(20, 9, 400, 16, 8, seed=4, dtype=torch.float32,
                                            lengths=lengths)  # fmt: skip
    owner = torch.arange(400) // 20
    kwargs = options(direction)
    _assert_same_at_1_2_3_threads(
        lambda: (
            ops.xattn_scores(images, captions, lengths, **kwargs),
            *ops.xattn_ranks(images, captions, lengths, owner, **kwargs),
        )
    )


# ---- precomputed region Grams --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_precomputed_region_grams_give_the_same_scores(dtype):
    """xattn_region_grams is each image's Gram (the same bits whatever other images share the
    call), and t2i scores given them are the scores that compute them, bit for bit."""
    images, captions, lengths = make_inputs(21, 5, 9, 6, 12, seed=11, dtype=dtype)
    grams = ops.xattn_region_grams(images)
    assert grams.shape == (21, 5, 5) and grams.dtype == dtype
    want_grams = torch.bmm(images.double(), images.double().transpose(1, 2))
    torch.testing.assert_close(grams.double(), want_grams, **tolerance(dtype).kwargs())
    assert torch.equal(ops.xattn_region_grams(images[3:17]), grams[3:17])
    for direction, agg, norm in ALL_OPTIONS:
        if direction == "i2t":
            continue
        kwargs = options(direction, agg, norm)
        want = ops.xattn_scores(images, captions, lengths, **kwargs)
        assert torch.equal(ops.xattn_scores(images, captions, lengths, **kwargs,
                                            region_grams=grams), want)  # fmt: skip
    # Not differentiated, and the scores' gradient does not go through them.
    x = images.clone().requires_grad_()
    assert not ops.xattn_region_grams(x).requires_grad
    weights = torch.randn(21, 9, dtype=dtype)
    got = scores_and_grads(
        lambda *a, **k: ops.xattn_scores(*a, **k, region_grams=grams),
        images,
        captions,
        lengths,
        weights,
    )
    for g, w in zip(got, scores_and_grads(ops.xattn_scores, images, captions, lengths, weights),
                    strict=True):  # fmt: skip
        assert torch.equal(g, w)


def test_region_grams_that_do_not_fit_are_refused():
    images, captions, lengths = make_inputs(4, 3, 5, 6, 7, seed=2, dtype=torch.float32)
    grams = ops.xattn_region_grams(images)
    with pytest.raises(ValueError, match=r"'region_grams' is for direction='t2i'"):
        ops.xattn_scores(images, captions, lengths, direction="i2t", region_grams=grams)
    with pytest.raises(ValueError, match=r"'region_grams' must have shape \(4, 3, 3\)"):
        ops.xattn_scores(images, captions, lengths, region_grams=grams[:3])
    with pytest.raises(TypeError, match=r"'region_grams' must have the score dtype Float"):
        ops.xattn_scores(images, captions, lengths, region_grams=grams.double())
    with pytest.raises(ValueError, match=r"'images' must be .*3"):
        ops.xattn_region_grams(images[0])


# ---- opcheck, torch.compile ---------------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_opcheck(direction):
    images, captions, lengths = make_inputs(4, 3, 5, 6, 7, seed=10)
    captions = captions.nan_to_num(0.0)  # opcheck compares gradients of the padding too
    opts = (direction, 9.0, "lse", 6.0, "clipped_l2norm")
    x, y = images.requires_grad_(), captions.requires_grad_()
    torch.library.opcheck(torch.ops.jwae_ext.xattn_scores.default, (x, y, lengths, *opts))
    grad = torch.randn(4, 5, dtype=torch.float64)
    for mask in ([True, True], [True, False], [False, True]):
        torch.library.opcheck(
            torch.ops.jwae_ext.xattn_scores_backward.default,
            (grad, x.detach(), y.detach(), lengths, *opts, mask),
        )
    owners = torch.tensor([0, 1, 2, 3, 3])
    torch.library.opcheck(
        torch.ops.jwae_ext.xattn_ranks.default, (x.detach(), y.detach(), lengths, owners, *opts)
    )
    torch.library.opcheck(
        torch.ops.jwae_ext.xattn_ranks.default,
        (x.detach(), y.detach(), lengths, owners, *opts, 1, 2),
    )
    torch.library.opcheck(torch.ops.jwae_ext.xattn_region_grams.default, (x.detach(),))
    if direction == "t2i":
        grams = ops.xattn_region_grams(x.detach())
        torch.library.opcheck(
            torch.ops.jwae_ext.xattn_scores.default, (x, y, lengths, *opts, grams)
        )


def test_torch_compile_fullgraph():
    images, captions, lengths = make_inputs(6, 5, 7, 8, 9, seed=11, dtype=torch.float32)
    captions = captions.nan_to_num(0.0)
    weights = torch.randn(6, 7)

    def loss_fn(x, y, lens):
        scores = ops.xattn_scores(x, y, lens, direction="i2t", agg="mean", lambda_softmax=4.0)
        return (scores * weights).sum()

    compiled = torch.compile(loss_fn, fullgraph=True)
    results = []
    for fn in (compiled, loss_fn):
        x, y = images.clone().requires_grad_(), captions.clone().requires_grad_()
        loss = fn(x, y, lengths)
        results.append((loss, *torch.autograd.grad(loss, (x, y))))
    for g, w in zip(*results, strict=True):
        torch.testing.assert_close(g, w)


# ---- bad input ----------------------------------------------------------------------------------


def _valid():
    return make_inputs(3, 4, 5, 6, 7, seed=12, dtype=torch.float32)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda i, c, n: (i, c, n.clone().fill_(0)), ValueError, r"lengths in \[1, 6\]"),
        (lambda i, c, n: (i, c, n + 6), ValueError, r"lengths in \[1, 6\].*to 1[0-2]"),
        (lambda i, c, n: (i, c, -n), ValueError, "'cap_lens' must hold lengths"),
        (lambda i, c, n: (i, c, n[:4]), ValueError, "'cap_lens' must have 5 entries"),
        (lambda i, c, n: (i, c, n.int()), TypeError, "'cap_lens' must be int64"),
        (lambda i, c, n: (i, c, n.view(5, 1)), ValueError, "'cap_lens' must be a 1-D"),
        (lambda i, c, n: (i, c[..., :6], n), ValueError, "same feature size d"),
        (lambda i, c, n: (i[0], c, n), ValueError, "'images' must be a 3-D tensor"),
        (lambda i, c, n: (i, c[0], n), ValueError, "'captions' must be a 3-D tensor"),
        (lambda i, c, n: (i, c.double(), n), TypeError, "same dtype"),
        (lambda i, c, n: (i.half(), c.half(), n), TypeError, "float16/bfloat16 are CUDA-only"),
        (lambda i, c, n: (i.int(), c.int(), n), TypeError, "float32 or float64"),
        (lambda i, c, n: (i[:0], c, n), ValueError, "'images' must not be empty"),
        (lambda i, c, n: (i, c[:0], n[:0]), ValueError, "'captions' must not be empty"),
        (lambda i, c, n: (i, c, n.to("meta")), ValueError, "same device"),
        (lambda i, c, n: (i.numpy(), c, n), TypeError, "'images' must be a torch.Tensor"),
        (lambda i, c, n: (i, c, n.tolist()), TypeError, "'cap_lens' must be a torch.Tensor"),
    ],
)
def test_bad_input(change, error, message):
    with pytest.raises(error, match=message):
        ops.xattn_scores(*change(*_valid()))


@pytest.mark.parametrize(
    ("option", "value", "error", "message"),
    [
        ("direction", "both", ValueError, "'direction' must be one of"),
        ("agg", "LogSumExp", ValueError, "'agg' must be one of"),
        ("raw_feature_norm", "l1norm", ValueError, "'raw_feature_norm' must be one of"),
        ("lambda_softmax", float("nan"), ValueError, "'lambda_softmax' must be finite"),
        ("lambda_softmax", float("inf"), ValueError, "'lambda_softmax' must be finite"),
        ("lambda_lse", float("-inf"), ValueError, "'lambda_lse' must be finite"),
        ("lambda_lse", 0.0, ValueError, "'lambda_lse' must not be 0"),
        ("lambda_softmax", "9", TypeError, "'lambda_softmax' must be a number"),
    ],
)
def test_bad_option(option, value, error, message):
    with pytest.raises(error, match=message):
        ops.xattn_scores(*_valid(), **{option: value})


@pytest.mark.parametrize(
    ("index", "value", "message"),
    [
        (3, "both", "'direction' must be 't2i' or 'i2t'"),
        (5, "LogSumExp", "'agg' must be one of"),
        (7, "l1norm", "'raw_feature_norm' must be one of"),
        (4, float("nan"), "'lambda_softmax' must be finite"),
        (6, float("inf"), "'lambda_lse' must be finite"),
    ],
)
def test_bad_option_in_a_direct_operator_call(index, value, message):
    args = [*_valid(), "t2i", 9.0, "lse", 6.0, "clipped_l2norm"]
    args[index] = value
    with pytest.raises(ValueError, match=message):
        torch.ops.jwae_ext.xattn_scores(*args)


# ---- CUDA against CPU ---------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("direction", "agg", "norm"), ALL_OPTIONS)
def test_cuda_matches_cpu(direction, agg, norm, dtype):
    # 300 images of 36 regions span two image tiles of the CUDA kernel.
    images, captions, lengths = make_inputs(300, 36, 50, 16, 64, seed=13)
    kwargs = options(direction, agg, norm)
    weights = torch.randn(300, 50, dtype=torch.float64)
    want = scores_and_grads(ops.xattn_scores, images, captions, lengths, weights, **kwargs)
    cuda = [t.to("cuda", dtype) for t in (images, captions)]
    got = scores_and_grads(ops.xattn_scores, *cuda, lengths.cuda(), weights.cuda(), **kwargs)
    assert got[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert got[1].dtype == got[2].dtype == dtype
    tolerances = {torch.float64: 1e-9, torch.float32: 1e-4}.get(dtype, 3e-2)
    for g, w in zip(got, want, strict=True):
        assert_close(g.cpu(), torch.nan_to_num(w), tolerances, "cuda vs cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_cuda_ranks_equal_cpu(direction):
    g = torch.Generator().manual_seed(14)
    images, captions, lengths = make_inputs(600, 36, 3000, 16, 32, seed=14)
    cap_to_img = torch.randperm(3000, generator=g) % 600
    want = ops.xattn_ranks(images, captions, lengths, cap_to_img, direction=direction)
    got = ops.xattn_ranks(images.cuda(), captions.cuda(), lengths.cuda(), cap_to_img.cuda(),
                          direction=direction)  # fmt: skip
    for r, w in zip(got, want, strict=True):
        assert torch.equal(r.cpu(), w)


@pytest.mark.cuda
def test_cuda_opcheck_and_mixed_devices():
    images, captions, lengths = make_inputs(4, 3, 5, 6, 7, seed=15)
    captions = captions.nan_to_num(0.0)
    opts = ("t2i", 9.0, "lse", 6.0, "clipped_l2norm")
    x, y, n = images.cuda().requires_grad_(), captions.cuda().requires_grad_(), lengths.cuda()
    torch.library.opcheck(torch.ops.jwae_ext.xattn_scores.default, (x, y, n, *opts))
    with pytest.raises(ValueError, match="same device"):
        ops.xattn_scores(x, captions, lengths)
