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
def test_mmd_imq_forward_backward(measure, n, m, d):
    """Ours, with the reference timed in turn, round by round (the machines are shared)."""
    gen = torch.Generator().manual_seed(0)
    z = (torch.randn(n, d, generator=gen) / d**0.5 + 0.01).to(DEVICE).requires_grad_()
    prior = (torch.randn(m, d, generator=gen) / d**0.5).to(DEVICE)

    def forward_backward(fn):
        return lambda: torch.autograd.grad(fn(z, prior), z)

    measure(
        f"mmd_imq fwd+bwd n={n} m={m} d={d}", "ours", forward_backward(ops.mmd_imq), rounds=5,
        alongside={"reference": forward_backward(reference.mmd_imq)},
    )  # fmt: skip
