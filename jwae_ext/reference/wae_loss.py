"""References for :mod:`jwae_ext.ops.wae`, composed from standard torch ops.

The MMD reference forms every pairwise difference (an n x m x d temporary), which the kernel
avoids.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from jwae_ext.ops.wae import DEFAULT_IMQ_SCALES, DEFAULT_WEIGHTS, TERM_NAMES
from jwae_ext.reference.linear_xent import linear_cross_entropy


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
    """``F.l1_loss``/``F.mse_loss`` (sum) + ``F.linear`` + ``F.cross_entropy`` (sum) +
    ``F.binary_cross_entropy_with_logits`` against label 1 (0 without logits), weighted."""
    recon_fn = F.l1_loss if recon == "l1" else F.mse_loss
    hidden = dec_hidden.reshape(-1, dec_hidden.shape[-1])
    nll = linear_cross_entropy(
        hidden, vocab_weight, targets.reshape(-1), vocab_bias,
        ignore_index=ignore_index, reduction="sum",
    )  # fmt: skip
    terms = [
        recon_fn(img_rec, img_feat, reduction="sum") / batch_size,
        nll / batch_size,
        *(
            F.binary_cross_entropy_with_logits(d, torch.ones_like(d))
            if d is not None
            else torch.zeros((), device=hidden.device)
            for d in (d_logits_img, d_logits_txt)
        ),
    ]
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in terms) else torch.float32
    terms = [t.to(dtype) for t in terms]
    total = sum(w * t for w, t in zip(weights, terms, strict=True))
    return total, dict(zip(TERM_NAMES, (t.detach() for t in terms), strict=True))


def discriminator_loss(d_logits_real: torch.Tensor, d_logits_fake: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits, prior samples (real) labelled 1 and codes (fake) labelled 0, each a mean."""
    real = F.binary_cross_entropy_with_logits(d_logits_real, torch.ones_like(d_logits_real))
    fake = F.binary_cross_entropy_with_logits(d_logits_fake, torch.zeros_like(d_logits_fake))
    dtype = torch.promote_types(torch.float32, torch.promote_types(real.dtype, fake.dtype))
    return real.to(dtype) + fake.to(dtype)


def mmd_imq(
    z: torch.Tensor,
    prior_samples: torch.Tensor,
    scales: Sequence[float] = DEFAULT_IMQ_SCALES,
) -> torch.Tensor:
    """Unbiased MMD^2 with ``k(x, y) = sum_C C / (C + |x - y|^2)``, straight from the definition."""
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    prior_samples = prior_samples.to(z.dtype)

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = (a[:, None, :] - b[None, :, :]).pow(2).sum(-1)
        return sum(c / (c + d2) for c in scales)

    def off_diagonal_mean(k: torch.Tensor) -> torch.Tensor:
        n = k.shape[0]
        return (k.sum() - k.diagonal().sum()) / (n * (n - 1))

    return (
        off_diagonal_mean(kernel(z, z))
        + off_diagonal_mean(kernel(prior_samples, prior_samples))
        - 2 * kernel(z, prior_samples).mean()
    )
