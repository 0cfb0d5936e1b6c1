"""The jWAE regularizer forward+backward: the fused wae_loss ("ours") against the same terms
composed from torch ops ("reference", jwae_ext.reference.wae_loss), at the default model's sizes
(batch 128, 32 words, hidden/latent 1024, vocabulary 10000, image features 2048).
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, sizes

from jwae_ext import ops, reference

WAE_CASES = sizes(full=[(128, 32, 1024, 10000, 2048)], smoke=[(4, 5, 16, 100, 32)])


def wae_inputs(B: int, L: int, H: int, V: int, D: int) -> dict:
    gen = torch.Generator().manual_seed(0)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(DEVICE).requires_grad_()

    targets = torch.randint(1, V, (B, L), generator=gen)
    targets[:, L // 2 :] = 0  # padding after the caption's end
    return {
        "img_feat": torch.randn(B, D, generator=gen).to(DEVICE),
        "img_rec": leaf(B, D),
        "dec_hidden": leaf(B, L, H),
        "vocab_weight": leaf(V, H, scale=H**-0.5),
        "targets": targets.to(DEVICE),
        "d_logits_img": leaf(B, 1),
        "d_logits_txt": leaf(B, 1),
        "vocab_bias": leaf(V),
    }


@pytest.mark.parametrize(("B", "L", "H", "V", "D"), WAE_CASES)
def test_wae_loss_forward_backward(measure, B, L, H, V, D):
    """Ours, with the reference timed in turn, round by round (the machines are shared)."""
    inputs = wae_inputs(B, L, H, V, D)
    params = [t for t in inputs.values() if t.requires_grad]

    def forward_backward(fn):
        def run():
            total, _ = fn(**inputs, batch_size=B)
            return torch.autograd.grad(total, params)

        return run

    case = f"wae_loss fwd+bwd B={B} L={L} H={H} V={V} D={D}"
    measure(
        case, "ours", forward_backward(ops.wae_loss), rounds=5,
        alongside={"reference": forward_backward(reference.wae_loss)},
    )  # fmt: skip
