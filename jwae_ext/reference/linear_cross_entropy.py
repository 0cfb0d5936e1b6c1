"""Reference for :func:`jwae_ext.ops.linear_cross_entropy`: ``F.linear`` + ``F.cross_entropy``.

It holds the full ``T x V`` logits (and, for autograd, their log-softmax and gradient), which is
what the fused operator avoids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """``F.cross_entropy(F.linear(hidden, weight, bias), target)`` with the fused op's conventions.

    Logits are promoted to at least float32, and ``mean`` over zero non-ignored tokens is 0 (where
    ``F.cross_entropy`` gives NaN).
    """
    logits = F.linear(hidden, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if reduction == "mean" and not bool((target != ignore_index).any()):
        return logits.sum() * 0
    return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)
