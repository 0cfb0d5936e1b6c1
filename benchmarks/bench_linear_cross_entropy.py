"""linear_cross_entropy forward+backward: fused ("ours") against F.linear + F.cross_entropy
("reference") and the three GEMMs any implementation needs ("gemm": logits, d hidden, d weight,
into preallocated outputs).

Decoder of the jWAE caption term: T = 4096 tokens (batch 128 x 32 words), H = 1024, V in
{10000, 32000}, float32, reduction sum, one token in eight ignored as padding.
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, sizes

from jwae_ext import ops, reference

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
        fn(hidden, weight, target, ignore_index=0, reduction="sum").backward()
        grads = hidden.grad, weight.grad
        hidden.grad = weight.grad = None
        return grads

    return run


def three_gemms(hidden, weight, target):
    h, w = hidden.detach(), weight.detach()
    logits = h.new_empty((h.shape[0], w.shape[0]))
    grad_hidden, grad_weight = torch.empty_like(h), torch.empty_like(w)

    def run():
        torch.mm(h, w.t(), out=logits)
        torch.mm(logits, w, out=grad_hidden)
        torch.mm(logits.t(), h, out=grad_weight)
        return grad_hidden, grad_weight

    return run


@pytest.mark.parametrize(("T", "H", "V"), CASES)
def test_linear_cross_entropy_forward_backward(measure, T, H, V):
    """Ours, with the reference and the GEMMs timed in turn, round by round (shared machines)."""
    inputs = make_inputs(T, H, V)
    measure(
        f"linear_cross_entropy fwd+bwd T={T} H={H} V={V} fp32", "ours",
        forward_backward(ops.linear_cross_entropy, *inputs), rounds=5,
        alongside={
            "reference": forward_backward(reference.linear_cross_entropy, *inputs),
            "gemm": three_gemms(*inputs),
        },
    )  # fmt: skip
