"""Vocabulary projection fused with cross-entropy: ``linear_cross_entropy``.

Kernels: ``csrc/linear_cross_entropy.cpp`` (CPU) and ``csrc/cuda/linear_cross_entropy.cu`` (CUDA);
reference: :func:`jwae_ext.reference.linear_cross_entropy.linear_cross_entropy`.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

import jwae_ext.ops._forward_grads as _forward_grads
from jwae_ext import reference
from jwae_ext.ops._checks import check_choice, check_int, check_same_device, check_tensor
from jwae_ext.ops._dtypes import accumulation_dtype
from jwae_ext.ops.kernels import with_reference

REDUCTIONS = ("sum", "mean", "none")


@with_reference(reference.linear_cross_entropy)
def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T + bias`` against ``target``, without the logits.

    Equal to ``F.cross_entropy(F.linear(hidden, weight, bias), target, ignore_index=...,
    reduction=...)``, with the same defaults (so a drop-in call gives the same number), but computed
    over chunks of tokens, so the ``T x V`` logits never exist: extra memory is one chunk of logits
    (32 MiB, or 512 rows when V is so large that 32 MiB hold fewer) plus the gradients themselves.

    Args:
        hidden: ``(T, H)`` decoder states (float32/float64; also float16/bfloat16 on CUDA).
        weight: ``(V, H)`` vocabulary matrix, same dtype and device.
        target: ``(T,)`` int64 token ids in ``[0, V)``, or ``ignore_index`` for padding.
        bias: optional ``(V,)`` vocabulary bias.
        ignore_index: target value whose tokens contribute neither loss nor gradient (default
            -100, as ``F.cross_entropy``; the jWAE caption term passes its padding id, 0).
        reduction: ``"mean"`` over the non-ignored tokens (default; 0 when every token is
            ignored, where ``F.cross_entropy`` gives NaN), ``"sum"`` (what the jWAE caption term
            uses) or ``"none"`` (per-token losses, 0 at ignored tokens).

    Returns:
        The loss: a scalar, or ``(T,)`` for ``reduction="none"``; float32 (float64 for float64
        inputs). Log-sum-exp runs in that precision, so logits of +-100 stay finite.

    With ``sum``/``mean`` and an input that requires grad, the gradients are computed in the
    forward (the chunked logits are at hand) and backward only scales them; ``none`` recomputes
    the logits chunk by chunk in backward.
    """
    for name, value in (("hidden", hidden), ("weight", weight), ("target", target)):
        check_tensor(name, value)
    if bias is not None:
        check_tensor("bias", bias)
    check_choice("reduction", reduction, REDUCTIONS)
    ignore_index = check_int("ignore_index", ignore_index)
    grad_mask = _grad_mask(hidden, weight, bias, reduction)
    loss, *_ = torch.ops.jwae_ext.linear_cross_entropy(
        hidden, weight, target, bias, ignore_index, reduction, grad_mask
    )
    return loss


def _grad_mask(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, reduction: str
) -> list[bool]:
    """Which gradients the forward computes: all that autograd will ask for (sum/mean only)."""
    if reduction == "none" or not torch.is_grad_enabled():
        return [False, False, False]
    return [hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad]


@torch.library.register_fake("jwae_ext::linear_cross_entropy")
def _linear_cross_entropy_fake(hidden, weight, target, bias, ignore_index, reduction, grad_mask):
    check_same_device(("hidden", hidden), ("weight", weight), ("target", target), ("bias", bias))
    tokens, width = hidden.shape
    vocab = weight.shape[0]
    acc = accumulation_dtype(hidden.dtype)
    loss = hidden.new_empty((tokens,) if reduction == "none" else (), dtype=acc)
    lse = hidden.new_empty((tokens,), dtype=acc)
    shapes = ((tokens, width), (vocab, width), (vocab,))
    grads = [
        hidden.new_empty(s if wanted else (0,)) for s, wanted in zip(shapes, grad_mask, strict=True)
    ]
    return (loss, lse, *grads)


@torch.library.register_fake("jwae_ext::linear_cross_entropy_backward")
def _linear_cross_entropy_backward_fake(
    grad_loss, hidden, weight, target, bias, lse, ignore_index, mask
):
    tokens, width = hidden.shape
    vocab = weight.shape[0]
    shapes = ((tokens, width), (vocab, width), (vocab,))
    return tuple(
        hidden.new_empty(s if wanted else (0,)) for s, wanted in zip(shapes, mask, strict=True)
    )


def _setup_context(ctx, inputs, output):
    hidden, weight, target, bias, ignore_index, reduction, grad_mask = inputs
    _loss, lse, *grads = output
    ctx.reduction = reduction
    if reduction == "none":
        ctx.mark_non_differentiable(lse, *grads)
        ctx.set_materialize_grads(False)
        ctx.ignore_index = ignore_index
        ctx.has_bias = bias is not None
        ctx.save_for_backward(hidden, weight, target, bias, lse)
    else:
        _forward_grads.setup(ctx, (lse,), grads, grad_mask)


@once_differentiable
def _backward(ctx, grad_loss, *_unused):
    hidden_, weight_, _, bias_ = ctx.needs_input_grad[:4]
    if ctx.reduction != "none":
        grads = _forward_grads.scaled(
            ctx, grad_loss, (hidden_, weight_, bias_), "linear_cross_entropy"
        )
    elif grad_loss is None:  # nothing reached the loss (gradients are not materialized)
        grads = [None, None, None]
    else:
        hidden, weight, target, bias, lse = ctx.saved_tensors
        mask = [hidden_, weight_, ctx.has_bias and bias_]
        computed = torch.ops.jwae_ext.linear_cross_entropy_backward(
            grad_loss, hidden, weight, target, bias, lse, ctx.ignore_index, mask
        )
        grads = [g if wanted else None for g, wanted in zip(computed, mask, strict=True)]
    return grads[0], grads[1], None, grads[2], None, None, None


torch.library.register_autograd(
    "jwae_ext::linear_cross_entropy", _backward, setup_context=_setup_context
)
