"""jWAE-MSE's objective: the pair term, the polynomial-kernel MMD that holds its codes' second
moments to the prior's, and the variant's prior defaults (docs/design.md, "jWAE-MSE")."""

import dataclasses
import itertools
import json
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from jwae_ext.config import TrainConfig, from_args, resolve, saved_config
from jwae_ext.losses import LossConfig, matching_loss, quadratic_mmd
from jwae_ext.models import JWAE, ModelConfig


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


def _quadratic_mmd_by_definition(z: torch.Tensor, sigma: float) -> float:
    """The unbiased estimate written out pair by pair, the prior's expectations in closed form."""
    n, d = z.shape
    within = sum(float(z[i] @ z[j]) ** 2 for i, j in itertools.permutations(range(n), 2))
    across = sum(sigma**2 * float(z[i] @ z[i]) for i in range(n))
    return within / (n * (n - 1)) - 2 * across / n + d * sigma**4


@given(
    n=st.integers(2, 12),
    d=st.integers(1, 12),  # both sides of n <= d: the n x n or the d x d Gram matrix
    sigma=st.floats(0.05, 3.0),
    shift=st.floats(-1.0, 1.0),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_quadratic_mmd_matches_its_definition(n, d, sigma, shift, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, d, generator=gen, dtype=torch.float64) * sigma + shift).to(dtype)
    value = quadratic_mmd(z, sigma)
    assert value.dtype == dtype
    expected = _quadratic_mmd_by_definition(z.double(), sigma)
    scale = (z.double().pow(2).sum(1).max().item() + d * sigma**2) ** 2
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert value.item() == pytest.approx(expected, abs=tol * scale)


def test_quadratic_mmd_equals_the_mmd_against_sampled_prior_codes_on_average():
    """The closed-form prior side is the expectation of the sampled one: against many prior
    samples, the usual unbiased estimate with ``k(x, y) = (x . y)^2`` agrees."""
    gen = torch.Generator().manual_seed(3)
    d, sigma = 3, 0.7
    z = torch.randn(20, d, generator=gen, dtype=torch.float64) * torch.tensor([1.5, 0.2, 0.7])
    y = torch.randn(400_000, d, generator=gen, dtype=torch.float64) * sigma
    n = z.shape[0]
    kzz = (z @ z.T).pow(2)
    within_z = (kzz.sum() - kzz.diagonal().sum()) / (n * (n - 1))
    second_y = y.T @ y / y.shape[0]  # E (y . y')^2 = |E[y y^T]|_F^2 for independent y, y'
    sampled = within_z - 2 * (z @ y.T).pow(2).mean() + second_y.pow(2).sum()
    assert quadratic_mmd(z, sigma).item() == pytest.approx(sampled.item(), rel=0.02)


def test_quadratic_mmd_is_unbiased_for_prior_samples_and_large_for_low_rank_codes():
    gen = torch.Generator().manual_seed(5)
    d, n, sigma = 32, 64, 32**-0.5
    draws = torch.stack(
        [quadratic_mmd(torch.randn(n, d, generator=gen) * sigma, sigma) for _ in range(400)]
    )
    assert abs(draws.mean().item()) < 3 * draws.std().item() / 400**0.5
    # Codes of the prior's norm in 3 directions: |E zz^T - sigma^2 I|^2 = 3 (1/3 - 1/d)^2 + ...
    low_rank = torch.zeros(4000, d)
    low_rank[:, :3] = torch.randn(4000, 3, generator=gen) / 3**0.5
    population = 3 * (1 / 3 - 1 / d) ** 2 + (d - 3) / d**2
    assert quadratic_mmd(low_rank, sigma).item() == pytest.approx(population, rel=0.05)
    assert population > 100 * draws.std().item()


def test_quadratic_mmd_gradcheck():
    gen = torch.Generator().manual_seed(2)
    for n, d in ((5, 3), (3, 5)):
        z = torch.randn(n, d, generator=gen, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: quadratic_mmd(t, 0.6), (z,))


@pytest.mark.parametrize(
    ("z", "sigma", "message"),
    [
        (torch.zeros(1, 4), 1.0, "'z' must be a matrix with at least 2 rows"),
        (torch.zeros(4), 1.0, "'z' must be a matrix"),
        (torch.zeros(3, 4), 0.0, "'sigma' must be positive"),
        (torch.zeros(3, 4), float("nan"), "'sigma' must be positive"),
    ],
)
def test_quadratic_mmd_rejects_bad_input(z, sigma, message):
    with pytest.raises(ValueError, match=message):
        quadratic_mmd(z, sigma)


