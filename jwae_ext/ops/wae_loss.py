"""The jWAE regularizer in one operator: ``wae_loss``.

Kernels: ``csrc/wae_loss.cpp`` (CPU) and ``csrc/cuda/wae_loss.cu`` (CUDA); reference:
:mod:`jwae_ext.reference.wae_loss`. The operator computes the gradients of its scalar output in
the forward (for the inputs that require grad) and its backward only scales them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.autograd.function import once_differentiable

import jwae_ext.ops._forward_grads as _forward_grads
from jwae_ext import reference
from jwae_ext.ops._checks import (
    check_choice,
    check_int,
    check_numbers,
    check_same_device,
    check_tensor,
)
from jwae_ext.ops._dtypes import loss_dtype
from jwae_ext.ops.kernels import with_reference
from jwae_ext.reference.wae_loss import DEFAULT_WEIGHTS, TERM_NAMES

__all__ = ["DEFAULT_WEIGHTS", "RECONSTRUCTIONS", "TERM_NAMES", "wae_loss"]

RECONSTRUCTIONS = ("l1", "l2")


@with_reference(reference.wae_loss)
def wae_loss(
    img_feat: torch.Tensor,
    img_rec: torch.Tensor,
    dec_hidden: torch.Tensor,
    vocab_weight: torch.Tensor,
    targets: torch.Tensor,
    d_logits_img: torch.Tensor | None,
    d_logits_txt: torch.Tensor | None,
    *,
    vocab_bias: torch.Tensor | None = None,
    batch_size: int,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    recon: str = "l1",
    ignore_index: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The jWAE regularizer in one call with one backward.

    ``total = w1 * recon + w2 * nll + w3 * adv_img + w4 * adv_txt`` with

    - ``recon = sum |img_feat - img_rec| / batch_size`` (``recon="l1"``) or the summed squared
      error (``"l2"``), over all elements;
    - ``nll = linear_cross_entropy(dec_hidden, vocab_weight, targets, vocab_bias,
      reduction="sum") / batch_size``: the caption negative log-likelihood through the fused
      vocabulary projection (``dec_hidden`` is ``(..., H)``, ``targets`` its leading shape,
      ``ignore_index`` marks padding);
    - ``adv = mean softplus(-logit) = -mean log sigmoid(D(z))``: the non-saturating generator
      terms for the discriminator logits of the image and caption codes (any shapes); ``None``
      (WAE-MMD training, no discriminator) makes the term 0.

    Returns:
        ``(total, terms)``: the scalar loss and a dict of the four unweighted terms
        ``recon, nll, adv_img, adv_txt`` (0-d, detached, for logging). float32, or float64 when
        an input is float64.
    """
    tensors = {
        "img_feat": img_feat,
        "img_rec": img_rec,
        "dec_hidden": dec_hidden,
        "vocab_weight": vocab_weight,
        "targets": targets,
    }
    optional = {
        "d_logits_img": d_logits_img,
        "d_logits_txt": d_logits_txt,
        "vocab_bias": vocab_bias,
    }
    for name, value in tensors.items():
        check_tensor(name, value)
    for name, value in optional.items():
        if value is not None:
            check_tensor(name, value)
    check_choice("recon", recon, RECONSTRUCTIONS)
    batch_size = check_int("batch_size", batch_size)
    ignore_index = check_int("ignore_index", ignore_index)
    weights = _check_weights(weights)
    grad_mask = [False] * 6
    if torch.is_grad_enabled():
        grad_mask = [
            img_feat.requires_grad or img_rec.requires_grad,
            dec_hidden.requires_grad,
            vocab_weight.requires_grad,
            vocab_bias is not None and vocab_bias.requires_grad,
            d_logits_img is not None and d_logits_img.requires_grad,
            d_logits_txt is not None and d_logits_txt.requires_grad,
        ]
    total, terms, *_ = torch.ops.jwae_ext.wae_loss(
        img_feat, img_rec, dec_hidden, vocab_weight, targets, d_logits_img, d_logits_txt,
        vocab_bias, batch_size, weights, recon, ignore_index, grad_mask,
    )  # fmt: skip
    return total, dict(zip(TERM_NAMES, terms.unbind(), strict=True))


def _check_weights(weights: Sequence[float]) -> list[float]:
    values = check_numbers("weights", weights)
    if len(values) != 4:
        raise ValueError(
            "jwae_ext: argument 'weights' must hold 4 numbers (recon, nll, adv_img, adv_txt), "
            f"got {len(values)}"
        )
    return values


@torch.library.register_fake("jwae_ext::wae_loss")
def _wae_loss_fake(
    img_feat, img_rec, dec_hidden, vocab_weight, targets, d_img, d_txt, vocab_bias,
    batch_size, weights, recon, ignore_index, grad_mask,
):  # fmt: skip
    check_same_device(
        ("dec_hidden", dec_hidden), ("img_feat", img_feat), ("img_rec", img_rec),
        ("vocab_weight", vocab_weight), ("targets", targets), ("d_logits_img", d_img),
        ("d_logits_txt", d_txt), ("vocab_bias", vocab_bias),
    )  # fmt: skip
    present = [t for t in (img_feat, dec_hidden, d_img, d_txt) if t is not None]
    dtype = loss_dtype(*present)
    total = dec_hidden.new_empty((), dtype=dtype)
    terms = dec_hidden.new_empty((4,), dtype=dtype)
    absent = dec_hidden.new_empty((0,))
    inputs = [t if t is not None else absent
              for t in (img_rec, dec_hidden, vocab_weight, vocab_bias, d_img, d_txt)]  # fmt: skip
    return (total, terms, *_forward_grads.fake_grads(zip(inputs, grad_mask, strict=True)))


def _setup_wae_loss(ctx, inputs, output):
    _total, terms, *grads = output
    _forward_grads.setup(ctx, (terms,), grads, inputs[-1])


@once_differentiable
def _wae_loss_backward(ctx, grad_total, *_unused):
    feat, rec, hidden, weight, _, d_img, d_txt, bias = ctx.needs_input_grad[:8]
    needed = (feat or rec, hidden, weight, bias, d_img, d_txt)
    g_rec, g_hidden, g_weight, g_bias, g_img, g_txt = _forward_grads.scaled(
        ctx, grad_total, needed, "wae_loss"
    )
    g_feat = -g_rec if feat and g_rec is not None else None
    return (
        g_feat, g_rec if rec else None, g_hidden, g_weight, None, g_img, g_txt, g_bias,
        None, None, None, None, None,
    )  # fmt: skip


torch.library.register_autograd(
    "jwae_ext::wae_loss", _wae_loss_backward, setup_context=_setup_wae_loss
)
