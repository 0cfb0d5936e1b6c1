"""The WAE-GAN discriminator's loss: ``discriminator_loss``.

Kernels: ``csrc/discriminator_loss.cpp`` (CPU) and ``csrc/cuda/discriminator_loss.cu`` (CUDA);
reference: :mod:`jwae_ext.reference.discriminator_loss`. The operator computes the gradients of
its value in the forward (for the inputs that require grad) and its backward only scales them.
"""

from __future__ import annotations

import torch

import jwae_ext.ops._forward_grads as _forward_grads
from jwae_ext import reference
from jwae_ext.ops._checks import check_same_device, check_tensor
from jwae_ext.ops._dtypes import loss_dtype
from jwae_ext.ops.kernels import with_reference


@with_reference(reference.discriminator_loss)
def discriminator_loss(d_logits_real: torch.Tensor, d_logits_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's BCE-with-logits loss: prior samples labelled 1, codes labelled 0.

    ``mean softplus(-d_logits_real) + mean softplus(d_logits_fake)``: the mean over the real
    logits plus the mean over the fake ones (each side weighs the same whatever its count), i.e.
    ``F.binary_cross_entropy_with_logits(real, ones) + F.binary_cross_entropy_with_logits(fake,
    zeros)``. Any shapes; float32 (float64 when an input is float64).
    """
    check_tensor("d_logits_real", d_logits_real)
    check_tensor("d_logits_fake", d_logits_fake)
    grad = torch.is_grad_enabled()
    mask = [grad and d_logits_real.requires_grad, grad and d_logits_fake.requires_grad]
    loss, *_ = torch.ops.jwae_ext.discriminator_loss(d_logits_real, d_logits_fake, mask)
    return loss


@torch.library.register_fake("jwae_ext::discriminator_loss")
def _discriminator_loss_fake(d_logits_real, d_logits_fake, grad_mask):
    check_same_device(("d_logits_real", d_logits_real), ("d_logits_fake", d_logits_fake))
    loss = d_logits_real.new_empty((), dtype=loss_dtype(d_logits_real, d_logits_fake))
    pairs = zip((d_logits_real, d_logits_fake), grad_mask, strict=True)
    return (loss, *_forward_grads.fake_grads(pairs))


torch.library.register_autograd(
    "jwae_ext::discriminator_loss",
    _forward_grads.two_input_backward("discriminator_loss"),
    setup_context=_forward_grads.setup_two_input_op,
)
