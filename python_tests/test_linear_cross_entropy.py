"""linear_cross_entropy against F.linear + F.cross_entropy: values, gradients, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from jwae_ext import reference
from jwae_ext.ops import linear_cross_entropy

REDUCTIONS = ("sum", "mean", "none")
# The jWAE caption term's conventions (padding id 0, summed over tokens); the operator's own
# defaults are F.cross_entropy's (test_defaults_are_those_of_f_cross_entropy).
JWAE = {"ignore_index": 0, "reduction": "sum"}


def make_inputs(T, H, V, *, seed, dtype=torch.float64, device="cpu", bias=True, ignored=0.3,
                ignore_index=0, logit_scale=1.0):  # fmt: skip
    """Leaf tensors requiring grad; targets with a fraction of ignore_index positions."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, H, generator=gen, dtype=torch.float64) * logit_scale / H**0.5
    weight = torch.randn(V, H, generator=gen, dtype=torch.float64)
    b = torch.randn(V, generator=gen, dtype=torch.float64) if bias else None
    target = torch.randint(0, V, (T,), generator=gen)
    target[torch.rand(T, generator=gen) < ignored] = ignore_index
    leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in (hidden, weight)]
    b = b.to(device=device, dtype=dtype).requires_grad_() if bias else None
    return leaves[0], leaves[1], target.to(device), b


def loss_and_grads(fn, hidden, weight, target, bias, upstream, **kwargs):
    """The loss and d(sum(loss * upstream))/d(hidden, weight[, bias]), by default with the jWAE
    caption term's conventions (padding id 0, summed)."""
    kwargs = {**JWAE, **kwargs}
    loss = fn(hidden, weight, target, bias, **kwargs)
    inputs = [t for t in (hidden, weight, bias) if t is not None]
    grads = torch.autograd.grad(loss, inputs, upstream.to(loss.dtype).reshape(loss.shape))
    return [loss.detach(), *grads]


def assert_matches_reference(hidden, weight, target, bias, *, rtol, atol, **kwargs):
    T = hidden.shape[0]
    reduction = kwargs.get("reduction", "sum")
    upstream = torch.linspace(-1.0, 2.0, T if reduction == "none" else 1, dtype=torch.float64)
    ours = loss_and_grads(linear_cross_entropy, hidden, weight, target, bias, upstream, **kwargs)
    ref = loss_and_grads(reference.linear_cross_entropy, hidden, weight, target, bias, upstream,
                         **kwargs)  # fmt: skip
    names = ["loss", "grad_hidden", "grad_weight", "grad_bias"][: len(ours)]
    for name, a, b in zip(names, ours, ref, strict=True):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


