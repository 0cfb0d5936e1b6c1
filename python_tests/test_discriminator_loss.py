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
