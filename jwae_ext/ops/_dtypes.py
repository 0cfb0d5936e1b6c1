"""The dtype that the operators accumulate (and return scores and losses) in."""

from __future__ import annotations

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 inputs accumulate in float64; every other floating dtype (float32, float16,
    bfloat16) in float32, as the C++ kernels do."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def loss_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype of a loss value the wae operators return: float64 when any input is float64,
    float32 otherwise."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
