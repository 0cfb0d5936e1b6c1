"""Reference for :func:`jwae_ext.ops.mmd_imq`, straight from the definition: it forms every
pairwise difference (an n x m x d temporary), which the operator avoids."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# C = 2 * d * sigma^2 * s for the WAE paper's s in (0.1, 0.2, 0.5, 1, 2, 5, 10), with the
# shared prior's sigma^2 = 1/d (docs/design.md#the-jwae-model), so 2 * d * sigma^2 = 2.
DEFAULT_IMQ_SCALES = (0.2, 0.4, 1.0, 2.0, 4.0, 10.0, 20.0)


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
