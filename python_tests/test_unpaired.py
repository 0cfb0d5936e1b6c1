"""Unpaired images and captions (--unpaired-images, --unpaired-captions): sources, batches, and
their place in a training step (the jWAE terms only)."""

import json
import re

import numpy as np
import pytest
import torch
from test_train import tiny_trainer, train

from jwae_ext.config import TrainConfig, resolve
from jwae_ext.data import PairDataset, collate, export_precomp
from jwae_ext.data.unpaired import UnpairedData, load_unpaired_images, unpaired_batch
from jwae_ext.train import Trainer


def test_batches_cover_every_item_once_per_pass_and_wrap():
    first_pass = [i for n in range(3) for i in unpaired_batch(12, 4, seed=0, number=n)]
    assert sorted(first_pass) == list(range(12))
    # Batch 2 of 4 out of 10 ends pass 0 (its last two items) and starts pass 1.
    batches = [unpaired_batch(10, 4, seed=0, number=n) for n in range(3)]
    assert sorted(batches[0] + batches[1] + batches[2][:2]) == list(range(10))
    assert len(set(batches[2][2:])) == 2
    assert unpaired_batch(12, 4, seed=0, number=5) == unpaired_batch(12, 4, seed=0, number=5)
    assert unpaired_batch(12, 4, seed=0, number=3) != unpaired_batch(12, 4, seed=1, number=3)


@pytest.mark.parametrize(("ratio", "counts"), [(1.0, [1, 1, 1, 1]), (0.5, [0, 1, 0, 1])])
def test_ratio_sets_the_unpaired_batches_per_step(ratio, counts):
    data = UnpairedData(np.zeros((5, 3), np.float32), [[1, 4, 2]] * 7, 2, ratio, seed=0)
    assert [len(data.batches_at(step)) for step in range(4)] == counts
    images, tokens, lengths = data.batches_at(1)[0]
    assert images.shape == (2, 3) and tokens.shape == (2, 3) and lengths.tolist() == [3, 3]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/nonexistent/thing", "--unpaired-images: '/nonexistent/thing' is neither an embedded"),
        ("FILE", "is a file; images come from an embedded dataset or a precomp folder"),
        ("FOLDER:nosuchsplit", "no split 'nosuchsplit'"),
        ("FOLDER", "--unpaired-images FOLDER: 1024-dimensional image features, but the paired"),
    ],
)
def test_bad_image_sources_name_the_argument(tmp_path, source, message):
    folder = export_precomp(tmp_path / "p", "b", sizes={"train": 4})
    (tmp_path / "caps.txt").write_text("a red circle\n")
    source = source.replace("FOLDER", str(folder)).replace("FILE", str(tmp_path / "caps.txt"))
    message = message.replace("FOLDER", str(folder))
    with pytest.raises(ValueError, match=re.escape(message)):
        load_unpaired_images(
            source, seed=0, regions=False, feature_dim=7, argument="--unpaired-images"
        )


def test_a_variant_without_jwae_terms_is_refused():
    with pytest.raises(ValueError, match="--unpaired-captions feeds only the jWAE terms"):
        resolve(TrainConfig(variant="vse++", unpaired_captions="synthetic-b"))
    with pytest.raises(ValueError, match="--unpaired-ratio must be > 0"):
        resolve(TrainConfig(unpaired_images="synthetic-b", unpaired_ratio=0.0))


def _trainer(tmp_path, name: str, **unpaired) -> Trainer:
    return tiny_trainer(tmp_path, name=name, **unpaired)


def test_unpaired_batches_add_jwae_terms_and_leave_the_pair_loss_alone(tmp_path):
    plain = _trainer(tmp_path, "plain")
    mixed = _trainer(tmp_path, "mixed", unpaired_images="synthetic-b")
    batch = collate([plain.dataset[j] for j in range(8)])
    plain_terms, mixed_terms = plain.train_step(batch), mixed.train_step(batch)
    assert mixed_terms["match"] == plain_terms["match"]
    assert {"unpaired_recon", "unpaired_nll", "unpaired_adv_img"} <= set(mixed_terms)
    assert not any(name.startswith("unpaired") for name in plain_terms)
    assert mixed_terms["total"] > plain_terms["total"]


def test_unpaired_captions_join_the_vocabulary(tmp_path):
    caption_file = tmp_path / "captions.txt"
    caption_file.write_text("a zebra stripe figure\n" * 4)
    trainer = _trainer(tmp_path, "zebra", unpaired_captions=str(caption_file))
    assert "zebra" in trainer.vocab.word2idx


def test_unpaired_images_change_training(tmp_path):
    runs = [
        _trainer(tmp_path, "a"),
        _trainer(tmp_path, "b", unpaired_images="synthetic-b"),
    ]
    batch = collate([PairDataset(runs[0].train_split, runs[0].vocab)[j] for j in range(8)])
    for trainer in runs:
        trainer.train_step(batch)
        trainer.global_step += 1
    after = [trainer.train_step(batch)["match"] for trainer in runs]
    assert after[0] != after[1]


def test_resume_with_unpaired_data_continues_exactly(tmp_path):
    flags = ["--unpaired-images", "synthetic-b", "--unpaired-captions", "synthetic-b"]
    flags += ["--unpaired-ratio", "0.5"]
    train(tmp_path, "--epochs", "2", "--name", "straight", *flags)
    train(tmp_path, "--epochs", "1", "--name", "resumed", *flags)
    train(tmp_path, "--resume", "--epochs", "2", "--name", "resumed")
    straight, resumed = (
        torch.load(tmp_path / n / "last.pt", weights_only=True)["model"]
        for n in ("straight", "resumed")
    )
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    records = [
        [
            json.loads(line)["train"]
            for line in (tmp_path / n / "metrics.jsonl").read_text().splitlines()
        ]
        for n in ("straight", "resumed")
    ]
    assert records[0] == records[1]
    assert "unpaired_recon" in records[0][0]


def test_bad_unpaired_source_fails_with_a_message(tmp_path):
    proc = train(tmp_path, "--unpaired-captions", "/nonexistent.txt", check=False)
    assert proc.returncode == 2
    assert "--unpaired-captions: '/nonexistent.txt' is neither an embedded dataset" in proc.stderr
    assert "Traceback" not in proc.stderr
