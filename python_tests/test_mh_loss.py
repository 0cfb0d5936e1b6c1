"""Max-of-hinges loss (jwae_ext.ops.mh_loss, mh_loss_from_scores) against the VSE++ reference.

Exactness strategy: float64 comparisons with random inputs (ties and hinge edges have probability
~0 there, and the few draws that hit an edge are rejected), and small-integer embeddings whose
scores are exact in every dtype, so that ties are exact and must resolve to the lowest index on
every backend and tile layout.
"""

from __future__ import annotations

import contextlib
import importlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

from jwae_ext import ops, reference

OPS = torch.ops.jwae_ext
FLAGS = {
    "max_violation": st.booleans(),
    "reduction": st.sampled_from(["sum", "mean"]),
    "direction": st.sampled_from(["both", "i2t", "t2i"]),
}
# Sizes that cross the CPU tile grid (256 x 1024): several row blocks and two column blocks.
MULTI_TILE = 1100


def _pair(batch, dim, *, seed=0, dtype=torch.float64, device="cpu", integers=None):
    """Paired embeddings: normal, or small integers (exact scores, many exact ties)."""
    gen = torch.Generator().manual_seed(seed)
    if integers is None:
        img, txt = torch.randn(2, batch, dim, generator=gen, dtype=torch.float64)
    else:
        img, txt = torch.randint(-integers, integers + 1, (2, batch, dim), generator=gen)
    return img.to(device, dtype), txt.to(device, dtype)


def _ids(batch, distinct, *, seed=0, consistent=True, device="cpu"):
    """COCO-style ids with duplicates: `consistent` pairs share an id, else ids are arbitrary."""
    gen = torch.Generator().manual_seed(seed)
    img_ids = torch.randint(0, distinct, (batch,), generator=gen)
    txt_ids = img_ids.clone() if consistent else torch.randint(0, distinct, (batch,), generator=gen)
    return img_ids.to(device), txt_ids.to(device)


def _loss_and_grads(fn, inputs, **kwargs):
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    loss = fn(*inputs, **kwargs)
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads, strict=True)]
    return loss.detach(), grads


def _off_hinge_edges(scores, margin, img_ids, txt_ids, tol=1e-9):
    """No negative's hinge sits at 0, where the kernels and the reference pick different
    subgradients (the reference's clamp passes gradient at exactly 0)."""
    diag = scores.diag()
    negative = ~torch.eye(len(scores), dtype=torch.bool, device=scores.device)
    if img_ids is not None:
        negative &= img_ids.view(-1, 1) != txt_ids.view(1, -1)
    edges = torch.cat([(margin + scores - diag.view(-1, 1))[negative],
                       (margin + scores - diag.view(1, -1))[negative]])  # fmt: skip
    return bool((edges.abs() > tol).all())


def _assert_matches_reference(img, txt, *, rtol=1e-10, atol=1e-10, **kwargs):
    loss, grads = _loss_and_grads(ops.mh_loss, (img, txt), **kwargs)
    ref_loss, ref_grads = _loss_and_grads(reference.mh_loss, (img, txt), **kwargs)
    torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=atol)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=rtol, atol=atol)


@st.composite
def problems(draw):
    batch = draw(st.integers(1, 300))
    dim = draw(st.integers(1, 257))
    seed = draw(st.integers(0, 2**16))
    img, txt = _pair(batch, dim, seed=seed)
    with_ids = draw(st.booleans())
    ids = (None, None)
    if with_ids:
        distinct = draw(st.integers(1, batch))
        ids = _ids(batch, distinct, seed=seed, consistent=draw(st.booleans()))
    margin = draw(st.sampled_from([0.0, 0.2, 1.0, -0.3]) | st.floats(-2, 2, width=32))
    flags = {name: draw(strategy) for name, strategy in FLAGS.items()}
    return img, txt, {"margin": margin, "img_ids": ids[0], "txt_ids": ids[1], **flags}


# ---- agreement with the reference ---------------------------------------------------------------


@given(problems(), st.booleans())
def test_mh_loss_matches_reference(problem, normalize):
    img, txt, kwargs = problem
    scores = reference_scores(img, txt, normalize)
    assume(_off_hinge_edges(scores, kwargs["margin"], kwargs["img_ids"], kwargs["txt_ids"]))
    _assert_matches_reference(img, txt, normalize=normalize, **kwargs)


