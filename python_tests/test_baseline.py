"""The ridge baseline: scikit-learn's Ridge on the same standardized features, its bags of words,
the dev-chosen weight, and the command line."""

from __future__ import annotations

import numpy as np
import pytest

from jwae_ext.baseline import RidgeBaseline, bag_of_words, main, ridge_baseline
from jwae_ext.data import CaptionSplit
from jwae_ext.data.synthetic import export_precomp


def _split(n_images: int, captions_per_image: list[int], seed: int, dim: int = 16) -> CaptionSplit:
    """Captions naming a colour and a shape that the image features encode linearly."""
    rng = np.random.default_rng(seed)
    colours, shapes = ["red", "green", "blue"], ["cube", "ball", "cone", "ring"]
    colour = rng.integers(0, 3, n_images)
    shape = rng.integers(0, 4, n_images)
    features = rng.normal(size=(n_images, dim)) * 0.1
    features[np.arange(n_images), colour] += 1.0
    features[np.arange(n_images), 3 + shape] += 1.0
    captions, owner = [], []
    for i, count in enumerate(captions_per_image):
        for k in range(count):
            captions.append(f"a {colours[colour[i]]} {shapes[shape[i]]}{' here' * k}")
            owner.append(i)
    return CaptionSplit(
        "toy", features.astype(np.float32), captions, np.asarray(owner, dtype=np.int64)
    )


def test_bag_of_words_marks_known_words_once():
    bags = bag_of_words(["a red cube, a cube", "an unknown word"], {"a": 0, "cube": 1, "red": 2})
    third = 1 / np.sqrt(3)
    assert bags.to_dense().tolist() == [[third, third, third], [0.0, 0.0, 0.0]]


@pytest.mark.parametrize("alpha", [0.5, 30.0])
@pytest.mark.parametrize("dim", [16, 128])  # more captions than dimensions (primal), fewer (dual)
def test_ridge_matches_scikit_learn_with_uneven_captions_per_image(alpha, dim):
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    train = _split(30, rng.integers(1, 4, 30).tolist(), seed=1, dim=dim)
    model = RidgeBaseline(train, 1e6).refit(alpha)
    x = (np.asarray(train.images, np.float64) - model.mean.numpy()) / model.scale.numpy()
    y = bag_of_words(train.captions, model.words).to_dense().numpy()
    expected = linear_model.Ridge(alpha=alpha).fit(x[train.cap_to_img], y)
    np.testing.assert_allclose(model.weight.numpy(), expected.coef_.T, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(model.bias.numpy(), expected.intercept_, rtol=1e-7, atol=1e-9)


def test_a_linear_relation_is_retrieved_and_the_dev_split_picks_alpha():
    train, dev, test = (_split(60, [2] * 60, seed=s) for s in (1, 2, 3))
    result = ridge_baseline(train, dev, test, alphas=(1e6, 1.0))
    assert result["alpha"] == 1.0 and result["dev_rsum"][1.0] > result["dev_rsum"][1e6]
    # 12 colour-shape kinds among 60 images: the right kind is always on top, R@10 is complete
    # for text-to-image (at most ~5 images share a kind) and near it for image-to-text.
    assert result["t2i"]["r10"] == 100.0
    assert result["i2t"]["r10"] >= 90.0
    with pytest.raises(ValueError, match="alpha must be > 0"):
        RidgeBaseline(train, 0.0)
    with pytest.raises(ValueError, match="alphas must not be empty"):
        ridge_baseline(train, dev, test, alphas=())


def test_command_line_on_a_precomp_folder(tmp_path, capsys):
    folder = export_precomp(tmp_path / "p", sizes={"train": 40, "dev": 10, "test": 10})
    assert main(["--data", str(folder), "--alphas", "10", "1000"]) == 0
    out = capsys.readouterr().out
    assert "ridge baseline on" in out and "rsum" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(tmp_path / "missing")])
    assert exit_info.value.code == 2