@given(
    T=st.integers(1, 600),
    H=st.integers(1, 300),
    V=st.integers(2, 3000),
    reduction=st.sampled_from(REDUCTIONS),
    bias=st.booleans(),
    ignored=st.sampled_from([0.0, 0.2, 0.9]),
    ignore_index=st.sampled_from([0, -100, 1]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_reference(T, H, V, reduction, bias, ignored, ignore_index, dtype, seed):
    inputs = make_inputs(T, H, V, seed=seed, dtype=dtype, bias=bias, ignored=ignored,
                         ignore_index=ignore_index)  # fmt: skip
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-9}
    assert_matches_reference(*inputs, reduction=reduction, ignore_index=ignore_index, **tol)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_many_chunks(reduction):
    # float64 logits of 900 x 20000 take 137 MiB: two chunks of 450 rows (the 512-row minimum).
    inputs = make_inputs(900, 3, 20000, seed=1, bias=True)
    assert_matches_reference(*inputs, reduction=reduction, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_logits_of_100_stay_finite(reduction):
    hidden, weight, target, bias = make_inputs(64, 16, 50, seed=2, dtype=torch.float32,
                                               logit_scale=40.0)  # fmt: skip
    logits = torch.nn.functional.linear(hidden, weight, bias)
    assert logits.abs().max() > 100
    assert_matches_reference(hidden, weight, target, bias, reduction=reduction, rtol=1e-4,
                             atol=1e-3)  # fmt: skip


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_ignored_gives_zero_not_nan(reduction):
    hidden, weight, target, bias = make_inputs(5, 4, 7, seed=3, ignored=1.0)
    loss = linear_cross_entropy(hidden, weight, target, bias, ignore_index=0, reduction=reduction)
    assert torch.equal(loss, torch.zeros_like(loss))
    loss.sum().backward()
    for t in (hidden, weight, bias):
        assert torch.equal(t.grad, torch.zeros_like(t))


def test_defaults_are_those_of_f_cross_entropy():
    """A drop-in call gives F.cross_entropy's number: ignore_index=-100, reduction="mean"."""
    hidden, weight, target, bias = make_inputs(9, 4, 6, seed=21, ignore_index=-100)
    target[0] = 0  # class 0 is a word here, not padding
    assert (target == -100).any()
    ours = linear_cross_entropy(hidden, weight, target, bias)
    expected = F.cross_entropy(hidden @ weight.T + bias, target)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(ours, (hidden, weight, bias))
    expected_grads = torch.autograd.grad(expected, (hidden, weight, bias))
    for a, b in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(4)
    hidden = torch.randn(40, 12, generator=gen, dtype=torch.float64)[::2, 1:11]
    weight = torch.randn(10, 30, generator=gen, dtype=torch.float64).t()  # (30, 10), transposed
    bias = torch.randn(60, generator=gen, dtype=torch.float64)[::2]
    target = torch.randint(0, 30, (40,), generator=gen)[::2]
    for t in (hidden, weight, bias, target):
        assert not t.is_contiguous()
    hidden, weight, bias = (t.requires_grad_() for t in (hidden, weight, bias))
    assert_matches_reference(hidden, weight, target, bias, rtol=1e-10, atol=1e-10)


def test_gradients_only_for_inputs_that_require_them():
    hidden, weight, target, bias = make_inputs(6, 5, 9, seed=5)
    weight.requires_grad_(False)
    loss = linear_cross_entropy(hidden, weight, target, bias, **JWAE)
    loss.backward()
    assert weight.grad is None and hidden.grad is not None and bias.grad is not None
    with torch.no_grad():
        assert not linear_cross_entropy(hidden, weight, target, bias, **JWAE).requires_grad


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck(reduction, bias):
    hidden, weight, target, b = make_inputs(7, 4, 6, seed=6, bias=bias)
    args = (hidden, weight, target) + ((b,) if bias else ())

    def fn(*a):
        return linear_cross_entropy(*a, ignore_index=0, reduction=reduction)

    assert torch.autograd.gradcheck(fn, args)


def test_deterministic_across_runs_and_thread_counts():
    inputs = make_inputs(300, 64, 2000, seed=7, dtype=torch.float32)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads), max(2, threads)):
            torch.set_num_threads(n)
            results.append(loss_and_grads(linear_cross_entropy, *inputs, torch.tensor(1.0)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def test_repeated_backward_through_a_retained_graph():
    hidden, weight, target, bias = make_inputs(4, 3, 5, seed=8)
    loss = linear_cross_entropy(hidden, weight, target, bias, **JWAE)
    first = torch.autograd.grad(loss, (hidden, weight, bias), retain_graph=True)
    doubled = torch.autograd.grad(loss, (hidden, weight, bias), torch.tensor(2.0, dtype=loss.dtype),
                                  retain_graph=True)  # fmt: skip
    again = torch.autograd.grad(loss, (hidden, weight, bias))
    for a, b, c in zip(first, doubled, again, strict=True):
        torch.testing.assert_close(b, 2 * a)
        assert torch.equal(c, a)


def test_double_backward_is_refused():
    hidden, weight, target, _bias = make_inputs(4, 3, 5, seed=9)
    loss = linear_cross_entropy(hidden, weight, target, **JWAE)
    upstream = torch.tensor(1.0, dtype=loss.dtype, requires_grad=True)
    (g,) = torch.autograd.grad(loss, hidden, upstream, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.sum().backward()


@pytest.mark.parametrize(
    "args",
    [
        ("sum", [True, True, True], True),
        ("mean", [True, True, False], False),
        ("mean", [False, False, False], False),
        ("none", [False, False, False], True),
    ],
)
def test_opcheck_linear_cross_entropy(args):
    reduction, mask, bias = args
    hidden, weight, target, b = make_inputs(8, 5, 11, seed=10, dtype=torch.float32, bias=bias)
    # opcheck differentiates with respect to every input that requires grad.
    if reduction != "none":
        for t, wanted in zip((hidden, weight, b), mask, strict=True):
            if t is not None:
                t.requires_grad_(wanted)
    torch.library.opcheck(
        torch.ops.jwae_ext.linear_cross_entropy.default,
        (hidden, weight, target, b, 0, reduction, mask),
    )


def test_opcheck_linear_cross_entropy_backward():
    hidden, weight, target, bias = make_inputs(8, 5, 11, seed=11, dtype=torch.float32)
    with torch.no_grad():
        _, lse, *_ = torch.ops.jwae_ext.linear_cross_entropy(
            hidden, weight, target, bias, 0, "none", [False] * 3
        )
    grad_loss = torch.randn(8)
    torch.library.opcheck(
        torch.ops.jwae_ext.linear_cross_entropy_backward.default,
        (grad_loss, hidden.detach(), weight.detach(), target, bias.detach(), lse, 0,
         [True, True, True]),
    )  # fmt: skip


def _call(**overrides):
    hidden, weight, target, bias = make_inputs(4, 3, 5, seed=12, ignored=0.0)
    args = {"hidden": hidden, "weight": weight, "target": target, "bias": bias}
    args.update(overrides)
    kwargs = {**JWAE, **{k: args.pop(k) for k in ("reduction", "ignore_index") if k in args}}
    return linear_cross_entropy(*args.values(), **kwargs)


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"target": torch.tensor([1, 2, 7, 0])}, ValueError,
         r"'target'.*\[0, 5\).*got 7 at position 2"),
        ({"target": torch.tensor([1, -3, 2, 0])}, ValueError, r"'target'.*got -3 at position 1"),
        ({"target": torch.tensor([1, 2, 3])}, ValueError, r"'target' must have 4 entries"),
        ({"target": torch.ones(4)}, TypeError, r"'target' must be int64"),
        ({"reduction": "avg"}, ValueError, r"'reduction' must be one of"),
        ({"ignore_index": 0.5}, TypeError, r"'ignore_index' must be an int"),
        ({"hidden": torch.randn(4, 3, 1)}, ValueError, r"'hidden' must be a 2-D tensor"),
        ({"hidden": torch.randn(0, 3)}, ValueError, r"'hidden' must not be empty"),
        ({"weight": torch.randn(5, 4, dtype=torch.float64)}, ValueError,
         r"'weight' must have 3 columns"),
        ({"weight": torch.randn(5, 3)}, TypeError,
         r"'hidden' and 'weight' must have the same dtype"),
        ({"bias": torch.randn(6, dtype=torch.float64)}, ValueError,
         r"'bias' must have shape \(5,\)"),
        ({"hidden": torch.randn(4, 3).half(), "weight": torch.randn(5, 3).half(), "bias": None},
         TypeError, r"'hidden' must be float32 or float64 on CPU"),
        ({"hidden": torch.ones(4, 3, dtype=torch.long)}, TypeError, r"'hidden' must be float32"),
        ({"weight": [[1.0]]}, TypeError, r"'weight' must be a torch.Tensor"),
    ],
)  # fmt: skip
def test_errors(overrides, error, match):
    with pytest.raises(error, match=match):
        _call(**overrides)


