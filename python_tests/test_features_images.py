"""Finding and decoding images: every mode to RGB, EXIF orientation, broken files named."""

import numpy as np
import pytest
from features_testdata import Scene, draw, truncated_copy
from PIL import Image

from jwae_ext.extract import UnreadableImage, find_images, load_rgb

PICTURE = draw(Scene("star", "orange", 2, True), 120, 80)  # wide, the star top right


def test_find_images_is_recursive_sorted_and_skips_hidden_folders_and_other_files(tmp_path):
    for name in ["b.png", "a.JPG", "sub/c.webp", ".hidden/d.png", "._b.png", "notes.txt", "e.npy"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert list(find_images(tmp_path)) == ["a.JPG", "b.png", "sub/c.webp"]


@pytest.mark.parametrize("size", [7, 224])
def test_rgb_files_of_any_size_come_back_square_uint8(tmp_path, size):
    for w, h in [(1, 1), (31, 200), (640, 480)]:
        PICTURE.resize((w, h)).save(tmp_path / "x.png")
        pixels = load_rgb(tmp_path / "x.png", size)
        assert pixels.shape == (size, size, 3) and pixels.dtype == np.uint8


def test_grey_and_palette_images_match_their_rgb_version(tmp_path):
    grey = PICTURE.convert("L")
    grey.save(tmp_path / "l.png")
    grey.convert("RGB").save(tmp_path / "l_rgb.png")
    np.testing.assert_array_equal(
        load_rgb(tmp_path / "l.png", 64), load_rgb(tmp_path / "l_rgb.png", 64)
    )
    palette = PICTURE.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(tmp_path / "p.png")
    palette.convert("RGB").save(tmp_path / "p_rgb.png")
    np.testing.assert_array_equal(
        load_rgb(tmp_path / "p.png", 64), load_rgb(tmp_path / "p_rgb.png", 64)
    )


def test_transparency_is_flattened_on_white(tmp_path):
    rgba = PICTURE.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: the colours underneath must not show
    rgba.save(tmp_path / "clear.png")
    assert (load_rgb(tmp_path / "clear.png", 32) == 255).all()

    square = np.zeros((32, 32, 4), dtype=np.uint8)
    square[...] = (200, 0, 0, 255)
    square[:, :16, 3] = 128  # left half: half-transparent red over white
    Image.fromarray(square, "RGBA").save(tmp_path / "half.png")
    flat = load_rgb(tmp_path / "half.png", 32).astype(int)
    np.testing.assert_allclose(flat[:, :16], [[[228, 127, 127]] * 16] * 32, atol=1)
    np.testing.assert_array_equal(flat[:, 16:], [[[200, 0, 0]] * 16] * 32)

    indices = np.zeros((32, 32), dtype=np.uint8)
    indices[:, 16:] = 1
    palette = Image.fromarray(indices, "P")
    palette.putpalette([0, 0, 0, 0, 0, 255])  # 0: black, made transparent; 1: blue
    palette.save(tmp_path / "p_alpha.png", transparency=0)
    flat = load_rgb(tmp_path / "p_alpha.png", 32)
    assert (flat[:, :16] == 255).all() and (flat[:, 16:] == (0, 0, 255)).all()


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    pixels = load_rgb(tmp_path / "deep.png", 64)
    np.testing.assert_allclose(pixels[..., 0], ramp / 257, atol=1.5)


def test_exif_orientation_is_applied(tmp_path):
    PICTURE.save(tmp_path / "upright.png")
    stored = PICTURE.transpose(Image.Transpose.ROTATE_90)  # the camera's sensor, turned
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    stored.save(tmp_path / "turned.png", exif=exif)
    stored.save(tmp_path / "turned_no_exif.png")
    upright = load_rgb(tmp_path / "upright.png", 96)
    np.testing.assert_array_equal(load_rgb(tmp_path / "turned.png", 96), upright)
    assert not np.array_equal(load_rgb(tmp_path / "turned_no_exif.png", 96), upright)


def test_jpeg_photos_decode_close_to_the_original(tmp_path):
    big = PICTURE.resize((1200, 800))
    big.save(tmp_path / "big.jpg", quality=95)
    big.save(tmp_path / "big.png")
    jpeg, png = (load_rgb(tmp_path / n, 224).astype(int) for n in ("big.jpg", "big.png"))
    assert np.abs(jpeg - png).mean() < 3  # the reduced-size JPEG decode is a close match


def test_truncated_and_non_image_files_raise_with_the_decoders_reason(tmp_path):
    PICTURE.resize((400, 300)).save(tmp_path / "ok.jpg", quality=90)
    truncated_copy(tmp_path / "ok.jpg", tmp_path / "cut.jpg")
    (tmp_path / "text.png").write_text("this is not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ["cut.jpg", "text.png", "empty.png", "missing.png"]:
        with pytest.raises(UnreadableImage) as info:
            load_rgb(tmp_path / name, 32)
        assert str(info.value)  # the reason, e.g. "OSError: image file is truncated"
