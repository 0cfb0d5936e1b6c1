"""A folder of photos -> features -> a tiny trained run -> an index of the image files, queried
by text and by image, with the real default backbone (EfficientNet-Lite0 from its wheel)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from features_testdata import write_collection
from PIL import Image
from test_search_topk import brute_force
from test_train import tiny_trainer

from jwae_ext import ops
from jwae_ext.checkpoint import load_model
from jwae_ext.encoding import word_codes
from jwae_ext.extract import extract, load_backbone
from jwae_ext.search import Index, QueryError, build_index


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """24 captioned drawings (TSV captions), their features, a tiny run trained on them, and an
    index of the image files (one of them not an image)."""
    root = tmp_path_factory.mktemp("photos")
    _, captions = write_collection(root / "imgs", 24, layout="tsv")
    net = load_backbone(device="cpu")
    extract(root / "imgs", root / "precomp", captions=captions, fractions=(0.5, 0.25, 0.25),
            backbone=net, progress=False)  # fmt: skip
    trainer = tiny_trainer(root / "runs", data=str(root / "precomp"), train_images=12,
                           eval_images=6, epochs=1, name="run", vocab_threshold=1)  # fmt: skip
    trainer.fit()
    (root / "imgs" / "zz_not_an_image.png").write_text("not an image")
    index = build_index(root / "runs" / "run", root / "index", images=root / "imgs",
                        captions=captions, batch_size=5)  # fmt: skip
    return root, captions, index


def test_the_folder_is_indexed_through_the_runs_extraction(photos):
    root, _, summary = photos
    assert summary.images == 24 and summary.captions == 24 * 5
    assert len(summary.skipped) == 1 and summary.skipped[0].startswith("zz_not_an_image.png (")
    index = Index.open(root / "index")
    assert index.info["backbone"] == "efficientnet-lite0" and index.info["images"] == 24
    # The test split's features, indexed from the precomp folder, give the same codes.
    from_features = build_index(
        root / "runs" / "run", root / "features", data=f"{root / 'precomp'}:test"
    )
    names = (root / "precomp" / "test_ids.txt").read_text().splitlines()
    everything = [
        json.loads(line) for line in (root / "index" / "items.txt").read_text().splitlines()
    ]
    rows = [everything.index(name) for name in names]
    np.testing.assert_allclose(
        np.load(root / "index" / "codes.npy")[rows], np.load(from_features.out / "codes.npy"),
        atol=1e-5,
    )  # fmt: skip


def test_an_image_query_finds_the_image_itself(photos):
    root, _, _ = photos
    index = Index.open(root / "index")
    for image_id in (0, 7, 23):
        path = index.image_path(image_id)
        assert path == root / "imgs" / f"img{image_id:03d}.png" and path.is_file()
        by_file = index.search_image([path], k=3)[0]
        with Image.open(path) as opened:
            by_pil = index.search_image([opened], k=3)[0]
        assert by_file == by_pil
        assert by_file[0].id == image_id and by_file[0].path == str(path)
        assert by_file[0].score == pytest.approx(1.0, abs=1e-5)
        assert index.search_item([image_id], k=3)[0][0].id == image_id


def test_text_and_caption_queries_return_files(photos):
    root, _, _ = photos
    index = Index.open(root / "index")
    result = index.search_text(["a big red circle in the centre"], k=5)[0]
    assert len(result.hits) == 5 and all(root.as_posix() in h.path for h in result.hits)
    hits = index.search_image([index.image_path(4)], k=3, target="captions")[0]
    assert all(h.caption and h.path == str(index.image_path(h.id)) for h in hits)


def test_unreadable_query_images_and_other_features_are_refused(photos, tmp_path):
    root, _, _ = photos
    index = Index.open(root / "index")
    with pytest.raises(QueryError, match=re.escape("zz_not_an_image.png: unreadable")):
        index.search_image([root / "imgs" / "zz_not_an_image.png"])
    # Training features extracted otherwise than the folder's (another backbone recorded).
    other = tmp_path / "precomp"
    shutil.copytree(root / "precomp", other)
    manifest = json.loads((other / "extract.json").read_text())
    (other / "extract.json").write_text(
        json.dumps({**manifest, "backbone": "torchvision:resnet50"})
    )
    with pytest.raises(
        ValueError, match=r"extracted with backbone torchvision:resnet50.*but the run"
    ):
        build_index(root / "runs" / "run", tmp_path / "i", data=f"{other}:test")
    # A run whose training folder records no extraction cannot index files.
    (root / "precomp" / "extract.json").rename(tmp_path / "extract.json")
    try:
        with pytest.raises(ValueError, match=r"--images: the run .* have no extract.json"):
            build_index(root / "runs" / "run", tmp_path / "j", images=root / "imgs")
    finally:
        (tmp_path / "extract.json").rename(root / "precomp" / "extract.json")


def test_a_scan_run_indexes_the_folder_by_the_runs_grid_regions(tmp_path):
    """SCAN from image files: each file through the run's grid extraction, region by region, the
    same codes as its extracted features give; a text query ranks the folder as the
    cross-attention scores of those codes do."""
    _, captions = write_collection(tmp_path / "imgs", 16, layout="tsv")
    extract(tmp_path / "imgs", tmp_path / "grid", captions=captions, regions="grid",
            fractions=(0.5, 0.25, 0.25), backbone=load_backbone(device="cpu"),
            progress=False)  # fmt: skip
    trainer = tiny_trainer(tmp_path / "runs", data=str(tmp_path / "grid"), variant="scan",
                           train_images=8, eval_images=4, epochs=1, name="scan",
                           vocab_threshold=1)  # fmt: skip
    trainer.fit()
    run = tmp_path / "runs" / "scan"
    summary = build_index(run, tmp_path / "index", images=tmp_path / "imgs", captions=captions,
                          batch_size=5)  # fmt: skip
    index = Index.open(tmp_path / "index")
    regions = json.loads((tmp_path / "grid" / "extract.json").read_text())["feature_shape"][0]
    assert summary.images == 16 and summary.captions == 16 * 5
    assert index.info["kind"] == "scan" and index.info["regions"] == regions
    codes = np.load(tmp_path / "index" / "codes.npy")
    assert codes.shape == (16, regions, 16)
    from_features = build_index(run, tmp_path / "features", data=f"{tmp_path / 'grid'}:test")
    names = (tmp_path / "grid" / "test_ids.txt").read_text().splitlines()
    items = [
        json.loads(line) for line in (tmp_path / "index" / "items.txt").read_text().splitlines()
    ]
    rows = [items.index(name) for name in names]
    np.testing.assert_allclose(codes[rows], np.load(from_features.out / "codes.npy"), atol=1e-5)

    loaded = load_model(run)
    queries = ["a big red circle in the centre", "two small blue squares"]
    words, lengths = word_codes(loaded.model, loaded.vocab, queries)
    scores = ops.xattn_scores(torch.from_numpy(codes), words, lengths,
                              **loaded.model.xattn.options()).T  # fmt: skip
    want_scores, want_ids = brute_force(scores, 16)
    results = index.search_text(queries, k=16)
    assert [[h.id for h in r.hits] for r in results] == want_ids.tolist()
    assert torch.equal(torch.tensor([[h.score for h in r.hits] for r in results]), want_scores)
    assert results[0].hits[0].path == str(tmp_path / "imgs" / items[want_ids[0, 0]])
