"""Extraction with the real default backbone (EfficientNet-Lite0 from its wheel) into precomp
folders: the loader reads them, shapes, skipped files named, resume, checksum, CLI + one epoch."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from features_testdata import Scene, draw, scenes, truncated_copy, write_collection

from jwae_ext.data import load_precomp, write_precomp_splits
from jwae_ext.extract import extract, load_backbone, load_rgb
from jwae_ext.extract.backbones import Backbone
from jwae_ext.extract.partial import WORK_DIR

OUTPUTS = ("train", "dev", "test")


@pytest.fixture(scope="module")
def lite0():
    return load_backbone(device="cpu")


def run(net, images, out, captions=None, **kwargs):
    return extract(images, out, captions=captions, backbone=net, progress=False, **kwargs)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """12 captioned images of mixed sizes and formats (TSV captions), one of them truncated, one
    a text file, plus one image without captions."""
    root = tmp_path_factory.mktemp("collection")
    names, captions = write_collection(root / "imgs", 12, layout="tsv", mixed=True)
    truncated_copy(root / "imgs" / names[1], root / "imgs" / names[1])  # a JPEG
    (root / "imgs" / names[4]).write_text("not an image")
    draw(Scene("circle", "red", 4, True)).save(root / "imgs" / "uncaptioned.png")
    return root, names, captions


@pytest.fixture(scope="module")
def pooled(lite0, collection, tmp_path_factory):
    root, _, captions = collection
    out = tmp_path_factory.mktemp("pooled")
    return out, run(lite0, root / "imgs", out, captions, batch_size=4)


def test_output_loads_with_the_precomp_loader_and_names_each_row(collection, pooled):
    _, names, _ = collection
    out, summary = pooled
    texts = {n: s.captions() for n, s in zip(names, scenes(12), strict=True)}
    kept = []
    for split in OUTPUTS:
        data = load_precomp(out, split)
        ids = (out / f"{split}_ids.txt").read_text().splitlines()
        assert data.images.shape == (len(ids), 1280) and data.captions_per_image == 5
        assert np.isfinite(np.asarray(data.images)).all()
        for row, name in enumerate(ids):
            assert data.captions[5 * row : 5 * row + 5] == texts[name]
        kept += ids
    assert sorted(kept) == sorted(set(names) - {names[1], names[4]})
    assert summary.images == {
        s: len((out / f"{s}_ids.txt").read_text().splitlines()) for s in OUTPUTS
    }
    assert summary.feature_shape == (1280,) and summary.captions_per_image == 5
    assert not (out / WORK_DIR).exists()


def test_skipped_files_are_reported_with_their_names(collection, pooled):
    _, names, _ = collection
    out, summary = pooled
    report = "\n".join(summary.report)
    assert "2 unreadable image files (skipped)" in report
    assert f"{names[1]} (" in report and f"{names[4]} (" in report
    assert "1 images without captions (skipped) (first: uncaptioned.png)" in report
    manifest = json.loads((out / "extract.json").read_text())
    assert manifest["skipped"]["unreadable image files (skipped)"]["count"] == 2
    assert manifest["backbone"] == "efficientnet-lite0" and manifest["feature_shape"] == [1280]


def test_grid_regions_are_49_by_1280_and_pool_to_the_pooled_features(
    lite0, collection, pooled, tmp_path
):
    root, _, captions = collection
    summary = run(lite0, root / "imgs", tmp_path, captions, regions="grid", batch_size=16)
    assert summary.feature_shape == (49, 1280)
    for split in OUTPUTS:
        regions = np.load(tmp_path / f"{split}_ims.npy", mmap_mode="r")
        assert regions.shape == (summary.images[split], 49, 1280)
        # The loader mean-pools region rows: the same features as --regions pooled.
        grid = np.asarray(load_precomp(tmp_path, split).images)
        np.testing.assert_allclose(grid, np.load(pooled[0] / f"{split}_ims.npy"), atol=2e-5)


def test_an_interrupted_extraction_resumes_to_the_same_files(
    lite0, collection, tmp_path, monkeypatch
):
    root, _, captions = collection
    run(lite0, root / "imgs", tmp_path / "straight", captions, batch_size=3)

    real = Backbone.features
    calls = []

    def interrupted(self, pixels, regions):
        calls.append(len(pixels))
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the third batch
        return real(self, pixels, regions)

    monkeypatch.setattr(Backbone, "features", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(lite0, root / "imgs", tmp_path / "resumed", captions, batch_size=3)
    monkeypatch.setattr(Backbone, "features", real)
    assert (tmp_path / "resumed" / WORK_DIR).is_dir()
    assert not list((tmp_path / "resumed").glob("*_ims.npy"))
    summary = run(lite0, root / "imgs", tmp_path / "resumed", captions, batch_size=3)
    assert summary.resumed == 6  # two batches of three were kept
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == sorted(
        p.name for p in (tmp_path / "straight").iterdir()
    )
    for path in (tmp_path / "straight").iterdir():
        assert path.read_bytes() == (tmp_path / "resumed" / path.name).read_bytes(), path.name


def test_decoding_workers_give_the_same_files(lite0, collection, pooled, tmp_path):
    root, _, captions = collection
    run(lite0, root / "imgs", tmp_path, captions, batch_size=4, workers=1)
    for path in pooled[0].iterdir():
        assert path.read_bytes() == (tmp_path / path.name).read_bytes(), path.name


def test_a_finished_extraction_is_not_redone_and_other_settings_need_restart(
    lite0, collection, pooled, tmp_path, monkeypatch
):
    root, _, captions = collection
    out, _ = pooled
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run(lite0, root / "imgs", out, captions, batch_size=4)
    assert again.seconds == 0 and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    shutil.copytree(out, tmp_path / "redo")
    fixed = tmp_path / "fixed.tsv"  # a caption corrected after the extraction finished
    fixed.write_text(captions.read_text().replace("\t", "\tfixed ", 1))
    redone = run(lite0, root / "imgs", tmp_path / "redo", fixed, batch_size=4)
    assert "fixed " in "".join((tmp_path / "redo" / f"{s}_caps.txt").read_text() for s in OUTPUTS)
    assert redone.seconds > 0

    def interrupted(self, pixels, regions):
        raise KeyboardInterrupt

    monkeypatch.setattr(Backbone, "features", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(lite0, root / "imgs", tmp_path, captions)
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"unfinished extraction .* pass --restart"):
        run(lite0, root / "imgs", tmp_path, captions, regions="grid")
    assert run(
        lite0, root / "imgs", tmp_path, captions, regions="grid", restart=True
    ).feature_shape == (
        49,
        1280,
    )


def test_features_of_a_fixed_image_are_stable(lite0, tmp_path):
    """A stored checksum of EfficientNet-Lite0's pooled features of one drawn image; the
    tolerance allows for BLAS and SIMD differences, not for other weights or preprocessing."""
    draw(Scene("star", "orange", 2, True), 160, 120).save(tmp_path / "fixed.png")
    pixels = torch.from_numpy(load_rgb(tmp_path / "fixed.png", 224).copy())[None]
    assert int(pixels.sum()) == 12217090  # the decoding and resizing
    features = lite0.features(pixels, "pooled")[0].double().numpy()
    want = [0.0855615, 0.137828, 0.0625921, 3.65208, 0.0, 0.014164]
    np.testing.assert_allclose(features[[2, 5, 100, 455, 777, 1279]], want, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose([features.sum(), (features**2).sum()], [194.095826, 170.221629],
                               rtol=2e-4)  # fmt: skip
    assert features.argmax() == 455


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_device_cuda_without_a_gpu_is_a_clear_error(collection, tmp_path):
    root, _, captions = collection
    with pytest.raises(ValueError, match="--device cuda: no CUDA device is visible"):
        extract(root / "imgs", tmp_path, captions=captions, device="cuda", progress=False)


@pytest.mark.cuda
def test_cuda_features_match_cpu_features(collection, tmp_path):
    root, _, captions = collection
    for device in ("cpu", "cuda"):
        extract(root / "imgs", tmp_path / device, captions=captions, device=device, progress=False)
    np.testing.assert_allclose(
        np.load(tmp_path / "cuda" / "train_ims.npy"),
        np.load(tmp_path / "cpu" / "train_ims.npy"),
        rtol=1e-3,
        atol=1e-3,
    )


def test_backbone_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--weights .*nothing\.pt: no such file"):
        load_backbone("torchvision:resnet152", tmp_path / "nothing.pt")
    with pytest.raises(ValueError, match="needs --weights FILE"):
        load_backbone("torchvision:resnet152")
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        load_backbone("vgg")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read weights"):
        load_backbone("efficientnet-lite0", tmp_path / "junk.pt")


def test_torchvision_backbone_with_local_weights(tmp_path):
    try:
        import torchvision
    except Exception as err:  # PyPI's torchvision beside another torch fails with RuntimeError
        pytest.skip(f"torchvision is not importable: {type(err).__name__}: {err}")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pt")
    net = load_backbone("torchvision:resnet18", tmp_path / "r18.pt", device="cpu")
    assert net.feature_shape("pooled") == (512,) and net.feature_shape("grid") == (49, 512)


def test_an_unimportable_torchvision_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision raises
    (tmp_path / "w.pt").write_bytes(b"")
    with pytest.raises(ImportError, match="needs an importable torchvision matching this torch"):
        load_backbone("torchvision:resnet152", tmp_path / "w.pt")


def test_extra_files_join_the_writers_transaction(tmp_path):
    features, captions = np.ones((2, 3), np.float32), ["a", "b"]
    write_precomp_splits(tmp_path, {"train": (features, captions)},
                         extra_files={"train_ids.txt": b"x\ny\n"})  # fmt: skip
    assert (tmp_path / "train_ids.txt").read_bytes() == b"x\ny\n"
    for bad in ("../up.txt", "train_ims.npy"):
        with pytest.raises(ValueError, match="extra file"):
            write_precomp_splits(tmp_path / "new", {"train": (features, captions)},
                                 extra_files={bad: b""})  # fmt: skip
        assert not (tmp_path / "new").exists()


def test_cli_extracts_then_trains_one_epoch(tmp_path):
    write_collection(tmp_path / "imgs", 12, layout="sidecar", captions_per_image=1)
    out = tmp_path / "precomp"
    cli = [sys.executable, "-m", "jwae_ext.features", str(tmp_path / "imgs"), "--out", str(out),
           "--splits", "0.5", "0.25", "0.25", "--batch-size", "8", "--device", "cpu",
           "--no-progress"]  # fmt: skip
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "train 6, dev 3, test 3 images, 1 captions each, features 1280" in proc.stdout
    train = [sys.executable, "-m", "jwae_ext.train", "--data", str(out), "--epochs", "1",
             "--run-dir", str(tmp_path / "runs"), "--name", "r", "--batch-size", "4",
             "--embed-size", "16", "--img-hidden", "16", "--word-dim", "8",
             "--vocab-threshold", "1", "--device", "cpu", "--no-progress"]  # fmt: skip
    proc = subprocess.run(train, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "runs" / "r" / "test.json").read_text())["rsum"] >= 0
    bad = subprocess.run([*cli[:-3], "--device", "tpu"], capture_output=True, text=True)
    assert bad.returncode == 2 and "error: jwae_ext: --device must be" in bad.stderr


def test_empty_test_split_and_unreadable_everything(lite0, tmp_path):
    write_collection(tmp_path / "imgs", 4, layout="sidecar")
    for path in Path(tmp_path / "imgs").glob("*.png"):
        path.write_text("broken")
    with pytest.raises(ValueError, match="no image of the train split could be read"):
        run(lite0, tmp_path / "imgs", tmp_path / "out")
