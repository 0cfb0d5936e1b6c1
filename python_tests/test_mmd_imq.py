"""mmd_imq against its torch-op reference."""

from __future__ import annotations

import pytest
import torch
from float_inputs import FLOATS, leaves, tolerance
from hypothesis import given
from hypothesis import strategies as st

from jwae_ext import ops, reference


@given(
    n=st.integers(2, 40),
    m=st.integers(2, 40),
    d=st.integers(1, 24),
    scales=st.lists(st.floats(0.05, 50.0), min_size=1, max_size=7),
    spread=st.sampled_from([0.01, 1.0, 5.0]),
    dtype=st.sampled_from(FLOATS),
    seed=st.integers(0, 2**31 - 1),
)
def test_mmd_imq_matches_reference(n, m, d, scales, spread, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    z, prior = leaves(gen, dtype, "cpu", (n, d), (m, d), scale=spread / d**0.5)
    with torch.no_grad():
        z.add_(0.3)  # a shifted code distribution
    results = []
    for fn in (ops.mmd_imq, reference.mmd_imq):
        mmd = fn(z, prior, scales)
        results.append([mmd.detach(), *torch.autograd.grad(mmd * 1.3, (z, prior))])
    for a, b in zip(*results, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, **tolerance(dtype))


def test_mmd_imq_is_near_zero_for_samples_of_the_prior():
    gen = torch.Generator().manual_seed(8)
    d = 64
    z, prior = (torch.randn(400, d, generator=gen) / d**0.5 for _ in range(2))
    shifted = z + 1.0 / d**0.5
    assert abs(ops.mmd_imq(z, prior).item()) < 0.01 < ops.mmd_imq(shifted, prior).item()


def test_mmd_imq_gradcheck_and_opcheck():
    gen = torch.Generator().manual_seed(9)
    z, prior = leaves(gen, torch.float64, "cpu", (5, 3), (4, 3))
    assert torch.autograd.gradcheck(lambda a, b: ops.mmd_imq(a, b, (0.5, 2.0)), (z, prior))
    torch.library.opcheck(
        torch.ops.jwae_ext.mmd_imq.default, (z.float(), prior.float(), [0.5, 2.0], [True, True])
    )


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((torch.randn(1, 3), torch.randn(4, 3)), ValueError, r"'z' must have at least 2 rows"),
        ((torch.randn(4, 3), torch.randn(1, 3)), ValueError,
         r"'prior_samples' must have at least 2 rows"),
        ((torch.randn(4, 3), torch.randn(4, 2)), ValueError,
         r"'prior_samples' must have 3 columns"),
        ((torch.randn(4, 3), torch.randn(4, 3).double()), TypeError,
         r"'z' and 'prior_samples' must have the same dtype"),
        ((torch.randn(4), torch.randn(4, 3)), ValueError, r"'z' must be a 2-D tensor"),
        ((torch.randn(4, 3), torch.randn(4, 3), (1.0, -2.0)), ValueError,
         r"'scales' must hold positive finite numbers, got -2 at position 1"),
        ((torch.randn(4, 3), torch.randn(4, 3), ()), ValueError,
         r"'scales' must hold at least one"),
    ],
)  # fmt: skip
def test_mmd_imq_errors(args, error, match):
    with pytest.raises(error, match=match):
        ops.mmd_imq(*args)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOATS)
def test_cuda_matches_cpu(dtype):
    gen = torch.Generator().manual_seed(11)
    z, prior = leaves(gen, dtype, "cpu", (70, 16), (50, 16), scale=0.25)
    fn, args = ops.mmd_imq, (z, prior)
    on_gpu = [t.detach().cuda().requires_grad_() for t in args]
    a = [fn(*args), *torch.autograd.grad(fn(*args), args)]
    b = [fn(*on_gpu), *torch.autograd.grad(fn(*on_gpu), on_gpu)]
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(y.cpu(), x.detach(), **tolerance(dtype))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision(dtype):
    z, prior = (torch.randn(40, 16, device="cuda", dtype=dtype) / 4 for _ in range(2))
    torch.testing.assert_close(ops.mmd_imq(z, prior), reference.mmd_imq(z.float(), prior.float()),
                               rtol=1e-3, atol=1e-4)  # fmt: skip


@pytest.mark.cuda
def test_cuda_device_mismatch():
    with pytest.raises(ValueError, match="'z' and 'prior_samples' must be on the same device"):
        ops.mmd_imq(torch.randn(4, 3, device="cuda"), torch.randn(4, 3))