def test_backward_for_an_input_left_out_of_grad_mask_is_refused():
    hidden, weight, target, bias = make_inputs(4, 3, 5, seed=13)
    loss, *_ = torch.ops.jwae_ext.linear_cross_entropy(hidden, weight, target, bias, 0, "sum",
                                              [True, False, False])  # fmt: skip
    with pytest.raises(RuntimeError, match="grad_mask leaving it out"):
        loss.backward()


@pytest.mark.cuda
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(reduction, dtype):
    # 1500 x 6000 float32 logits are 34 MiB: two chunks.
    cpu = make_inputs(1500, 40, 6000, seed=14, dtype=dtype)
    gpu = make_inputs(1500, 40, 6000, seed=14, dtype=dtype, device="cuda")
    upstream = torch.linspace(-1.0, 2.0, 1500 if reduction == "none" else 1, dtype=torch.float64)
    ours_cpu = loss_and_grads(linear_cross_entropy, *cpu, upstream, reduction=reduction)
    ours_gpu = loss_and_grads(linear_cross_entropy, *gpu, upstream.cuda(), reduction=reduction)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for a, b in zip(ours_cpu, ours_gpu, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=tol, atol=tol)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cuda_half_precision_matches_float32_reference(dtype, reduction):
    hidden, weight, target, bias = make_inputs(700, 64, 5000, seed=15, dtype=dtype,
                                               device="cuda", logit_scale=8.0)  # fmt: skip
    upstream = torch.linspace(-1.0, 2.0, 700 if reduction == "none" else 1, dtype=torch.float64)
    ours = loss_and_grads(linear_cross_entropy, hidden, weight, target, bias, upstream.cuda(),
                          reduction=reduction)  # fmt: skip
    as_fp32 = [t.detach().float().requires_grad_() for t in (hidden, weight, bias)]
    ref = loss_and_grads(reference.linear_cross_entropy, as_fp32[0], as_fp32[1], target,
                         as_fp32[2], upstream.cuda(), reduction=reduction)  # fmt: skip
    assert ours[0].dtype == torch.float32
    tol = 2e-2 if dtype == torch.bfloat16 else 5e-3
    for a, b in zip(ours, ref, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.float(), b, rtol=tol, atol=tol * b.abs().max().item())


@pytest.mark.cuda
def test_cuda_errors():
    hidden, weight, target, bias = make_inputs(4, 3, 5, seed=16, device="cuda")
    with pytest.raises(ValueError, match="'hidden' and 'target' must be on the same device"):
        linear_cross_entropy(hidden, weight, target.cpu(), bias)
    with pytest.raises(ValueError, match=r"'target'.*got 9 at position 0"):
        linear_cross_entropy(hidden, weight, torch.tensor([9, 1, 1, 1], device="cuda"), bias)


@pytest.mark.cuda
def test_opcheck_cuda():
    hidden, weight, target, bias = make_inputs(8, 5, 11, seed=17, dtype=torch.float32,
                                               device="cuda")  # fmt: skip
    torch.library.opcheck(
        torch.ops.jwae_ext.linear_cross_entropy.default,
        (hidden, weight, target, bias, 0, "sum", [True, True, True]),
    )
