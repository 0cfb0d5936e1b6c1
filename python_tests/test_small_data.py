"""The small-data preset: a precomp folder with fewer than SMALL_DATA_PAIRS training pairs trains
with a smaller model, smaller batches and a schedule counted in samples seen, not COCO's recipe."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from jwae_ext.config import (
    SMALL_DATA_MIN_EPOCHS,
    SMALL_DATA_PAIRS,
    SMALL_DATA_SAMPLES,
    TrainConfig,
    data_kind,
    resolve,
    training_pairs,
)
from jwae_ext.data import export_precomp
from jwae_ext.data.precomp import write_precomp


def _folder(tmp_path, images: int, per_image: int, name: str = "f"):
    folder = tmp_path / name
    captions = [f"a caption {i}" for i in range(images * per_image)]
    write_precomp(folder, "train", np.zeros((images, 4), np.float32), captions)
    return folder


@pytest.mark.parametrize(("images", "per_image"), [(341, 1), (200, 5), (1999, 5)])
def test_a_small_folder_gets_the_small_preset(tmp_path, images, per_image):
    folder = _folder(tmp_path, images, per_image)
    pairs = images * per_image
    assert training_pairs(str(folder)) == pairs and data_kind(str(folder)) == "small"
    cfg = resolve(TrainConfig(data=str(folder)))
    epochs = max(SMALL_DATA_MIN_EPOCHS, math.ceil(SMALL_DATA_SAMPLES / pairs))
    assert (cfg.epochs, cfg.lr_update, cfg.warmup_epochs) == (
        epochs,
        math.ceil(2 * epochs / 3),
        epochs // 2,
    )
    assert (cfg.batch_size, cfg.lr, cfg.embed_size, cfg.img_hidden) == (32, 1e-3, 256, 0)
    assert cfg.epochs * pairs >= SMALL_DATA_SAMPLES


def test_explicit_flags_win_and_train_images_counts(tmp_path):
    folder = str(_folder(tmp_path, 341, 1))
    cfg = resolve(TrainConfig(data=folder, epochs=7, batch_size=64, embed_size=128))
    assert (cfg.epochs, cfg.batch_size, cfg.embed_size, cfg.lr) == (7, 64, 128, 1e-3)
    assert training_pairs(folder, train_images=100) == 100
    assert resolve(TrainConfig(data=folder, train_images=100)).epochs == 140


def test_a_large_folder_keeps_the_published_recipe(tmp_path):
    folder = str(_folder(tmp_path, SMALL_DATA_PAIRS // 5, 5))
    assert training_pairs(folder) == SMALL_DATA_PAIRS and data_kind(folder) == "precomp"
    cfg = resolve(TrainConfig(data=folder))
    assert (cfg.epochs, cfg.batch_size, cfg.embed_size, cfg.warmup_epochs) == (30, 128, 1024, 0)
    # Limited to its first images it is small again.
    assert data_kind(folder, train_images=100) == "small"


def test_unreadable_folders_are_left_to_the_loader(tmp_path):
    assert training_pairs(str(tmp_path / "missing")) is None
    assert data_kind(str(tmp_path / "missing")) == "precomp"
    folder = _folder(tmp_path, 10, 1)
    (folder / "train_caps.txt").write_text("one\ntwo\nthree\n")  # 3 captions for 10 images
    assert training_pairs(str(folder)) is None


def test_caption_lines_are_counted_with_every_line_end(tmp_path):
    folder = _folder(tmp_path, 3, 2)
    for text in ("a\r\nb\r\nc\r\nd\r\ne\r\nf\r\n", "a\rb\rc\rd\re\rf", "a\nb\nc\nd\ne\nf"):
        (folder / "train_caps.txt").write_bytes(text.encode())
        assert training_pairs(str(folder)) == 6


def test_training_on_a_small_folder_says_so_and_warns_nothing(tmp_path):
    folder = export_precomp(tmp_path / "small", sizes={"train": 30, "dev": 8, "test": 8})
    args = ["--data", str(folder), "--epochs", "2", "--embed-size", "16", "--word-dim", "8"]
    proc = subprocess.run(
        [sys.executable, "-m", "jwae_ext.train", "--run-dir", str(tmp_path), "--name", "r",
         "--no-progress", *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "150 training pairs (under 10000: the small-data preset)" in proc.stdout
    # Memory-mapped features are copied before they become tensors: no read-only warning.
    assert "Warning" not in proc.stderr, proc.stderr
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    # 150 pairs: 94 epochs make 14000 samples, half of them warm-up.
    assert (config["batch_size"], config["img_hidden"], config["warmup_epochs"]) == (32, 0, 47)
