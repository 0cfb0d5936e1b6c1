"""The linear baseline a trained model should beat on any data: ridge regression from the image
features to their captions' bag of words, images and captions ranked by the cosine of predicted
and actual bags (exact ranks, the tables of :func:`jwae_ext.retrieval.evaluate`).

On a small dataset (a few hundred pairs) this is the first thing to compare with: a model that
ranks below it has learned less than a linear map does. The ridge weight is chosen on the dev
split by rsum; the features are standardized with the training split's statistics.

    python -m jwae_ext.baseline --data /data/photos_precomp
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
import torch

from jwae_ext.data import CaptionSplit, load_split
from jwae_ext.data.vocab import tokenize
from jwae_ext.retrieval import evaluate, format_table

__all__ = ["ALPHAS", "RidgeBaseline", "bag_of_words", "ridge_baseline"]

ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


def bag_of_words(captions: Sequence[str], words: dict[str, int]) -> torch.Tensor:
    """``(len(captions), len(words))`` float64: 1 where the caption has the word (words outside
    ``words`` are ignored)."""
    bags = torch.zeros(len(captions), len(words), dtype=torch.float64)
    for row, caption in enumerate(captions):
        for token in tokenize(caption):
            column = words.get(token)
            if column is not None:
                bags[row, column] = 1.0
    return bags


class RidgeBaseline:
    """Ridge regression from standardized image features to the l2-normalized bag of words of
    each image's captions (every caption is one training target), fitted on ``train``."""

    def __init__(self, train: CaptionSplit, alpha: float) -> None:
        if not alpha > 0:
            raise ValueError(f"jwae_ext: alpha must be > 0, got {alpha}")
        tokens = sorted({t for caption in train.captions for t in tokenize(caption)})
        self.words = {token: column for column, token in enumerate(tokens)}
        features = torch.tensor(np.asarray(train.images), dtype=torch.float64)
        self.mean = features.mean(0)
        self.scale = features.std(0, unbiased=False).clamp_min(1e-12)
        x = self._standardize(features)[torch.as_tensor(train.cap_to_img)]
        y = _normalize(bag_of_words(train.captions, self.words))
        # An unpenalized intercept (scikit-learn's Ridge), in the dual form: the training
        # captions are usually far fewer than the feature dimensions.
        x_mean, y_mean = x.mean(0), y.mean(0)
        xc = x - x_mean
        gram = xc @ xc.T + alpha * torch.eye(len(x), dtype=x.dtype)
        self.weight = xc.T @ torch.linalg.solve(gram, y - y_mean)
        self.bias = y_mean - x_mean @ self.weight

    def _standardize(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.scale

    def codes(self, split: CaptionSplit) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted bags of the split's images and the bags of its captions, l2-normalized."""
        features = torch.tensor(np.asarray(split.images), dtype=torch.float64)
        predicted = self._standardize(features) @ self.weight + self.bias
        return _normalize(predicted), _normalize(bag_of_words(split.captions, self.words))

    def evaluate(self, split: CaptionSplit) -> dict:
        img, cap = self.codes(split)
        return evaluate(img, cap, torch.as_tensor(split.cap_to_img))


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def ridge_baseline(
    train: CaptionSplit,
    dev: CaptionSplit,
    test: CaptionSplit,
    alphas: Sequence[float] = ALPHAS,
) -> dict:
    """The test table of the ridge weight with the best dev rsum (the first of equals), with
    ``alpha`` and every weight's dev rsum (``dev_rsum``)."""
    if not alphas:
        raise ValueError("jwae_ext: alphas must not be empty")
    dev_rsum = {float(a): RidgeBaseline(train, a).evaluate(dev)["rsum"] for a in alphas}
    alpha = max(dev_rsum, key=lambda a: (dev_rsum[a], -list(dev_rsum).index(a)))
    return {**RidgeBaseline(train, alpha).evaluate(test), "alpha": alpha, "dev_rsum": dev_rsum}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jwae_ext.baseline",
        description="Ridge regression from image features to bags of words: the test table.",
    )
    parser.add_argument("--data", default="synthetic-a", help="embedded name or precomp folder")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--dev-split", default="dev")
    parser.add_argument("--split", default="test", help="the split to report")
    parser.add_argument("--seed", type=int, default=0, help="embedded data's seed")
    parser.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS))
    args = parser.parse_args(argv)
    try:
        train, dev, test = (
            load_split(args.data, split, seed=args.seed)
            for split in (args.train_split, args.dev_split, args.split)
        )
        result = ridge_baseline(train, dev, test, args.alphas)
    except (OSError, ValueError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"ridge baseline on {args.data} ({args.split}), alpha {result['alpha']:g} (dev rsum)")
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
