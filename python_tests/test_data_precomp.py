"""Precomp folders (VSE++/SCAN layout): round trips, region features, bad files, fuzzing."""

import io
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jwae_ext.data import (
    PooledRegions,
    available_splits,
    export_precomp,
    load_precomp,
    load_split,
    synthetic_split,
    write_precomp,
)
from jwae_ext.data.precomp import read_captions, read_features


def _features(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _captions(m):
    return [f"caption number {j} ." for j in range(m)]


@pytest.mark.parametrize("k", [1, 5])
def test_round_trip_k_captions_per_image(tmp_path, k):
    features = _features(4, 6)
    write_precomp(tmp_path, "test", features, _captions(4 * k))
    split = load_precomp(tmp_path, "test")
    assert isinstance(split.images, np.memmap)  # never read whole
    assert np.array_equal(split.images, features)
    assert split.captions == _captions(4 * k)
    assert split.captions_per_image == k
    assert np.array_equal(split.cap_to_img, np.arange(4 * k) // k)
    assert split.attributes is None and split.renderer is None
    with pytest.raises(ValueError, match="cannot be rendered"):
        split.render(0)


def test_region_features_are_mean_pooled_lazily(tmp_path):
    regions = _features(5, 3, 4)
    write_precomp(tmp_path, "train", regions, _captions(10))
    split = load_precomp(tmp_path, "train")
    assert isinstance(split.images, PooledRegions) and split.images.shape == (5, 4)
    expected = regions.astype(np.float64).mean(axis=1).astype(np.float32)
    assert np.array_equal(split.images[2], expected[2])
    assert np.array_equal(split.images[1:4], expected[1:4])
    assert np.array_equal(split.images[np.array([4, 0])], expected[[4, 0]])
    assert np.array_equal(np.asarray(split.images), expected)
    assert split.images[0].dtype == np.float32


def test_num_images_and_repeated_feature_rows(tmp_path):
    write_precomp(tmp_path, "dev", _features(6, 3, 2), _captions(12))
    head = load_precomp(tmp_path, "dev", num_images=4)
    assert head.num_images == 4 and head.captions == _captions(8)
    assert isinstance(head.images, PooledRegions)
    # Some VSE++ releases store one feature row per caption: k given explicitly keeps every k-th.
    repeated = np.repeat(_features(3, 2), 5, axis=0)
    write_precomp(tmp_path, "train", repeated, _captions(15))
    assert load_precomp(tmp_path, "train").captions_per_image == 1
    split = load_precomp(tmp_path, "train", captions_per_image=5)
    assert split.num_images == 3 and np.array_equal(split.images, repeated[::5])
    with pytest.raises(ValueError, match="expected 4 per image"):
        load_precomp(tmp_path, "dev", captions_per_image=4)


def test_caption_file_conventions(tmp_path):
    write_precomp(tmp_path, "test", _features(2, 2), _captions(2))
    (tmp_path / "test_caps.txt").write_bytes("\ufeffA dog  \r\n\tthe café\r".encode())
    assert load_precomp(tmp_path, "test").captions == ["A dog", "the café"]
    (tmp_path / "test_caps.txt").write_bytes(b"no final line end\nsecond")
    assert read_captions(tmp_path / "test_caps.txt") == ["no final line end", "second"]


def test_available_splits_and_load_split_on_folders(tmp_path):
    for split in ("testall", "train", "extra"):
        write_precomp(tmp_path, split, _features(1, 2), _captions(1))
    assert available_splits(tmp_path) == ["train", "testall", "extra"]
    assert load_split(tmp_path, "testall").num_images == 1
    assert load_split(str(tmp_path), "extra", num_images=1).name.endswith("extra")


def test_export_embedded_dataset(tmp_path):
    export_precomp(tmp_path, "b", seed=3, sizes={"train": 4, "dev": 2})
    assert available_splits(tmp_path) == ["train", "dev"]
    loaded = load_precomp(tmp_path, "train")
    generated = synthetic_split("b", "train", seed=3, num_images=4)
    assert np.array_equal(loaded.images, generated.images)
    assert loaded.captions == generated.captions


def test_export_keeps_each_images_first_captions(tmp_path):
    export_precomp(tmp_path, "a", sizes={"train": 3}, captions_per_image=2)
    loaded = load_precomp(tmp_path, "train")
    generated = synthetic_split("a", "train", num_images=3).captions
    assert loaded.captions == [generated[5 * i + k] for i in range(3) for k in range(2)]
    assert loaded.captions_per_image == 2
    for bad in (0, 6):
        with pytest.raises(ValueError, match="captions_per_image must be in"):
            export_precomp(tmp_path / "bad", sizes={"train": 2}, captions_per_image=bad)
    assert not (tmp_path / "bad").exists()


# --- bad files ---------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    write_precomp(tmp_path, "train", _features(3, 4), _captions(6))
    return tmp_path


def _expect(error, match, folder, split="train", **kwargs):
    with pytest.raises(error, match=match) as err:
        load_precomp(folder, split, **kwargs)
    return str(err.value)


def test_truncated_and_padded_npy(folder):
    path = folder / "train_ims.npy"
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    assert str(path) in _expect(ValueError, r"is truncated: its header announces \(3, 4\)", folder)
    path.write_bytes(data + b"junk")
    assert str(path) in _expect(ValueError, "has trailing bytes", folder)
    path.write_bytes(data[:20])
    assert str(path) in _expect(ValueError, "not a valid .npy file", folder)
    path.write_bytes(b"caption text, not an array")
    assert str(path) in _expect(ValueError, "not a valid .npy file", folder)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((3, 4), np.float64), "holds float64 features, expected float32"),
        (np.zeros((3, 4), ">f4"), "expected float32"),
        (np.zeros((3, 4), np.int32), "holds int32 features"),
        (np.zeros(12, np.float32), r"has shape \(12,\)"),
        (np.zeros((0, 4), np.float32), "expected non-empty"),
        (np.zeros((3, 0), np.float32), "expected non-empty"),
    ],
)
def test_wrong_dtype_or_shape(folder, array, message):
    np.save(folder / "train_ims.npy", array)
    assert str(folder / "train_ims.npy") in _expect(ValueError, message, folder)