@given(problems())
def test_mh_loss_from_scores_matches_reference(problem):
    img, txt, kwargs = problem
    scores = img @ txt.t()
    assume(_off_hinge_edges(scores, kwargs["margin"], kwargs["img_ids"], kwargs["txt_ids"]))
    loss, (grad,) = _loss_and_grads(ops.mh_loss_from_scores, (scores,), **kwargs)
    ref_loss, (ref_grad,) = _loss_and_grads(reference.mh_loss_from_scores, (scores,), **kwargs)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)


@given(problems(), st.booleans())
def test_per_query_costs_match_reference(problem, normalize):
    # reduction="none" returns the costs (2, B) or (B,); a random weight per query stands for any
    # downstream use of them (a rank summing only its own queries), so the gradient is checked
    # for arbitrary per-query weights, not only for the all-ones of reduction="sum".
    img, txt, kwargs = problem
    kwargs["reduction"] = "none"
    scores = reference_scores(img, txt, normalize)
    assume(_off_hinge_edges(scores, kwargs["margin"], kwargs["img_ids"], kwargs["txt_ids"]))
    costs = ops.mh_loss(img, txt, normalize=normalize, **kwargs)
    ref_costs = reference.mh_loss(img, txt, normalize=normalize, **kwargs)
    want_shape = (2, len(img)) if kwargs["direction"] == "both" else (len(img),)
    assert costs.shape == ref_costs.shape == want_shape
    torch.testing.assert_close(costs, ref_costs, rtol=1e-10, atol=1e-10)
    summed = dict(kwargs, reduction="sum")
    torch.testing.assert_close(costs.sum(), ops.mh_loss(img, txt, normalize=normalize, **summed))
    weights = torch.rand(want_shape, dtype=img.dtype, generator=torch.Generator().manual_seed(1))

    def weighted(fn):
        return lambda a, b, **kw: (fn(a, b, **kw) * weights).sum()

    _, grads = _loss_and_grads(weighted(ops.mh_loss), (img, txt), normalize=normalize, **kwargs)
    _, ref_grads = _loss_and_grads(
        weighted(reference.mh_loss), (img, txt), normalize=normalize, **kwargs
    )
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


@given(problems())
def test_per_query_costs_from_scores_match_reference(problem):
    img, txt, kwargs = problem
    kwargs["reduction"] = "none"
    scores = img @ txt.t()
    assume(_off_hinge_edges(scores, kwargs["margin"], kwargs["img_ids"], kwargs["txt_ids"]))
    costs = ops.mh_loss_from_scores(scores, **kwargs)
    weights = torch.rand(costs.shape, dtype=costs.dtype, generator=torch.Generator().manual_seed(2))
    ref_costs = reference.mh_loss_from_scores(scores, **kwargs)
    torch.testing.assert_close(costs, ref_costs, rtol=1e-10, atol=1e-10)
    _, (grad,) = _loss_and_grads(
        lambda s: (ops.mh_loss_from_scores(s, **kwargs) * weights).sum(), (scores,)
    )
    _, (ref_grad,) = _loss_and_grads(
        lambda s: (reference.mh_loss_from_scores(s, **kwargs) * weights).sum(), (scores,)
    )
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)


def reference_scores(img, txt, normalize):
    if normalize:
        img, txt = F.normalize(img, dim=1), F.normalize(txt, dim=1)
    return img @ txt.t()


