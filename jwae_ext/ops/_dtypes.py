"""The dtype that the operators accumulate (and return scores and losses) in."""

from __future__ import annotations

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 inputs accumulate in float64; every other floating dtype (float32, float16,
    bfloat16) in float32, as the C++ kernels do."""
    return torch.float64 if dtype == torch.float64 else torch.float32
