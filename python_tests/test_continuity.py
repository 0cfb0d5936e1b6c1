"""Semantic continuity of image codes, on hand-made codes and scenes with known answers."""

import itertools

import numpy as np
import pytest
import torch

from jwae_ext.continuity import continuity, nearest_neighbours
from jwae_ext.data import SceneAttributes


def scenes(shapes, colours, second_shapes=None, second_colours=None) -> SceneAttributes:
    """One or two objects per image; -1 in ``second_shapes`` means no second object."""
    n = len(shapes)
    arrays = {
        name: np.full((n, 3), -1, dtype=np.int8) for name in ("shape", "colour", "size", "position")
    }
    arrays["shape"][:, 0], arrays["colour"][:, 0] = shapes, colours
    arrays["size"][:, 0], arrays["position"][:, 0] = 1, 4
    if second_shapes is not None:
        has = np.asarray(second_shapes) >= 0
        arrays["shape"][has, 1] = np.asarray(second_shapes)[has]
        arrays["colour"][has, 1] = np.asarray(second_colours)[has]
        arrays["size"][has, 1], arrays["position"][has, 1] = 0, 0
    return SceneAttributes(**arrays)


def clustered_codes(groups: np.ndarray, d: int = 8, spread: float = 0.01) -> torch.Tensor:
    """A direction per group plus a small distinct offset per image."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(d, dtype=torch.float64)[torch.as_tensor(groups)]
    return centres + spread * torch.randn(len(groups), d, generator=gen, dtype=torch.float64)


def test_clustered_codes_have_the_hand_computed_continuity():
    # 12 images, 3 shapes x 4 images; within a shape two colours, two images each.
    shapes = np.repeat([0, 1, 2], 4)
    colours = np.tile([0, 0, 1, 1], 3)
    out = continuity(clustered_codes(shapes), scenes(shapes, colours), k=3)
    assert out["k"] == 3
    # The 3 neighbours are the other images of the shape: all share it, one shares the colour.
    assert out["class_agreement"]["shape"] == pytest.approx(1.0)
    assert out["class_agreement"]["colour"] == pytest.approx(1 / 3)
    assert out["class_agreement"]["shape+colour"] == pytest.approx(1 / 3)
    assert out["jaccard"] == pytest.approx(1 / 3)  # one object each: 1 if same (shape, colour)
    # Chance: another image shares the shape with probability 3/11; colour 0 has 6 images.
    assert out["class_chance"]["shape"] == pytest.approx(3 / 11)
    assert out["class_chance"]["colour"] == pytest.approx(5 / 11)
    assert out["class_chance"]["shape+colour"] == pytest.approx(1 / 11)
    assert out["jaccard_chance"] == pytest.approx(1 / 11)


def test_codes_that_scatter_classes_score_zero():
    shapes = np.repeat([0, 1, 2], 4)
    groups = np.tile([0, 1, 2, 3], 3)  # each code cluster holds one image of every shape
    out = continuity(clustered_codes(groups), scenes(shapes, np.zeros(12, dtype=int)), k=2)
    assert out["class_agreement"]["shape"] == 0.0
    assert out["class_agreement"]["colour"] == 1.0


def test_jaccard_counts_sets_of_objects():
    # Image 0: {red circle, blue square}; image 1: {red circle}; image 2: {blue square, red circle}.
    attrs = scenes([0, 0, 1], [0, 0, 2], second_shapes=[1, -1, 0], second_colours=[2, -1, 0])
    codes = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    out = continuity(codes, attrs, k=1)
    # Nearest: 0 -> 1 (J = 1/2), 1 -> 0 (1/2), 2 -> 1 (1/2).
    assert out["jaccard"] == pytest.approx(0.5)
    # All ordered pairs: (0,1) 1/2, (0,2) 1, (1,2) 1/2, each twice.
    assert out["jaccard_chance"] == pytest.approx((0.5 + 1 + 0.5) / 3)


def test_nearest_neighbours_match_brute_force():
    gen = torch.Generator().manual_seed(1)
    codes = torch.randn(57, 6, generator=gen)
    got = nearest_neighbours(codes, 7)
    unit = torch.nn.functional.normalize(codes, dim=1)
    scores = unit @ unit.T
    scores.fill_diagonal_(-float("inf"))
    assert torch.equal(got, scores.argsort(dim=1, descending=True)[:, :7])


def test_identical_codes_never_count_an_image_as_its_own_neighbour():
    codes = torch.ones(5, 3)  # every score ties; self must still be excluded
    got = nearest_neighbours(codes, 4)
    for i, row in enumerate(got.tolist()):
        assert sorted(row) == [j for j in range(5) if j != i]


def test_k_is_capped_by_the_split_size():
    attrs = scenes([0, 1, 0, 1], [0, 0, 0, 0])
    out = continuity(torch.eye(4), attrs, k=10)
    assert out["k"] == 3


def test_jaccard_chance_matches_all_pairs_by_hand():
    rng = np.random.default_rng(3)
    n = 70  # more than one block of anchor rows
    attrs = scenes(
        rng.integers(0, 3, n), rng.integers(0, 2, n), rng.integers(-1, 3, n), rng.integers(0, 2, n)
    )
    expected = np.mean([attrs.jaccard(i, j) for i, j in itertools.permutations(range(n), 2)])
    out = continuity(torch.randn(n, 4, generator=torch.Generator().manual_seed(0)), attrs, k=3)
    assert out["jaccard_chance"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("codes", "k", "message"),
    [
        (torch.randn(3, 4), 1, "one row per image"),
        (torch.randn(4), 1, "one row per image"),
        (torch.randn(4, 4), 0, "'k' must be a positive int"),
    ],
)
def test_bad_arguments_are_named(codes, k, message):
    with pytest.raises(ValueError, match=message):
        continuity(codes, scenes([0, 1, 0, 1], [0, 0, 0, 0]), k=k)


def test_nearest_neighbours_needs_two_codes():
    with pytest.raises(ValueError, match="N >= 2"):
        nearest_neighbours(torch.randn(1, 3), 1)
