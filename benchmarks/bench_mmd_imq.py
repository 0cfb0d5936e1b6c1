"""mmd_imq forward+backward: the fused operator ("ours") against the definition composed from torch
ops ("reference", an n x m x d temporary), for 256 codes against 256 prior samples in 1024
dimensions.
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, sizes

from jwae_ext import ops, reference

MMD_CASES = sizes(full=[(256, 256, 1024)], smoke=[(8, 8, 16)])


@pytest.mark.parametrize(("n", "m", "d"), MMD_CASES)
@pytest.mark.parametrize("impl", ["ours", "reference"])
def test_mmd_imq_forward_backward(measure, impl, n, m, d):
    gen = torch.Generator().manual_seed(0)
    z = (torch.randn(n, d, generator=gen) / d**0.5 + 0.01).to(DEVICE).requires_grad_()
    prior = (torch.randn(m, d, generator=gen) / d**0.5).to(DEVICE)
    fn = ops.mmd_imq if impl == "ours" else reference.mmd_imq

    def run():
        return torch.autograd.grad(fn(z, prior), z)

    measure(f"mmd_imq fwd+bwd n={n} m={m} d={d}", impl, run)
