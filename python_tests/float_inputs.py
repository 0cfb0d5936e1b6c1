"""Float leaf tensors and tolerances shared by the jWAE regularizer's operator tests."""

from __future__ import annotations

import torch

from jwae_ext.ops.tolerances import TOLERANCES

FLOATS = [torch.float32, torch.float64]


def tolerance(dtype):
    """``assert_close`` keywords: the table ``python -m jwae_ext.info`` checks against too."""
    return TOLERANCES[dtype].kwargs()


def leaves(gen, dtype, device, *shapes, scale=1.0):
    return [
        (torch.randn(*s, generator=gen, dtype=torch.float64) * scale)
        .to(device=device, dtype=dtype)
        .requires_grad_()
        for s in shapes
    ]