def test_the_mmd_prior_adds_the_weighted_polynomial_kernel_to_each_modality():
    cfg = ModelConfig(img_dim=12, vocab_size=20, embed_size=8, word_dim=6, img_hidden=10)
    torch.manual_seed(0)
    model = JWAE(cfg)
    images = torch.rand(6, 12)
    tokens = torch.tensor([[1, 5, 6, 7, 2]] * 6)
    lengths = torch.full((6,), 5)
    results = {}
    for weight in (0.0, 3.0):
        torch.manual_seed(1)  # the same prior samples and word dropout
        loss_cfg = LossConfig(variant="jwae-mse", prior="mmd", mmd_quadratic=weight)
        results[weight] = model.autoencoder_loss(images, tokens, lengths, torch.arange(6), loss_cfg)
    (total0, terms0, _), (total3, terms3, (z_img, z_txt)) = results[0.0], results[3.0]
    extra = {
        "mmd_img": 3 * quadratic_mmd(z_img, cfg.sigma),
        "mmd_txt": 3 * quadratic_mmd(z_txt, cfg.sigma),
    }
    for name, value in extra.items():
        torch.testing.assert_close(terms3[name], terms0[name] + value.detach())
    lambdas = LossConfig().weights[2:]
    torch.testing.assert_close(
        total3, total0 + lambdas[0] * extra["mmd_img"] + lambdas[1] * extra["mmd_txt"]
    )


@pytest.mark.parametrize(
    ("variant", "task", "prior", "weight", "quadratic"),
    [
        ("jwae-mse", "retrieval", "mmd", 100.0, 2.0),
        ("jwae-mh", "retrieval", "gan", 0.01, 0.0),
        ("scan-jwae-mh", "retrieval", "gan", 0.01, 0.0),
        ("jwae-mse", "grounding", "gan", 0.01, 0.0),
    ],
)
def test_prior_defaults_per_variant(variant, task, prior, weight, quadratic):
    cfg = resolve(TrainConfig(variant=variant, task=task))
    assert (cfg.prior, cfg.lambda_img, cfg.lambda_txt, cfg.mmd_quadratic) == (
        prior,
        weight,
        weight,
        quadratic,
    )


def test_explicit_prior_flags_win_over_the_variant_defaults():
    cfg = resolve(TrainConfig(variant="jwae-mse", prior="gan", lambda_img=0.5))
    assert (cfg.prior, cfg.lambda_img, cfg.lambda_txt, cfg.mmd_quadratic) == (
        "gan",
        0.5,
        100.0,
        0.0,
    )


def test_the_polynomial_kernel_weight_goes_with_the_mmd_prior():
    assert (
        resolve(TrainConfig(variant="jwae-mh", prior="mmd", mmd_quadratic=2.0)).mmd_quadratic == 2
    )
    assert resolve(TrainConfig(variant="jwae-mse", prior="mmd")).mmd_quadratic == 2.0
    with pytest.raises(ValueError, match="--mmd-quadratic weighs a kernel of the MMD prior"):
        resolve(TrainConfig(variant="jwae-mse", prior="gan", mmd_quadratic=2.0))
    with pytest.raises(ValueError, match="needs --prior mmd, got --prior gan"):
        resolve(TrainConfig(variant="jwae-mh", mmd_quadratic=1.0))


def test_negative_polynomial_kernel_weights_are_refused():
    with pytest.raises(ValueError, match=re.escape("--mmd-quadratic must be >= 0, got -1.0")):
        resolve(TrainConfig(variant="jwae-mse", mmd_quadratic=-1.0))
    with pytest.raises(ValueError, match="mmd_quadratic must be a finite number >= 0"):
        LossConfig(variant="jwae-mse", mmd_quadratic=float("inf"))


def test_a_run_of_an_earlier_version_resumes_without_the_polynomial_kernel(tmp_path):
    """Runs saved before ``mmd_quadratic`` existed trained with the IMQ kernels alone; resuming
    one must not switch its objective to today's jwae-mse default."""
    saved = dataclasses.asdict(resolve(TrainConfig(variant="jwae-mse", name="old")))
    del saved["mmd_quadratic"]
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(saved))
    cfg = resolve(from_args(["--resume", "--run-dir", str(tmp_path), "--name", "old"]))
    assert (cfg.prior, cfg.lambda_img, cfg.mmd_quadratic) == ("mmd", 100.0, 0.0)
    assert resolve(saved_config(saved)).mmd_quadratic == 0.0
    saved["mmd_quadratic"] = 2.0
    assert resolve(saved_config(saved)).mmd_quadratic == 2.0