@pytest.mark.parametrize("max_violation", [True, False])
@pytest.mark.parametrize("batch", [MULTI_TILE, 1500])
def test_multi_tile_matches_reference(batch, max_violation):
    img, txt = _pair(batch, 24, seed=batch)
    img_ids, txt_ids = _ids(batch, batch // 3, seed=1)
    _assert_matches_reference(img, txt, max_violation=max_violation, img_ids=img_ids,
                              txt_ids=txt_ids, rtol=1e-9, atol=1e-9)  # fmt: skip


@pytest.mark.parametrize("max_violation", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float32_matches_reference(device, seed, max_violation):
    img, txt = _pair(257, 64, seed=seed, dtype=torch.float32, device=device)
    _assert_matches_reference(img, txt, max_violation=max_violation, normalize=True, margin=0.2,
                              rtol=1e-4, atol=1e-4)  # fmt: skip


@pytest.mark.parametrize("max_violation", [True, False])
@pytest.mark.parametrize("batch", [37, MULTI_TILE])
def test_exact_ties_go_to_the_lowest_index(batch, max_violation):
    # Scores are small integers, margin 0.5 keeps every hinge off 0: the kernel and the reference
    # see identical values with many exact ties, also across tile boundaries.
    img, txt = _pair(batch, 2, seed=3, integers=1)
    img_ids, txt_ids = _ids(batch, batch // 2, seed=4)
    kwargs = {"margin": 0.5, "max_violation": max_violation, "img_ids": img_ids, "txt_ids": txt_ids}
    _assert_matches_reference(img, txt, rtol=0, atol=1e-12, **kwargs)
    if max_violation:
        _, _, hard_i2t, hard_t2i = OPS.mh_loss(img, txt, 0.5, True, img_ids, txt_ids)
        want_i2t, want_t2i = _brute_force_hardest(img @ txt.t(), 0.5, img_ids, txt_ids)
        assert torch.equal(hard_i2t, want_i2t)
        assert torch.equal(hard_t2i, want_t2i)


def _brute_force_hardest(scores, margin, img_ids, txt_ids):
    negative = ~torch.eye(len(scores), dtype=torch.bool) & (img_ids.view(-1, 1) != txt_ids)
    masked = scores.masked_fill(~negative, float("-inf"))
    diag = scores.diag()

    def pick(dim):
        best, arg = masked.max(dim)  # documented: the first maximal index
        active = negative.any(dim) & (margin + best - diag > 0)
        return torch.where(active, arg, -1)

    return pick(1), pick(0)


# ---- edge cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize("max_violation", [True, False])
def test_no_negatives_cost_nothing(device, max_violation):
    single = _pair(1, 5, device=device)
    batch = _pair(6, 5, device=device)
    same = torch.zeros(6, dtype=torch.long, device=device)  # every pair shares an image
    for (img, txt), kwargs in [(single, {}), (batch, {"img_ids": same, "txt_ids": same})]:
        loss, grads = _loss_and_grads(
            ops.mh_loss, (img, txt), max_violation=max_violation, **kwargs
        )
        assert loss.item() == 0
        assert all(bool((g == 0).all()) for g in grads)


@pytest.mark.parametrize("max_violation", [True, False])
@pytest.mark.parametrize("direction", ["both", "i2t", "t2i"])
def test_nan_inputs_give_a_nan_loss(device, max_violation, direction):
    img, txt = _pair(9, 4, device=device)
    img[3, 1] = float("nan")
    kwargs = {"max_violation": max_violation, "direction": direction}
    assert torch.isnan(ops.mh_loss(img, txt, **kwargs))
    assert torch.isnan(ops.mh_loss_from_scores(img @ txt.t(), **kwargs))


@pytest.mark.parametrize("max_violation", [True, False])
@pytest.mark.parametrize("direction", ["both", "i2t", "t2i"])
def test_infinite_inputs_are_not_hidden(device, max_violation, direction):
    # The result is non-finite exactly where the reference's is (it may be inf where the
    # reference's is NaN: the kernel forms max(S) - S_ii, the reference max(S - S_ii)).
    img, txt = _pair(9, 4, device=device)
    img[3, 1] = float("inf")
    kwargs = {"max_violation": max_violation, "direction": direction}
    got = ops.mh_loss(img, txt, **kwargs)
    assert torch.isfinite(got) == torch.isfinite(reference.mh_loss(img, txt, **kwargs))
    if direction == "both":
        assert not torch.isfinite(got)


def test_layouts_do_not_change_the_result(device):
    img, txt = _pair(40, 12, seed=5, device=device)
    want, want_grads = _loss_and_grads(ops.mh_loss, (img, txt))
    layouts = {
        "transposed": (img.t().contiguous().t(), txt.t().contiguous().t()),
        "strided": (torch.stack([img, img], -1)[..., 0], torch.stack([txt, txt], -1)[..., 0]),
    }
    for name, (a, b) in layouts.items():
        assert not a.is_contiguous(), name
        got, grads = _loss_and_grads(ops.mh_loss, (a, b))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=name)
        for g, w in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12, msg=name)
    # Expanded (stride 0) columns.
    column = torch.randn(40, 1, dtype=img.dtype, generator=torch.Generator().manual_seed(5))
    _assert_matches_reference(column.to(device).expand(40, 12), txt, margin=0.3)
    scores = img @ txt.t()
    got = ops.mh_loss_from_scores(scores.t().contiguous().t())
    torch.testing.assert_close(got, reference.mh_loss_from_scores(scores))


def _assert_same_on_1_2_3_threads(img, txt, max_violation: bool) -> None:
    """Loss and gradients of the CPU kernel are bit-identical with 1, 2 and 3 threads."""
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            loss, grads = _loss_and_grads(ops.mh_loss, (img, txt), max_violation=max_violation)
            runs.append([loss, *grads])
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], run, strict=True))


