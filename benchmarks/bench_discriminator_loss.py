"""discriminator_loss forward+backward: the fused operator ("ours", one pass over the logits with
the gradient computed alongside) against two F.binary_cross_entropy_with_logits ("reference").
Elementwise work, no GEMM floor: at the training batch (128 codes) it is launch overhead, so the
case also runs at a million logits per side, where memory traffic counts.
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, sizes

from jwae_ext import ops, reference

CASES = sizes(full=[128, 2**20], smoke=[16])


@pytest.mark.parametrize("n", CASES)
@pytest.mark.parametrize("impl", ["ours", "reference"])
def test_discriminator_loss_forward_backward(measure, impl, n):
    gen = torch.Generator().manual_seed(0)
    real = (torch.randn(n, 1, generator=gen) * 3).to(DEVICE).requires_grad_()
    fake = (torch.randn(n, 1, generator=gen) * 3).to(DEVICE).requires_grad_()
    fn = ops.discriminator_loss if impl == "ours" else reference.discriminator_loss

    def run():
        return torch.autograd.grad(fn(real, fake), (real, fake))

    measure(f"discriminator_loss fwd+bwd n={n}", impl, run, rounds=10 if n <= 128 else 3)
