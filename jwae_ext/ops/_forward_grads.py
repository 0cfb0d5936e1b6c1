"""Autograd for the operators that compute their gradients during the forward.

The fused losses (linear cross-entropy with reduction sum/mean, ``wae_loss``,
``discriminator_loss``, ``mmd_imq``) return the gradients of their scalar output along with it,
so their backward only scales those by the incoming gradient. The scaling is always done, out of
place: reading the incoming gradient's value on the host to skip a multiplication by 1 would
synchronise the GPU on every step, and a repeated backward (``retain_graph=True``, gradcheck,
Jacobians) must see the saved gradients unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch.autograd.function import once_differentiable


def save(ctx, grads: Sequence[torch.Tensor], computed: Sequence[bool]) -> None:
    """Keep the forward's gradients (``computed[i]``: whether ``grads[i]`` holds one)."""
    ctx.save_for_backward(*grads)
    ctx.computed = tuple(computed)


def setup(ctx, non_differentiable: Sequence[torch.Tensor], grads, computed) -> None:
    """``setup_context`` of such an operator: its extra outputs (terms, the gradients) get no
    gradient, and none is materialised for them (no zero-filled V x H tensors in backward)."""
    ctx.mark_non_differentiable(*non_differentiable, *grads)
    ctx.set_materialize_grads(False)
    save(ctx, grads, computed)


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
    out: list[torch.Tensor | None] = []
    for index, (need, computed) in enumerate(zip(needed, ctx.computed, strict=True)):
        if need and not computed:
            raise RuntimeError(
                f"jwae_ext.{op}: input {index} needs a gradient but the forward was called with "
                "grad_mask leaving it out; call the public jwae_ext.ops function instead"
            )
        out.append(grads[index] * grad_output if need else None)
    return out


def two_input_backward(op: str) -> Callable:
    """The backward of an operator ``op(a, b, ..., grad_mask) -> (value, grad_a, grad_b)``."""

    @once_differentiable
    def backward(ctx, grad_value, *_unused):
        needed = ctx.needs_input_grad[:2]
        first, second = scaled(ctx, grad_value, needed, op)
        return first, second, *([None] * (len(ctx.needs_input_grad) - 2))

    return backward


def setup_two_input_op(ctx, inputs, output) -> None:
    """``setup_context`` of an operator ``op(a, b, ..., grad_mask) -> (value, grad_a, grad_b)``."""
    _value, *grads = output
    setup(ctx, (), grads, inputs[-1])


def fake_grads(pairs: Iterable[tuple[torch.Tensor, bool]]) -> tuple[torch.Tensor, ...]:
    """Gradient outputs of a fake kernel: like the input when asked for, else empty."""
    return tuple(t.new_empty(t.shape if wanted else (0,)) for t, wanted in pairs)