class _Exploit:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').touch()",))


def test_pickled_object_array_is_refused_without_running_it(folder, monkeypatch):
    monkeypatch.chdir(folder)
    buffer = io.BytesIO()
    np.save(buffer, np.array([_Exploit()], dtype=object), allow_pickle=True)
    (folder / "train_ims.npy").write_bytes(buffer.getvalue())
    _expect(ValueError, "holds object features", folder)
    assert not (folder / "PWNED").exists()


def test_caption_count_must_divide(folder):
    (folder / "train_caps.txt").write_text("".join(f"c{j}\n" for j in range(7)))
    message = _expect(ValueError, "has 7 captions for 3 images in train_ims.npy", folder)
    assert str(folder / "train_caps.txt") in message and "7 / 3" in message


def test_non_utf8_caption_names_the_line(folder):
    (folder / "train_caps.txt").write_bytes(b"one\ntwo\r\nth\xe9ree\nfour\nfive\nsix\n")
    message = _expect(ValueError, r"line 3: not valid UTF-8 \(byte 0xe9 at byte column 3\)", folder)
    assert str(folder / "train_caps.txt") in message


def test_empty_caption_lines(folder):
    (folder / "train_caps.txt").write_text("one\ntwo\n  \nfour\nfive\nsix\n")
    _expect(ValueError, "line 3: empty caption", folder)
    (folder / "train_caps.txt").write_text("")
    _expect(ValueError, "holds no captions", folder)


def test_missing_split_folder_or_file(folder, tmp_path_factory):
    message = _expect(FileNotFoundError, "no split 'dev'", folder, split="dev")
    assert "dev_ims.npy is missing" in message and "splits found: train" in message
    (folder / "train_caps.txt").unlink()
    _expect(FileNotFoundError, "train_caps.txt is missing", folder)
    empty = tmp_path_factory.mktemp("empty")
    assert "splits found: none" in _expect(FileNotFoundError, "no split", empty)
    _expect(FileNotFoundError, "does not exist", empty / "nope")
    _expect(ValueError, "split must be a plain name", folder, split="../train")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"captions_per_image": 0}, "captions_per_image must be an integer >= 1"),
        ({"num_images": 0}, "num_images must be a positive integer"),
    ],
)
def test_bad_arguments(folder, kwargs, message):
    _expect(ValueError, message, folder, **kwargs)


def test_writer_checks_and_leaves_nothing_behind(tmp_path):
    with pytest.raises(ValueError, match="must be non-empty float32"):
        write_precomp(tmp_path, "train", np.zeros((2, 3)), _captions(2))
    with pytest.raises(ValueError, match="3 captions for 2 images"):
        write_precomp(tmp_path, "train", _features(2, 3), _captions(3))
    with pytest.raises(ValueError, match="caption 1 must be a non-empty single line"):
        write_precomp(tmp_path, "train", _features(2, 3), ["a", "b\nc"])
    assert list(tmp_path.iterdir()) == []


# --- fuzzing -----------------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_caption_reader_fuzz_random_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("caps") / "x_caps.txt"
    path.write_bytes(data)
    try:
        captions = read_captions(path)
    except ValueError as e:
        assert str(path) in str(e)
    else:
        assert captions and all(c and c == c.strip() and "\n" not in c for c in captions)


@given(st.binary(max_size=300), st.booleans())
def test_feature_reader_fuzz_random_bytes(tmp_path_factory, payload, with_header):
    path = tmp_path_factory.mktemp("ims") / "x_ims.npy"
    header = b""
    if with_header:  # a valid header for (2, 3) float32, then random data
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((2, 3), np.float32))
        header = buffer.getvalue()[:-24]
    path.write_bytes(header + payload)
    try:
        features = read_features(path)
    except ValueError as e:
        assert str(path) in str(e)
    else:
        assert with_header and len(payload) == 24 and features.shape == (2, 3)
        assert np.asarray(features).tobytes() == payload


@given(
    st.integers(1, 6),
    st.lists(
        st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12), max_size=20
    ),
    st.sampled_from(["\n", "\r\n"]),
)
def test_loader_fuzz_random_lines(tmp_path_factory, n, lines, newline):
    folder = tmp_path_factory.mktemp("precomp")
    np.save(folder / "train_ims.npy", _features(n, 2))
    (folder / "train_caps.txt").write_bytes(newline.join(lines).encode("utf-8"))
    try:
        split = load_precomp(folder, "train")
    except ValueError as e:
        assert str(folder / "train_caps.txt") in str(e)
    else:
        k = split.captions_per_image
        assert k is not None and split.num_captions == n * k
        assert all(c.strip() == c and c for c in split.captions)


def test_export_command(tmp_path):
    out = tmp_path / "synthetic_b"
    sizes = ["--train", "3", "--dev", "2", "--test", "2", "--seed", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "jwae_ext.data.synthetic", str(out), "--style", "b", *sizes],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "train (3 images)" in done.stdout
    split = load_split(out, "dev")
    assert split.captions == synthetic_split("b", "dev", seed=1, num_images=2).captions