@pytest.mark.parametrize("max_violation", [True, False])
def test_cpu_results_do_not_depend_on_the_thread_count(max_violation):
    img, txt = _pair(MULTI_TILE, 16, seed=6, dtype=torch.float32)
    _assert_same_on_1_2_3_threads(img, txt, max_violation)


# ---- sum of hinges: the full-score-matrix and the tiled CPU paths --------------------------------

MH_LOSS_MODULE = importlib.import_module("jwae_ext.ops.mh_loss")
HINGE_PATHS = ["full_matrix", "tiled"]


@contextlib.contextmanager
def hinge_path(path):
    """Force the sum of hinges' CPU path for every batch (the size rule picks one otherwise)."""
    saved = MH_LOSS_MODULE.FULL_MATRIX_MAX_BATCH
    MH_LOSS_MODULE.FULL_MATRIX_MAX_BATCH = 2**62 if path == "full_matrix" else 0
    try:
        yield
    finally:
        MH_LOSS_MODULE.FULL_MATRIX_MAX_BATCH = saved


def test_sum_of_hinges_size_rule():
    limit = MH_LOSS_MODULE.FULL_MATRIX_MAX_BATCH
    uses = MH_LOSS_MODULE.sum_of_hinges_uses_full_matrix
    small, large = _pair(limit, 2, dtype=torch.float32), _pair(limit + 1, 2, dtype=torch.float32)
    assert uses(*small) and not uses(*large)
    img, txt = small
    # Only well-formed CPU pairs: the tiled operator's checks name the faulty argument otherwise.
    assert not uses(img, txt[:-1]) and not uses(img, txt.double()) and not uses(img[0], txt[0])
    assert not uses(img.half(), txt.half()) and not uses(img[:0], txt[:0])
    if torch.cuda.is_available():
        assert not uses(img.cuda(), txt.cuda())


def _operators_run(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("jwae_ext::")}


def test_sum_of_hinges_takes_the_chosen_path():
    # Full matrix: torch.mm, then the from-scores operator; tiled: the fused operator alone.
    img, txt = _pair(20, 4)
    for path, want in [
        ("full_matrix", "jwae_ext::mh_loss_from_scores"),
        ("tiled", "jwae_ext::mh_loss"),
    ]:
        with hinge_path(path):
            assert _operators_run(lambda: ops.mh_loss(img, txt, max_violation=False)) == {want}
            # The hardest negative always runs tiled.
            hardest = _operators_run(lambda: ops.mh_loss(img, txt, max_violation=True))
            assert hardest == {"jwae_ext::mh_loss"}


