"""Reference for :func:`jwae_ext.ops.discriminator_loss`: two
``F.binary_cross_entropy_with_logits``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def discriminator_loss(d_logits_real: torch.Tensor, d_logits_fake: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits, prior samples (real) labelled 1 and codes (fake) labelled 0, each a mean."""
    real = F.binary_cross_entropy_with_logits(d_logits_real, torch.ones_like(d_logits_real))
    fake = F.binary_cross_entropy_with_logits(d_logits_fake, torch.zeros_like(d_logits_fake))
    dtype = torch.promote_types(torch.float32, torch.promote_types(real.dtype, fake.dtype))
    return real.to(dtype) + fake.to(dtype)
