"""From a folder of drawn images and captions to a trained model that retrieves above chance:
``extract`` then ``python -m jwae_ext.train --data FOLDER`` (about 40 s on 2 idle cores)."""

import json
import subprocess
import sys
from math import comb

import pytest
from features_testdata import write_collection

from jwae_ext.extract import extract

K = (1, 5, 10)


def chance_rsum(images: int, per_image: int) -> float:
    """Expected rsum of a random ranking: t2i finds its one image among ``images`` in the top K
    with probability K / images; i2t finds one of its ``per_image`` captions among all."""
    captions = images * per_image
    t2i = sum(min(k / images, 1) for k in K)
    i2t = sum(1 - comb(captions - per_image, k) / comb(captions, k) for k in K)
    return 100 * (t2i + i2t)


@pytest.mark.slow
def test_a_model_trained_on_extracted_features_retrieves_above_chance(tmp_path):
    write_collection(tmp_path / "imgs", 120, layout="sidecar", mixed=True)
    summary = extract(tmp_path / "imgs", tmp_path / "precomp", fractions=(0.6, 0.2, 0.2),
                      device="cpu", progress=False)  # fmt: skip
    assert summary.images == {"train": 72, "dev": 24, "test": 24}
    train = [sys.executable, "-m", "jwae_ext.train", "--data", str(tmp_path / "precomp"),
             "--variant", "vse++", "--epochs", "8", "--lr", "1e-3", "--warmup-epochs", "2",
             "--batch-size", "32", "--embed-size", "64", "--img-hidden", "128",
             "--word-dim", "32", "--vocab-threshold", "1", "--device", "cpu", "--no-progress",
             "--run-dir", str(tmp_path / "runs"), "--name", "run"]  # fmt: skip
    proc = subprocess.run(train, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    test = json.loads((tmp_path / "runs" / "run" / "test.json").read_text())
    chance = chance_rsum(24, 5)  # about 126
    assert test["rsum"] > 2 * chance, test
    assert test["i2t"]["r1"] > 3 * 100 * 5 / 120 and test["t2i"]["r1"] > 3 * 100 / 24, test
