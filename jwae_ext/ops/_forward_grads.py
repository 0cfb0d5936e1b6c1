"""Backward of the operators that compute their gradients during the forward.

The fused losses (linear cross-entropy with reduction sum/mean, ``wae_loss``,
``discriminator_loss``, ``mmd_imq``) return the gradients of their scalar output along with it,
so their backward only scales those by the incoming gradient. The scaling is in place, so no
second copy of a vocabulary-sized gradient is ever made; the gradients are saved with
``save_for_backward``, so a second backward through the same graph (``retain_graph=True``) fails
with autograd's "modified by an inplace operation" error instead of returning wrong values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def save(ctx, grads: Sequence[torch.Tensor], computed: Sequence[bool]) -> None:
    """Keep the forward's gradients (``computed[i]``: whether ``grads[i]`` holds one)."""
    ctx.save_for_backward(*grads)
    ctx.computed = tuple(computed)


def scaled(
    ctx, grad_output: torch.Tensor, needed: Sequence[bool], op: str
) -> list[torch.Tensor | None]:
    """The saved gradients times ``grad_output``, for the inputs in ``needed``.

    Raises ``RuntimeError`` when an input needs a gradient the forward was not asked for (the
    operator was called directly with a ``grad_mask`` that left it out).
    """
    grads = ctx.saved_tensors
    out: list[torch.Tensor | None] = []
    for index, (need, computed) in enumerate(zip(needed, ctx.computed, strict=True)):
        if need and not computed:
            raise RuntimeError(
                f"jwae_ext.{op}: input {index} needs a gradient but the forward was called with "
                "grad_mask leaving it out; call the public jwae_ext.ops function instead"
            )
        out.append(grads[index].mul_(grad_output) if need else None)
    return out
