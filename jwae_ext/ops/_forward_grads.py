"""Backward of the operators that compute their gradients during the forward.

The fused losses (linear cross-entropy with reduction sum/mean, ``wae_loss``,
``discriminator_loss``, ``mmd_imq``) return the gradients of their scalar output along with it,
so their backward only scales those by the incoming gradient. When that is exactly 1 (a plain
``loss.backward()``) the saved gradients are handed to autograd as they are, so no second copy
of a vocabulary-sized gradient is made; otherwise they are scaled out of place, so a repeated
backward (``retain_graph=True``, gradcheck, Jacobians) sees them unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def save(ctx, grads: Sequence[torch.Tensor], computed: Sequence[bool]) -> None:
    """Keep the forward's gradients (``computed[i]``: whether ``grads[i]`` holds one)."""
    ctx.save_for_backward(*grads)
    ctx.computed = tuple(computed)


def _is_one(grad_output: torch.Tensor) -> bool:
    # While tracing (torch.compile, export, AOT autograd) the value is unknown and the tensor is a
    # fake or functional subclass: always scale there, the graph must not bake in the branch.
    if type(grad_output) is not torch.Tensor or torch.compiler.is_compiling():
        return False
    return grad_output.numel() == 1 and bool(grad_output == 1)


def scaled(
    ctx, grad_output: torch.Tensor | None, needed: Sequence[bool], op: str
) -> list[torch.Tensor | None]:
    """The saved gradients times ``grad_output``, for the inputs in ``needed``.

    Raises ``RuntimeError`` when an input needs a gradient the forward was not asked for (the
    operator was called directly with a ``grad_mask`` that left it out).
    """
    grads = ctx.saved_tensors
    if grad_output is None:  # nothing reached the value (gradients are not materialized)
        return [None] * len(needed)
    unit = _is_one(grad_output)
    out: list[torch.Tensor | None] = []
    for index, (need, computed) in enumerate(zip(needed, ctx.computed, strict=True)):
        if need and not computed:
            raise RuntimeError(
                f"jwae_ext.{op}: input {index} needs a gradient but the forward was called with "
                "grad_mask leaving it out; call the public jwae_ext.ops function instead"
            )
        if not need:
            out.append(None)
        else:
            out.append(grads[index] if unit else grads[index] * grad_output)
    return out
