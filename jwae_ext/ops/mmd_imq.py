"""WAE-MMD prior matching: ``mmd_imq``, the unbiased MMD^2 with the IMQ kernel.

Kernels: ``csrc/mmd_imq.cpp`` (CPU) and ``csrc/cuda/mmd_imq.cu`` (CUDA); reference:
:mod:`jwae_ext.reference.mmd_imq`. The operator computes the gradients of its value in the
forward (for the inputs that require grad) and its backward only scales them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

import jwae_ext.ops._forward_grads as _forward_grads
from jwae_ext import reference
from jwae_ext.ops._checks import check_numbers, check_same_device, check_tensor
from jwae_ext.ops._dtypes import loss_dtype
from jwae_ext.ops.kernels import with_reference
from jwae_ext.reference.mmd_imq import DEFAULT_IMQ_SCALES

__all__ = ["DEFAULT_IMQ_SCALES", "mmd_imq"]


@with_reference(reference.mmd_imq)
def mmd_imq(
    z: torch.Tensor,
    prior_samples: torch.Tensor,
    scales: Sequence[float] = DEFAULT_IMQ_SCALES,
) -> torch.Tensor:
    """Unbiased MMD^2 between codes ``z`` (n x d) and ``prior_samples`` (m x d), IMQ kernel.

    ``k(x, y) = sum_C C / (C + |x - y|^2)`` over ``scales``; the within-sample averages run over
    distinct pairs only (``i != j``), so n, m >= 2 (they may differ). The default scales are
    ``C = 2 * d * sigma^2 * s`` for the WAE paper's ``s`` in (0.1, 0.2, 0.5, 1, 2, 5, 10) with the
    shared prior ``N(0, I/d)``: ``(0.2, 0.4, 1, 2, 4, 10, 20)``. Pairwise distances come from the
    squared norms and one GEMM per block (no n x m x d temporary); the gradient is analytic. The
    result is float32 (float64 for float64 inputs); computation is in that precision.
    """
    check_tensor("z", z)
    check_tensor("prior_samples", prior_samples)
    scales = check_numbers("scales", scales)
    grad = torch.is_grad_enabled()
    mask = [grad and z.requires_grad, grad and prior_samples.requires_grad]
    mmd, *_ = torch.ops.jwae_ext.mmd_imq(z, prior_samples, scales, mask)
    return mmd


@torch.library.register_fake("jwae_ext::mmd_imq")
def _mmd_imq_fake(z, prior_samples, scales, grad_mask):
    check_same_device(("z", z), ("prior_samples", prior_samples))
    mmd = z.new_empty((), dtype=loss_dtype(z))
    return (mmd, *_forward_grads.fake_grads(zip((z, prior_samples), grad_mask, strict=True)))


torch.library.register_autograd(
    "jwae_ext::mmd_imq",
    _forward_grads.two_input_backward("mmd_imq"),
    setup_context=_forward_grads.setup_two_input_op,
)
