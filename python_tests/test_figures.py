"""Figures: written, non-empty, of the announced pixel size, drawing what they should."""

import json

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from jwae_ext import figures
from jwae_ext.data import SceneAttributes, load_precomp, synthetic_split, write_precomp


def read_png(path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0
    return imread(path)


def assert_drawn(pixels: np.ndarray, size: tuple[int, int]) -> None:
    assert pixels.shape[:2] == size
    assert pixels[..., :3].std() > 0.01  # not a blank canvas


def test_pca_recovers_a_plane_and_is_deterministic():
    gen = torch.Generator().manual_seed(0)
    plane = torch.randn(40, 2, generator=gen, dtype=torch.float64) * torch.tensor([3.0, 1.0])
    basis, _ = torch.linalg.qr(torch.randn(6, 2, generator=gen, dtype=torch.float64))
    points = plane @ basis.T + 5.0
    coords = torch.from_numpy(figures.pca_2d(points))
    # A rotation of the plane: all pairwise distances are kept.
    exact = "donot_use_mm_for_euclid_dist"
    assert torch.allclose(
        torch.cdist(coords, coords, compute_mode=exact),
        torch.cdist(plane, plane, compute_mode=exact),
        atol=1e-9,
    )
    perm = torch.randperm(40, generator=gen)
    assert np.allclose(figures.pca_2d(points[perm]), figures.pca_2d(points)[perm.numpy()])


@pytest.mark.parametrize("with_classes", [True, False])
def test_latent_space_side_by_side(tmp_path, with_classes):
    gen = torch.Generator().manual_seed(0)
    n = 30
    classes = np.arange(n) % 6 if with_classes else None
    panels = [
        figures.LatentPanel(
            f"model {i}", torch.randn(n, 8, generator=gen), torch.randn(2 * n, 8, generator=gen),
            np.arange(2 * n) // 2, classes,
        )
        for i in range(2)
    ]  # fmt: skip
    names = SceneAttributes.class_names("shape") if with_classes else None
    path = figures.latent_space(tmp_path / "latent.png", panels, names)
    assert_drawn(read_png(path), figures.latent_space_size(2))


GREEN = np.array([0x1A, 0x96, 0x41]) / 255


def green_pixels(pixels: np.ndarray) -> int:
    return int((np.abs(pixels[..., :3] - GREEN).max(axis=-1) < 0.02).sum())


def test_retrieval_examples_mark_the_ground_truth(tmp_path):
    split = synthetic_split("a", "test", num_images=8)
    img = torch.eye(8)
    caps = img[torch.as_tensor(split.cap_to_img)]
    good = figures.retrieval_examples(tmp_path, img, caps, split, queries=3, prefix="good-")
    # Captions pointing away from their image: the ground truth is ranked last, never shown.
    bad = figures.retrieval_examples(tmp_path, img, -caps, split, queries=3, prefix="bad-")
    size = figures.retrieval_size(3)
    for path in (*good, *bad):
        assert_drawn(read_png(path), size)
    assert [p.name for p in good] == ["good-retrieval-t2i.png", "good-retrieval-i2t.png"]
    assert green_pixels(read_png(good[0])) > 300  # three green frames
    assert green_pixels(read_png(good[1])) > 100  # own captions in green
    assert green_pixels(read_png(bad[0])) < 20
    assert green_pixels(read_png(bad[1])) < 20


def test_retrieval_examples_need_renderable_images(tmp_path):
    write_precomp(tmp_path, "test", np.ones((2, 3), np.float32), ["a b", "c d"])
    split = load_precomp(tmp_path, "test")
    with pytest.raises(ValueError, match="cannot be rendered"):
        figures.retrieval_examples(tmp_path, torch.eye(2), torch.eye(2), split)


def metrics_line(epoch: int, terms: dict, best: bool) -> str:
    dev = {"i2t": {"r1": 10.0 * epoch}, "t2i": {"r1": 5.0 * epoch}, "rsum": 50.0 * epoch}
    return json.dumps({"epoch": epoch, "train": terms, "dev": dev, "best": best})


def test_training_curves_one_panel_per_term(tmp_path):
    terms = {"match": 1.0, "recon": 2.0, "nll": 3.0, "adv_img": 0.7, "adv_txt": 0.7, "disc": 1.3}
    lines = [metrics_line(e, {**terms, "total": 9.0 / e}, True) for e in (1, 2, 3)]
    lines.insert(1, metrics_line(2, {"total": 100.0}, False))  # superseded by the next line
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    records = figures.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[1]["train"]["match"] == 1.0
    # 7 loss terms + R@1 + rsum = 9 panels: 3 rows of 4.
    size = figures.training_curves_size(tmp_path / "metrics.jsonl")
    assert size == (round((3 * 2.5 + 0.5) * figures.DPI), 4 * 320)
    path = figures.training_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert_drawn(read_png(path), size)


def test_training_curves_reject_a_corrupt_log(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(metrics_line(1, {"total": 1.0}, True) + "\n{oops\n")
    with pytest.raises(ValueError, match="line 2"):
        figures.training_curves(tmp_path / "metrics.jsonl", tmp_path / "c.png")


def test_tsne_keeps_neighbourhoods_and_is_seeded():
    pytest.importorskip("sklearn")
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 12, generator=gen) * 5
    labels = torch.arange(90) % 3
    points = centres[labels] + torch.randn(90, 12, generator=gen) * 0.3
    coords = figures.tsne_2d(points)
    assert coords.shape == (90, 2)
    nearest = torch.cdist(torch.from_numpy(coords), torch.from_numpy(coords))
    nearest.fill_diagonal_(np.inf)
    assert torch.equal(labels[nearest.argmin(dim=1)], labels)  # each point's neighbour: its cluster
    assert np.array_equal(figures.tsne_2d(points), coords)


def test_image_tsne_side_by_side(tmp_path):
    pytest.importorskip("sklearn")
    split = synthetic_split("a", "dev", num_images=40)
    gen = torch.Generator().manual_seed(0)
    panels = [
        figures.ImageCodesPanel("features", torch.as_tensor(split.images), split.attributes),
        figures.ImageCodesPanel("random", torch.randn(40, 8, generator=gen), split.attributes),
    ]
    path = figures.image_tsne(tmp_path / "tsne.png", panels)
    assert_drawn(read_png(path), figures.image_tsne_size(2))
    with pytest.raises(ValueError, match="at least one panel"):
        figures.image_tsne(tmp_path / "none.png", [])