@pytest.mark.parametrize("path", HINGE_PATHS)
@given(problems(), st.booleans())
def test_sum_of_hinges_paths_match_reference(path, problem, normalize):
    img, txt, kwargs = problem
    kwargs["max_violation"] = False
    scores = reference_scores(img, txt, normalize)
    assume(_off_hinge_edges(scores, kwargs["margin"], kwargs["img_ids"], kwargs["txt_ids"]))
    with hinge_path(path):
        _assert_matches_reference(img, txt, normalize=normalize, **kwargs)
        kwargs["reduction"] = "none"
        costs = ops.mh_loss(img, txt, normalize=normalize, **kwargs)
    torch.testing.assert_close(
        costs, reference.mh_loss(img, txt, normalize=normalize, **kwargs), rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("path", HINGE_PATHS)
def test_sum_of_hinges_paths_multi_tile_float32_threads_gradcheck(path):
    img, txt = _pair(MULTI_TILE, 24, seed=5)
    img_ids, txt_ids = _ids(MULTI_TILE, MULTI_TILE // 3, seed=1)
    img32, txt32 = _pair(MULTI_TILE, 16, seed=6, dtype=torch.float32)
    small = _kink_free_pair(7, 5, 0.2)
    with hinge_path(path):
        _assert_matches_reference(img, txt, max_violation=False, img_ids=img_ids,
                                  txt_ids=txt_ids, rtol=1e-9, atol=1e-9)  # fmt: skip
        _assert_matches_reference(img32, txt32, max_violation=False, normalize=True,
                                  rtol=1e-4, atol=1e-4)  # fmt: skip
        _assert_same_on_1_2_3_threads(img32, txt32, max_violation=False)
        inputs = tuple(x.clone().requires_grad_() for x in small)
        fn = lambda a, b: ops.mh_loss(a, b, margin=0.2, max_violation=False)  # noqa: E731
        assert torch.autograd.gradcheck(fn, inputs)


# ---- gradcheck, opcheck, torch.compile ----------------------------------------------------------


def _clear_of_kinks(img, txt, margin, gap=1e-3):
    """Every hinge and every top-2 gap at least `gap` away from 0: finite differences stay on one
    linear piece."""
    scores = img @ txt.t()
    negative = ~torch.eye(len(scores), dtype=torch.bool)
    values = scores.masked_fill(~negative, float("-inf"))
    top_rows = values.topk(2, dim=1).values
    top_cols = values.topk(2, dim=0).values
    hinges = torch.cat([(margin + scores - scores.diag().view(-1, 1))[negative],
                        (margin + scores - scores.diag().view(1, -1))[negative]])  # fmt: skip
    gaps = torch.cat([top_rows[:, 0] - top_rows[:, 1], top_cols[0] - top_cols[1], hinges.abs()])
    return bool((gaps > gap).all())


def _kink_free_pair(batch, dim, margin):
    seed = 0
    while not _clear_of_kinks(*_pair(batch, dim, seed=seed), margin):
        seed += 1
    return _pair(batch, dim, seed=seed)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("max_violation", [True, False])
def test_gradcheck(max_violation, normalize):
    img, txt = _kink_free_pair(7, 5, 0.2)
    img_ids = torch.tensor([0, 1, 1, 2, 3, 4, 5])
    for ids in [{}, {"img_ids": img_ids, "txt_ids": img_ids}]:

        def fn(a, b, ids=ids):
            return ops.mh_loss(
                a, b, margin=0.2, max_violation=max_violation, normalize=normalize, **ids
            )

        inputs = (img.clone().requires_grad_(), txt.clone().requires_grad_())
        assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("max_violation", [True, False])
def test_gradcheck_from_scores(max_violation):
    img, txt = _kink_free_pair(7, 5, 0.2)
    fn = lambda s: ops.mh_loss_from_scores(s, margin=0.2, max_violation=max_violation)  # noqa: E731
    assert torch.autograd.gradcheck(fn, ((img @ txt.t()).requires_grad_(),))


def _opcheck_cases(device):
    img, txt = _pair(12, 6, seed=7, device=device)
    scores = img @ txt.t()
    grads = (torch.ones(12, dtype=img.dtype, device=device),
             torch.full((12,), 0.5, dtype=img.dtype, device=device))  # fmt: skip
    leaf = lambda x: x.clone().requires_grad_()  # noqa: E731
    for max_violation in (True, False):
        for ids in ((None, None), _ids(12, 5, seed=8, device=device)):
            options = (0.2, max_violation, *ids)
            supports = OPS.mh_loss(img, txt, *options)[2:]
            yield OPS.mh_loss.default, (leaf(img), leaf(txt), *options)
            yield OPS.mh_loss_backward.default, (*grads, img, txt, *options, *supports)
            supports = OPS.mh_loss_from_scores(scores, *options)[2:]
            yield OPS.mh_loss_from_scores.default, (leaf(scores), *options)
            yield OPS.mh_loss_from_scores_backward.default, (*grads, scores, *options, *supports)


def test_opcheck(device):
    for op, args in _opcheck_cases(device):
        torch.library.opcheck(op, args)


def test_max_violation_backward_runs_no_gemm():
    img, txt = _pair(300, 32, seed=13)
    img.requires_grad_()
    loss = ops.mh_loss(img, txt)
    with torch.profiler.profile() as prof:
        loss.backward()
    names = {event.key for event in prof.key_averages()}
    assert "jwae_ext::mh_loss_backward" in names
    assert not names & {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"}


def test_torch_compile_fullgraph():
    img, txt = _pair(40, 8, seed=9)
    ids = torch.arange(40) // 2

    def loss_fn(a, b):
        return ops.mh_loss(a, b, img_ids=ids, txt_ids=ids, normalize=True, reduction="mean")

    compiled = torch.compile(loss_fn, fullgraph=True)
    got, got_grads = _loss_and_grads(compiled, (img, txt))
    want, want_grads = _loss_and_grads(loss_fn, (img, txt))
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w)


# ---- CUDA against CPU ---------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("max_violation", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu_on_exact_scores(dtype, max_violation):
    # Integer embeddings: exact scores in every dtype (products and fp32 sums of small integers),
    # so the supports (hardest indices, with lowest-index ties) must agree exactly. 5000 rows make
    # several CUDA row tiles.
    img, txt = _pair(5000, 24, seed=10, integers=2)
    img_ids, txt_ids = _ids(5000, 2000, seed=11)
    args = (0.5, max_violation, img_ids, txt_ids)
    want = OPS.mh_loss(img, txt, *args)
    got = OPS.mh_loss(img.to("cuda", dtype), txt.to("cuda", dtype), *args[:2],
                      img_ids.cuda(), txt_ids.cuda())  # fmt: skip
    exact = dtype in (torch.float32, torch.float64)
    for g, w in zip(got[2:], want[2:], strict=True):
        assert torch.equal(g.cpu(), w)
    for g, w in zip(got[:2], want[:2], strict=True):
        torch.testing.assert_close(g.cpu().double(), w, rtol=0 if exact else 1e-2, atol=0)
    _assert_cuda_grads_match(img, txt, dtype, max_violation, img_ids, txt_ids, exact)


def _assert_cuda_grads_match(img, txt, dtype, max_violation, img_ids, txt_ids, exact):
    kwargs = {"margin": 0.5, "max_violation": max_violation}
    _, want = _loss_and_grads(ops.mh_loss, (img, txt), img_ids=img_ids, txt_ids=txt_ids, **kwargs)
    _, got = _loss_and_grads(ops.mh_loss, (img.to("cuda", dtype), txt.to("cuda", dtype)),
                             img_ids=img_ids.cuda(), txt_ids=txt_ids.cuda(), **kwargs)  # fmt: skip
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.cpu().double(), w, rtol=0 if exact else 1e-2,
                                   atol=0 if exact else 1e-2 * float(w.abs().max()))  # fmt: skip


@pytest.mark.cuda
@pytest.mark.parametrize("max_violation", [True, False])
def test_cuda_matches_cpu_float64_and_is_deterministic(max_violation):
    img, txt = _pair(3000, 100, seed=12)
    scores = img @ txt.t()
    for fn, inputs in [(ops.mh_loss, (img, txt)), (ops.mh_loss_from_scores, (scores,))]:
        want, want_grads = _loss_and_grads(fn, inputs, max_violation=max_violation)
        cuda_inputs = [x.cuda() for x in inputs]
        first = _loss_and_grads(fn, cuda_inputs, max_violation=max_violation)
        second = _loss_and_grads(fn, cuda_inputs, max_violation=max_violation)
        torch.testing.assert_close(first[0].cpu(), want, rtol=1e-10, atol=1e-10)
        for g, w in zip(first[1], want_grads, strict=True):
            torch.testing.assert_close(g.cpu(), w, rtol=1e-10, atol=1e-10)
        assert torch.equal(first[0], second[0])
        assert all(torch.equal(a, b) for a, b in zip(first[1], second[1], strict=True))


# ---- bad input ----------------------------------------------------------------------------------


def _bad_calls(device):
    img, txt = _pair(4, 3, device=device)
    ids = torch.arange(4, device=device)
    other = "cpu" if device == "cuda" else None
    calls = [
        (ValueError, "'img_emb' must be a 2-D", lambda: ops.mh_loss(img[0], txt)),
        (ValueError, "'txt_emb' must be a 2-D", lambda: ops.mh_loss(img, txt[None])),
        (ValueError, "same embedding size", lambda: ops.mh_loss(img, txt[:, :2])),
        (ValueError, "same batch size", lambda: ops.mh_loss(img, txt[:3])),
        (ValueError, "'img_emb' must not be empty", lambda: ops.mh_loss(img[:0], txt[:0])),
        (
            ValueError,
            "'img_ids' must have 4 entries",
            lambda: ops.mh_loss(img, txt, img_ids=ids[:3], txt_ids=ids),
        ),
        (
            TypeError,
            "'txt_ids' must be int64",
            lambda: ops.mh_loss(img, txt, img_ids=ids, txt_ids=ids.float()),
        ),
        (
            ValueError,
            "'img_ids' must be a 1-D",
            lambda: ops.mh_loss(img, txt, img_ids=ids[None], txt_ids=ids),
        ),
        (ValueError, "must be given together", lambda: ops.mh_loss(img, txt, img_ids=ids)),
        (
            TypeError,
            "'txt_ids' must be a torch.Tensor",
            lambda: ops.mh_loss(img, txt, img_ids=ids, txt_ids=[0, 1, 2, 3]),
        ),
        (ValueError, "'reduction' must be one of", lambda: ops.mh_loss(img, txt, reduction="max")),
        (ValueError, "'direction' must be one of", lambda: ops.mh_loss(img, txt, direction="up")),
        (ValueError, "'margin' must be finite", lambda: ops.mh_loss(img, txt, margin=float("nan"))),
        (ValueError, "'margin' must be finite", lambda: ops.mh_loss(img, txt, margin=float("inf"))),
        (TypeError, "'margin' must be a number", lambda: ops.mh_loss(img, txt, margin="0.2")),
        (
            TypeError,
            "'max_violation' must be a bool",
            lambda: ops.mh_loss(img, txt, max_violation=1),
        ),
        (TypeError, "'normalize' must be a bool", lambda: ops.mh_loss(img, txt, normalize=None)),
        (TypeError, "same dtype", lambda: ops.mh_loss(img, txt.float())),
        (TypeError, "'img_emb' must be float", lambda: ops.mh_loss(img.long(), txt.long())),
        (TypeError, "'img_emb' must be a torch.Tensor", lambda: ops.mh_loss(img.tolist(), txt)),
        (ValueError, "'scores' must be square", lambda: ops.mh_loss_from_scores(img)),
        (ValueError, "'scores' must not be empty", lambda: ops.mh_loss_from_scores(img[:0, :0])),
        (ValueError, "'scores' must be a 2-D", lambda: ops.mh_loss_from_scores(img[0])),
        (
            ValueError,
            "'support_i2t' must hold hardest-negative indices",
            lambda: OPS.mh_loss_backward(
                ids.double(), ids.double(), img, txt, 0.2, True, None, None, ids + 1, ids
            ),
        ),
    ]
    if device == "cpu":
        calls.append(
            (
                TypeError,
                "float16/bfloat16 are CUDA-only",
                lambda: ops.mh_loss(img.half(), txt.half()),
            )
        )
    if other:
        calls += [
            (ValueError, "same device", lambda: ops.mh_loss(img, txt.to(other))),
            (
                ValueError,
                "'img_ids' and 'img_emb' must be on the same device",
                lambda: ops.mh_loss(img, txt, img_ids=ids.to(other), txt_ids=ids),
            ),
        ]
    return calls


def test_bad_input_gets_a_clear_error(device):
    for error, message, call in _bad_calls(device):
        with pytest.raises(error, match=message):
            call()
