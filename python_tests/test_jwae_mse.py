"""jWAE-MSE's objective: the pair term and the variant's prior defaults (docs/design.md,
"jWAE-MSE")."""

import pytest
import torch
import torch.nn.functional as F

from jwae_ext.config import TrainConfig, resolve
from jwae_ext.losses import LossConfig, matching_loss


def _codes(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(6, 5, generator=gen, dtype=torch.float64) * 3, torch.randn(
        6, 5, generator=gen, dtype=torch.float64
    )


def test_pair_term_sums_the_squared_distances_of_the_normalized_codes():
    z_img, z_txt = _codes()
    ids = torch.arange(6)
    value = matching_loss(LossConfig(variant="jwae-mse"), z_img, z_txt, ids)
    cosines = (F.normalize(z_img, dim=1) * F.normalize(z_txt, dim=1)).sum(dim=1)
    assert value.item() == pytest.approx((2 - 2 * cosines).sum().item(), rel=1e-12)
    # Norms do not matter (cosine retrieval), and under DDP a rank's share is scaled by the ranks.
    assert matching_loss(LossConfig(variant="jwae-mse"), 7 * z_img, z_txt, ids).item() == (
        pytest.approx(value.item(), rel=1e-12)
    )
    doubled = matching_loss(LossConfig(variant="jwae-mse", ranks=2), z_img, z_txt, ids)
    assert doubled.item() == pytest.approx(2 * value.item(), rel=1e-12)


@pytest.mark.parametrize(
    ("variant", "prior", "weight"),
    [("jwae-mse", "mmd", 100.0), ("jwae-mh", "gan", 0.01), ("scan-jwae-mh", "gan", 0.01)],
)
def test_prior_defaults_per_variant(variant, prior, weight):
    cfg = resolve(TrainConfig(variant=variant))
    assert (cfg.prior, cfg.lambda_img, cfg.lambda_txt) == (prior, weight, weight)


def test_explicit_prior_flags_win_over_the_variant_defaults():
    cfg = resolve(TrainConfig(variant="jwae-mse", prior="gan", lambda_img=0.5))
    assert (cfg.prior, cfg.lambda_img, cfg.lambda_txt) == ("gan", 0.5, 100.0)
