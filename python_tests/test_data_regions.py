"""Region features (SCAN's input): the embedded dataset's 9 scene cells, precomp (N, R, D) files,
and the pair dataset's region mode."""

import numpy as np
import pytest
import torch

from jwae_ext.data import (
    CaptionSplit,
    PairDataset,
    Vocabulary,
    collate,
    export_precomp,
    load_split,
    synthetic_split,
    write_precomp,
)
from jwae_ext.data.features import NUM_REGIONS, REGION_DIM, extract_features


def test_embedded_regions_shape_and_determinism():
    a = synthetic_split("b", "dev", seed=3, num_images=7)
    b = synthetic_split("b", "dev", seed=3, num_images=7)
    assert a.regions.shape == (7, NUM_REGIONS, REGION_DIM) == (7, 9, 256)
    assert a.regions.dtype == np.float32
    assert np.array_equal(a.regions, b.regions)
    assert (a.regions >= 0).all()


def test_regions_partition_the_pooled_features():
    """Both are square roots of sums over a partition of one feature map, so their squares add
    up to the same total per image (a check that regions cover the whole map once)."""
    split = synthetic_split("a", "test", num_images=20)
    region_energy = (split.regions.astype(np.float64) ** 2).sum(axis=(1, 2))
    pooled_energy = (np.asarray(split.images, dtype=np.float64) ** 2).sum(axis=1)
    np.testing.assert_allclose(region_energy, pooled_energy, rtol=1e-5)


def test_pooled_features_unchanged_by_region_extraction():
    pixels = np.stack([synthetic_split("a", "dev", num_images=3).render(i) for i in range(3)])
    pooled, _ = extract_features(pixels, regions=True)
    assert np.array_equal(pooled, extract_features(pixels))


@pytest.mark.parametrize("style", ["a", "b"])
def test_a_lone_object_stands_out_in_its_own_region(style):
    """Regions are localized: in scenes of one object, the region farthest from the median of
    the regions is the object's cell (all 131 such scenes of style a, 126 of 128 in style b, in
    the first 300 training images; the busy texture of b hides a few small objects)."""
    split = synthetic_split(style, "train", num_images=300)
    single = np.flatnonzero(split.attributes.num_objects == 1)
    cells = split.attributes.position[single, 0].astype(np.int64)
    regions = split.regions[single].astype(np.float64)
    distance = np.linalg.norm(regions - np.median(regions, axis=1, keepdims=True), axis=2)
    assert (distance.argmax(axis=1) == cells).mean() >= 0.95


def test_precomp_region_round_trip(tmp_path):
    folder = export_precomp(tmp_path / "p", "a", sizes={"train": 4, "test": 3}, regions=True)
    split = load_split(folder, "test")
    source = synthetic_split("a", "test", num_images=3)
    assert np.array_equal(np.asarray(split.regions), source.regions)
    expected = source.regions.mean(axis=1, dtype=np.float64).astype(np.float32)
    assert np.array_equal(np.asarray(split.images), expected)
    limited = load_split(folder, "test", num_images=2)
    assert limited.regions.shape == (2, 9, 256)


def test_pooled_precomp_has_no_regions(tmp_path):
    write_precomp(tmp_path, "train", np.ones((2, 5), np.float32), ["a b", "c d"])
    split = load_split(tmp_path, "train")
    assert split.regions is None
    with pytest.raises(ValueError, match=r"no region features.*\(N, R, D\)"):
        split.require_regions()
    vocab = Vocabulary.build(split.captions, threshold=1)
    with pytest.raises(ValueError, match="no region features"):
        PairDataset(split, vocab, regions=True)


def test_pair_dataset_yields_regions():
    split = synthetic_split("a", "dev", num_images=4)
    vocab = Vocabulary.build(split.captions, threshold=1)
    batch = collate([PairDataset(split, vocab, regions=True)[j] for j in (0, 7, 19)])
    assert batch.images.shape == (3, 9, 256)
    assert torch.equal(batch.images[1], torch.from_numpy(split.regions[1]))


def test_bad_region_shape_is_refused():
    split = synthetic_split("a", "dev", num_images=2)
    with pytest.raises(ValueError, match=r"region features must be a non-empty \(2, R, D\)"):
        CaptionSplit(
            split.name,
            split.images,
            split.captions,
            split.cap_to_img,
            regions=np.ones((3, 9, 4), np.float32),
        )
