"""discriminator_loss forward+backward: the fused operator ("ours", one vectorized pass over the
logits with the gradient computed alongside) against two F.binary_cross_entropy_with_logits
("reference"), timed in turn round by round (the machines these run on are shared: a ratio of
two tests minutes apart would measure the load). Elementwise work, no GEMM floor: at the training
batch (128 codes) it is launch overhead, so the case also runs at a million logits per side, where
the element loop counts.
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, sizes

from jwae_ext import ops, reference

CASES = sizes(full=[128, 2**20], smoke=[16])


def _forward_backward(fn, real, fake):
    return lambda: torch.autograd.grad(fn(real, fake), (real, fake))


@pytest.mark.parametrize("n", CASES)
def test_discriminator_loss_forward_backward(measure, n):
    gen = torch.Generator().manual_seed(0)
    real = (torch.randn(n, 1, generator=gen) * 3).to(DEVICE).requires_grad_()
    fake = (torch.randn(n, 1, generator=gen) * 3).to(DEVICE).requires_grad_()
    measure(
        f"discriminator_loss fwd+bwd n={n}",
        "ours",
        _forward_backward(ops.discriminator_loss, real, fake),
        rounds=3000 if n <= 128 else 20,  # ~50 us a call: many rounds for a stable median
        alongside={"reference": _forward_backward(reference.discriminator_loss, real, fake)},
    )
