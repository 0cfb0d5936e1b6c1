"""discriminator_loss against its torch-op reference."""

from __future__ import annotations

import pytest
import torch
from float_inputs import FLOATS, leaves, tolerance
from hypothesis import given
from hypothesis import strategies as st

from jwae_ext import ops, reference


@given(
    n_real=st.integers(1, 50),
    n_fake=st.integers(1, 50),
    scale=st.sampled_from([0.1, 3.0, 100.0]),
    dtype=st.sampled_from(FLOATS),
    seed=st.integers(0, 2**31 - 1),
)
def test_discriminator_loss_matches_reference(n_real, n_fake, scale, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    real, fake = leaves(gen, dtype, "cpu", (n_real, 1), (n_fake,), scale=scale)
    results = []
    for fn in (ops.discriminator_loss, reference.discriminator_loss):
        loss = fn(real, fake)
        results.append([loss.detach(), *torch.autograd.grad(loss * 0.3, (real, fake))])
    for a, b in zip(*results, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, **tolerance(dtype))


def _loss_and_grads(fn, real, fake):
    real, fake = (x.detach().clone().requires_grad_() for x in (real, fake))
    loss = fn(real, fake)
    return [loss.detach(), *torch.autograd.grad(loss, (real, fake))]


@pytest.mark.parametrize("dtype", FLOATS)
def test_extreme_logits_match_reference(dtype):
    # Where the vectorized CPU loop has its special cases: exp underflowing (|u| > 87 in float32,
    # > 708 in float64), softplus far below the rounding of 1 + e^u, the sign of 0, infinities.
    values = [0.0, -0.0, 1e-30, -1e-30, 0.5, -0.5, 20.0, -20.0, 30.0, -30.0, 86.9, -86.9, 87.5,
              -87.5, 100.0, -100.0, 700.0, -700.0, 750.0, -750.0, 1e30, -1e30]  # fmt: skip
    logits = torch.tensor(values, dtype=dtype)
    got = _loss_and_grads(ops.discriminator_loss, logits, logits.flip(0))
    want = _loss_and_grads(reference.discriminator_loss, logits, logits.flip(0))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **tolerance(dtype))
    # Infinite logits take their limits (the reference's formula gives NaN: inf - inf): a real
    # logit of +inf and a fake one of -inf cost 0 with gradient 0, the opposite signs cost inf with
    # gradient -1/n and +1/n. NaN gives NaN.
    inf, nan = float("inf"), float("nan")
    loss, grad_real, grad_fake = _loss_and_grads(
        ops.discriminator_loss, torch.tensor([inf], dtype=dtype), torch.tensor([-inf], dtype=dtype)
    )
    assert loss.item() == 0 and grad_real.tolist() == [0] and grad_fake.tolist() == [0]
    loss, grad_real, grad_fake = _loss_and_grads(
        ops.discriminator_loss,
        torch.tensor([-inf, 0], dtype=dtype),
        torch.tensor([inf], dtype=dtype),
    )
    assert loss.item() == inf and grad_real.tolist() == [-0.5, -0.25] and grad_fake.tolist() == [1]
    loss, grad_real, _ = _loss_and_grads(
        ops.discriminator_loss, torch.tensor([nan, 0], dtype=dtype), torch.tensor([0], dtype=dtype)
    )
    assert loss.isnan() and grad_real[0].isnan() and grad_real[1] == -0.25


@pytest.mark.parametrize("dtype", FLOATS)
def test_many_logits_match_reference_for_any_thread_count(dtype):
    # Several of the fixed 2^14-element blocks and a ragged end (vector remainders), the same
    # bits for every thread count.
    gen = torch.Generator().manual_seed(5)
    real, fake = leaves(gen, dtype, "cpu", (3 * 2**14 + 37,), (2**14 - 5, 3), scale=4.0)
    want = _loss_and_grads(reference.discriminator_loss, real, fake)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            runs.append(_loss_and_grads(ops.discriminator_loss, real, fake))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(runs[0], want, strict=True):
        torch.testing.assert_close(a, b, **tolerance(dtype))
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], run, strict=True))


def test_discriminator_loss_gradcheck_and_opcheck():
    gen = torch.Generator().manual_seed(7)
    real, fake = leaves(gen, torch.float64, "cpu", (5, 1), (7,), scale=3.0)
    assert torch.autograd.gradcheck(ops.discriminator_loss, (real, fake))
    torch.library.opcheck(
        torch.ops.jwae_ext.discriminator_loss.default, (real.float(), fake.float(), [True, True])
    )


def test_discriminator_loss_errors():
    with pytest.raises(ValueError, match="'d_logits_fake' must not be empty"):
        ops.discriminator_loss(torch.zeros(3), torch.zeros(0))
    with pytest.raises(TypeError, match="'d_logits_real' must be float32 or float64"):
        ops.discriminator_loss(torch.zeros(3, dtype=torch.long), torch.zeros(3))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOATS)
def test_cuda_matches_cpu(dtype):
    gen = torch.Generator().manual_seed(11)
    leaves(gen, dtype, "cpu", (70, 16), (50, 16), scale=0.25)  # mmd_imq's inputs came first
    real, fake = leaves(gen, dtype, "cpu", (70, 1), (120,), scale=5.0)
    fn, args = ops.discriminator_loss, (real, fake)
    on_gpu = [t.detach().cuda().requires_grad_() for t in args]
    a = [fn(*args), *torch.autograd.grad(fn(*args), args)]
    b = [fn(*on_gpu), *torch.autograd.grad(fn(*on_gpu), on_gpu)]
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(y.cpu(), x.detach(), **tolerance(dtype))
