"""The training objectives of every variant, built only from the compiled operators.

``jwae-mh`` (default): L_jWAE + L_MH.  ``jwae-mse``: L_jWAE + the squared distances of the
normalized pair codes, summed over the pairs (its defaults match the prior by MMD with
lambda3 = lambda4 = 100 and the polynomial kernel at 2: docs/design.md, "jWAE-MSE").
``vse++``: L_MH alone.  ``vse0``: the sum of hinges alone.
``scan``: L_MH on cross-attention scores of region and word codes; ``scan-jwae-mh``: that plus
L_jWAE on the region and word codes (:class:`jwae_ext.models.SCAN`).
L_jWAE = lambda1 * feature reconstruction + lambda2 * caption NLL + lambda3/lambda4 * prior
matching of the image/caption codes, by the adversarial terms (``prior="gan"``) or by MMD
(``prior="mmd"``) with inverse-multiquadratic kernels plus, weighted ``mmd_quadratic``, the
second-order polynomial kernel (:func:`quadratic_mmd`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from jwae_ext import ops

SCAN_VARIANTS = ("scan", "scan-jwae-mh")
VARIANTS = ("jwae-mh", "jwae-mse", "vse++", "vse0", *SCAN_VARIANTS)
JWAE_VARIANTS = ("jwae-mh", "jwae-mse", "scan-jwae-mh")
PRIORS = ("gan", "mmd")
RECONS = ("l1", "l2")


@dataclass(frozen=True)
class LossConfig:
    """Weights and options of the objective (defaults: the official code's, docs/design.md,
    "The jWAE model")."""

    variant: str = "jwae-mh"
    prior: str = "gan"
    margin: float = 0.2
    weights: tuple[float, float, float, float] = (0.05, 0.005, 0.01, 0.01)
    recon: str = "l1"
    # Sum of hinges instead of the hardest negative, for the warm-up epochs of the MH variants:
    # from random initialisation the hardest negative alone can collapse all codes to one point.
    warmup: bool = False
    # Data-parallel processes: DDP averages gradients over them, so a loss summed over pairs is
    # scaled by their number to give the gradient of the global batch's sum.
    ranks: int = 1
    # With prior="mmd": the weight of the polynomial kernel (x.y)^2 beside the IMQ kernels.
    mmd_quadratic: float = 0.0

    def __post_init__(self) -> None:
        for name, allowed in (("variant", VARIANTS), ("prior", PRIORS), ("recon", RECONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if len(self.weights) != 4:
            raise ValueError(f"weights must hold 4 lambdas, got {self.weights!r}")
        if not (math.isfinite(self.mmd_quadratic) and self.mmd_quadratic >= 0):
            raise ValueError(
                f"mmd_quadratic must be a finite number >= 0, got {self.mmd_quadratic!r}"
            )

    @property
    def uses_wae(self) -> bool:
        return self.variant in JWAE_VARIANTS

    @property
    def uses_discriminator(self) -> bool:
        return self.uses_wae and self.prior == "gan"


def quadratic_mmd(z: torch.Tensor, sigma: float) -> torch.Tensor:
    """Unbiased MMD^2 between codes ``z`` (n x d, n >= 2) and the prior N(0, sigma^2 I_d) under
    the second-order polynomial kernel ``k(x, y) = (x . y)^2``, the prior's side in closed form
    (``E (z . y)^2 = sigma^2 |z|^2``, ``E (y . y')^2 = d sigma^4``).

    Its population value is ``|E[z z^T] - sigma^2 I|_F^2``: the distance of the codes' second
    moments from the prior's, which the IMQ kernels of 128 codes in 256 dimensions barely see
    (codes in a few directions pass them; docs/design.md, "jWAE-MSE"). Plain tensor algebra: the
    only temporary is the smaller of the n x n and d x d Gram matrices.
    """
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(
            "quadratic_mmd: argument 'z' must be a matrix with at least 2 rows (codes x latent "
            f"size; the unbiased MMD averages over distinct pairs), got shape {tuple(z.shape)}"
        )
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"quadratic_mmd: argument 'sigma' must be positive, got {sigma!r}")
    n, d = z.shape
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    gram = z @ z.T if n <= d else z.T @ z  # the same Frobenius norm
    norms = z.pow(2).sum(1)
    within = (gram.pow(2).sum() - norms.pow(2).sum()) / (n * (n - 1))
    return within - 2 * sigma**2 * norms.mean() + d * sigma**4


def matching_loss(
    cfg: LossConfig,
    z_img: torch.Tensor,
    z_txt: torch.Tensor,
    img_ids: torch.Tensor,
    hinge: Callable[..., torch.Tensor] = ops.mh_loss,
) -> torch.Tensor:
    """The supervised term tying paired codes: max- or sum-of-hinges, or the pair MSE.

    ``img_ids`` names each pair's image, so two captions of one image in a batch are never each
    other's negatives. ``hinge`` computes the hinge losses with the keywords of
    :func:`jwae_ext.ops.mh_loss`; distributed training passes
    :func:`jwae_ext.losses_distributed.global_mh_loss` (negatives from every rank's batch).
    """
    if cfg.variant == "jwae-mse":
        # Summed over the pairs, as the hinge losses are (VSE++'s reduction, against which the
        # lambdas were set); under DDP each rank's share is scaled as global_mh_loss scales it.
        diff = F.normalize(z_img, dim=1) - F.normalize(z_txt, dim=1)
        return diff.pow(2).sum() * cfg.ranks
    return hinge(
        z_img,
        z_txt,
        margin=cfg.margin,
        max_violation=cfg.variant != "vse0" and not cfg.warmup,
        img_ids=img_ids,
        txt_ids=img_ids,
        normalize=True,
    )


def xattn_mh_loss(
    regions: torch.Tensor,
    words: torch.Tensor,
    cap_lens: torch.Tensor,
    *,
    xattn: dict,
    **options: object,
) -> torch.Tensor:
    """SCAN's objective: the max-of-hinges loss (:func:`jwae_ext.ops.mh_loss_from_scores`, with
    ``options``: ``margin``, ``max_violation``, ``img_ids``, ``txt_ids``) of the batch's
    cross-attention score matrix (:func:`jwae_ext.ops.xattn_scores` with the options ``xattn``)
    of region codes ``(B, R, d)`` against word codes ``(B, L, d)``."""
    return ops.mh_loss_from_scores(ops.xattn_scores(regions, words, cap_lens, **xattn), **options)
