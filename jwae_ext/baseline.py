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

__all__ = ["ALPHAS", "RidgeBaseline", "bag_of_words", "fit_on_dev", "ridge_baseline"]

ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


def bag_of_words(captions: Sequence[str], words: dict[str, int]) -> torch.Tensor:
    """Sparse ``(len(captions), len(words))`` float64 rows, l2-normalized: the words the caption
    has (words outside ``words`` are ignored; a caption with none is a zero row)."""
    rows: list[int] = []
    columns: list[int] = []
    for row, caption in enumerate(captions):
        present = {words[t] for t in tokenize(caption) if t in words}
        rows.extend([row] * len(present))
        columns.extend(sorted(present))
    index = torch.tensor([rows, columns], dtype=torch.int64).reshape(2, -1)
    counts = torch.bincount(index[0], minlength=len(captions)).to(torch.float64)
    values = counts[index[0]].rsqrt()
    shape = (len(captions), len(words))
    return torch.sparse_coo_tensor(index, values, shape, check_invariants=True).coalesce()


class RidgeBaseline:
    """Ridge regression from standardized image features to the l2-normalized bag of words of
    each image's captions (every caption is one training target), fitted on ``train``;
    :meth:`refit` changes the weight without redoing the rest (the Gram matrix is kept)."""

    def __init__(self, train: CaptionSplit, alpha: float) -> None:
        tokens = sorted({t for caption in train.captions for t in tokenize(caption)})
        self.words = {token: column for column, token in enumerate(tokens)}
        features = torch.tensor(np.asarray(train.images), dtype=torch.float64)
        self.mean = features.mean(0)
        self.scale = features.std(0, unbiased=False).clamp_min(1e-12)
        owner = torch.as_tensor(train.cap_to_img)
        y = bag_of_words(train.captions, self.words)
        # Every caption is a row of the regression, its image's features the row's inputs. An
        # unpenalized intercept (scikit-learn's Ridge): centred features and targets.
        captions_of = torch.bincount(owner, minlength=len(features)).to(torch.float64)
        z = self._standardize(features)
        self._x_mean = captions_of @ z / len(owner)
        zc = z - self._x_mean  # one row per image; a caption's row is its image's
        self._y_mean = torch.sparse.sum(y, 0).to_dense() / len(owner)
        if len(owner) <= zc.shape[1]:  # the dual: (n, n) system over the captions
            self._xc = zc[owner]
            self._gram = self._xc @ self._xc.T
            self._targets = y.to_dense() - self._y_mean
        else:  # the primal: (d, d) system, summed per image (each image once, not per caption)
            self._xc = None
            self._gram = zc.T @ (zc * captions_of[:, None])
            # Xcᵀ(Y - 1 ȳ) = XcᵀY = zcᵀ B, B the per-image sums of the caption bags (sparse)
            bags = torch.sparse_coo_tensor(
                torch.stack([owner[y.indices()[0]], y.indices()[1]]), y.values(),
                (len(features), len(self.words)), check_invariants=True,
            ).coalesce()  # fmt: skip
            self._targets = torch.sparse.mm(bags.t(), zc).T
        self.refit(alpha)

    def refit(self, alpha: float) -> RidgeBaseline:
        """Solve for the ridge weight ``alpha`` (> 0); returns self."""
        if not alpha > 0:
            raise ValueError(f"jwae_ext: alpha must be > 0, got {alpha}")
        gram = self._gram + alpha * torch.eye(len(self._gram), dtype=self._gram.dtype)
        solved = torch.linalg.solve(gram, self._targets)
        self.weight = solved if self._xc is None else self._xc.T @ solved
        self.bias = self._y_mean - self._x_mean @ self.weight
        return self

    def _standardize(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.scale

    def image_codes(self, split: CaptionSplit) -> torch.Tensor:
        """Predicted bags of the split's images, l2-normalized."""
        features = torch.tensor(np.asarray(split.images), dtype=torch.float64)
        predicted = self._standardize(features) @ self.weight + self.bias
        return predicted / predicted.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def caption_codes(self, split: CaptionSplit) -> torch.Tensor:
        """Bags of the split's captions, l2-normalized (dense)."""
        return bag_of_words(split.captions, self.words).to_dense()

    def evaluate(self, split: CaptionSplit, caption_codes: torch.Tensor | None = None) -> dict:
        """The retrieval table of ``split`` (``caption_codes``: its :meth:`caption_codes`, when
        already computed)."""
        if caption_codes is None:
            caption_codes = self.caption_codes(split)
        cap_to_img = torch.as_tensor(split.cap_to_img)
        return evaluate(self.image_codes(split), caption_codes, cap_to_img)


def fit_on_dev(
    train: CaptionSplit, dev: CaptionSplit, alphas: Sequence[float] = ALPHAS
) -> tuple[RidgeBaseline, dict]:
    """The ridge model fitted on ``train`` with the weight of the best dev rsum (the first of
    equals), and its dev table with ``alpha`` and every weight's dev rsum (``dev_rsum``)."""
    if not alphas:
        raise ValueError("jwae_ext: alphas must not be empty")
    model = RidgeBaseline(train, alphas[0])
    dev_captions = model.caption_codes(dev)
    tables = {float(a): model.refit(a).evaluate(dev, dev_captions) for a in alphas}
    dev_rsum = {a: table["rsum"] for a, table in tables.items()}
    alpha = max(dev_rsum, key=lambda a: (dev_rsum[a], -list(dev_rsum).index(a)))
    return model.refit(alpha), {**tables[alpha], "alpha": alpha, "dev_rsum": dev_rsum}


def ridge_baseline(
    train: CaptionSplit,
    dev: CaptionSplit,
    test: CaptionSplit,
    alphas: Sequence[float] = ALPHAS,
) -> dict:
    """The test table of the ridge weight with the best dev rsum (:func:`fit_on_dev`), with
    ``alpha`` and every weight's dev rsum (``dev_rsum``)."""
    model, on_dev = fit_on_dev(train, dev, alphas)
    return {**model.evaluate(test), "alpha": on_dev["alpha"], "dev_rsum": on_dev["dev_rsum"]}


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
