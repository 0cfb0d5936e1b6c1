"""Float leaf tensors and tolerances shared by the jWAE regularizer's operator tests."""

from __future__ import annotations

import torch

FLOATS = [torch.float32, torch.float64]


def tolerance(dtype):
    return {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-11}


def leaves(gen, dtype, device, *shapes, scale=1.0):
    return [
        (torch.randn(*s, generator=gen, dtype=torch.float64) * scale)
        .to(device=device, dtype=dtype)
        .requires_grad_()
        for s in shapes
    ]
