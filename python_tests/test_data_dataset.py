"""CaptionSplit validation, PairDataset items, collate padding, DataLoader use."""

import numpy as np
import pytest
import torch

from jwae_ext.data import (
    END_ID,
    PAD_ID,
    START_ID,
    UNK_ID,
    CaptionSplit,
    PairDataset,
    Vocabulary,
    collate,
    load_precomp,
    pad_captions,
    synthetic_split,
    write_precomp,
)


def _split(**changes):
    fields = {
        "name": "toy",
        "images": np.arange(6, dtype=np.float32).reshape(3, 2),
        "captions": ["a dog", "a red dog runs", "a cat", "the cat"],
        "cap_to_img": np.array([0, 0, 1, 2], dtype=np.int64),
    }
    fields.update(changes)
    return CaptionSplit(**fields)


def test_items_and_collate():
    split = _split()
    vocab = Vocabulary(["a", "dog", "cat"])
    data = PairDataset(split, vocab)
    assert len(data) == 4
    features, tokens, image, caption = data[1]
    assert features.dtype == torch.float32 and features.tolist() == [0.0, 1.0]
    assert tokens.tolist() == [START_ID, 4, UNK_ID, 5, UNK_ID, END_ID]  # "red", "runs" unknown
    assert (image, caption) == (0, 1)
    assert data[-1][3] == 3
    with pytest.raises(IndexError, match="caption index 4 out of range"):
        data[4]
    batch = collate([data[3], data[1], data[2]])
    assert batch.images.shape == (3, 2) and batch.images[0].tolist() == [4.0, 5.0]
    assert batch.lengths.tolist() == [4, 6, 4]
    assert batch.captions.shape == (3, 6) and batch.captions.dtype == torch.int64
    assert batch.captions[0].tolist() == [START_ID, UNK_ID, 6, END_ID, PAD_ID, PAD_ID]
    assert batch.image_ids.tolist() == [2, 0, 1] and batch.caption_ids.tolist() == [3, 1, 2]


def test_pad_captions():
    padded, lengths = pad_captions([[1, 5, 2], torch.tensor([1, 2])])
    assert padded.tolist() == [[1, 5, 2], [1, 2, PAD_ID]] and lengths.tolist() == [3, 2]
    with pytest.raises(ValueError, match="empty list"):
        pad_captions([])


def test_dataloader_over_synthetic_and_region_precomp(tmp_path):
    train = synthetic_split("a", "train", num_images=20)
    vocab = Vocabulary.build(train.captions, threshold=1)
    loader = torch.utils.data.DataLoader(
        PairDataset(train, vocab), batch_size=16, shuffle=True, collate_fn=collate
    )
    seen = torch.cat([batch.caption_ids for batch in loader])
    assert sorted(seen.tolist()) == list(range(100))
    batch = next(iter(loader))
    assert torch.equal(batch.images, torch.from_numpy(train.images[batch.image_ids.numpy()]))
    assert (batch.image_ids == batch.caption_ids // 5).all()
    # Region features through the same path: pooled per item.
    regions = np.random.default_rng(0).random((4, 3, 5)).astype(np.float32)
    write_precomp(tmp_path, "train", regions, [f"a dog {j}" for j in range(8)])
    data = PairDataset(load_precomp(tmp_path, "train"), vocab)
    features, _, image, _ = data[5]
    assert image == 2
    assert torch.allclose(features, torch.from_numpy(regions[2].mean(0)))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"images": np.zeros((3,), np.float32)}, "non-empty \\(N, D\\) array"),
        ({"cap_to_img": np.array([0, 0, 1, 2], np.int32)}, "cap_to_img must be int64"),
        ({"cap_to_img": np.array([0, 0, 1], np.int64)}, "of shape \\(4,\\)"),
        ({"cap_to_img": np.array([0, 0, 1, 3], np.int64)}, "ids outside \\[0, 3\\)"),
        ({"cap_to_img": np.array([0, 0, 1, 1], np.int64)}, "1 images have no caption"),
    ],
)
def test_split_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        _split(**changes)


def test_captions_per_image_is_none_when_irregular():
    assert _split().captions_per_image is None
    assert _split(cap_to_img=np.array([0, 1, 2, 0], np.int64)).captions_per_image is None
