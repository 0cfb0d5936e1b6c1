"""linear_cross_entropy forward+backward: fused ("ours") against F.linear + F.cross_entropy
("reference") and the three GEMMs any implementation needs ("gemm": logits, d hidden, d weight).

Decoder of the jWAE caption term: T = 4096 tokens (batch 128 x 32 words), H = 1024, V in
{10000, 32000}, float32, reduction sum, one token in eight ignored as padding.
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, sizes

from jwae_ext.ops import linear_cross_entropy
from jwae_ext.reference.linear_cross_entropy import linear_cross_entropy as reference

CASES = sizes(full=[(4096, 1024, 10000), (4096, 1024, 32000)], smoke=[(64, 32, 500)])


def make_inputs(T: int, H: int, V: int):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(T, H, generator=gen).to(DEVICE).requires_grad_()
    weight = (torch.randn(V, H, generator=gen) / H**0.5).to(DEVICE).requires_grad_()
    target = torch.randint(1, V, (T,), generator=gen)
    target[::8] = 0  # padding
    return hidden, weight, target.to(DEVICE)


def forward_backward(fn, hidden, weight, target):
    def run():
        fn(hidden, weight, target).backward()
        grads = hidden.grad, weight.grad
        hidden.grad = weight.grad = None
        return grads

    return run


def three_gemms(hidden, weight, target):
    def run():
        with torch.no_grad():
            logits = hidden @ weight.t()
            return logits @ weight, logits.t() @ hidden

    return run


@pytest.mark.parametrize(("T", "H", "V"), CASES)
@pytest.mark.parametrize("impl", ["ours", "reference", "gemm"])
def test_linear_cross_entropy_forward_backward(measure, impl, T, H, V):
    inputs = make_inputs(T, H, V)
    fns = {
        "ours": forward_backward(linear_cross_entropy, *inputs),
        "reference": forward_backward(reference, *inputs),
        "gemm": three_gemms(*inputs),
    }
    measure(f"linear_cross_entropy fwd+bwd T={T} H={H} V={V} fp32", impl, fns[impl])
