"""The embedded dataset: determinism, renderability, caption truthfulness, styles, attributes."""

import hashlib
import itertools

import numpy as np
import pytest

from jwae_ext.data import DEFAULT_SIZES, SceneAttributes, Vocabulary, load_split, synthetic_split
from jwae_ext.data import features as feature_module
from jwae_ext.data.captions import PHRASINGS, _Writer
from jwae_ext.data.features import FEATURE_DIM, extract_features
from jwae_ext.data.render import IMAGE_SIZE, STYLES, render_scene
from jwae_ext.data.scenes import COLOURS, POSITIONS, SHAPES, SIZES, Draws, SceneObject


def _digest(split) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(split.images).tobytes())
    h.update("\n".join(split.captions).encode())
    for name in ("shape", "colour", "size", "position"):
        h.update(getattr(split.attributes, name).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def train_a():
    return synthetic_split("a", "train")


@pytest.fixture(scope="module", params=["a", "b"])
def small(request):
    return synthetic_split(request.param, "dev", num_images=120)


def test_same_seed_same_bytes_and_different_seeds_differ():
    first = synthetic_split("a", "dev", seed=7, num_images=30)
    again = synthetic_split("a", "dev", seed=7, num_images=30)
    other = synthetic_split("a", "dev", seed=8, num_images=30)
    assert _digest(first) == _digest(again)
    assert not np.array_equal(first.images, other.images)
    assert first.captions != other.captions


# Pins the generator across machines and numpy versions (PCG64 stream, Generator.random, exact
# integer features). If this changes, the embedded dataset changed: results are not comparable.
GOLDEN = {
    "a": "a57697a56e88ae1bfb498a78e84067128a6bf8c7ead02661e0d91bad40799ffe",
    "b": "720f9c68b3ba0f2339576fc20c89f5b705396152933b2ff9f2dbab6819889f66",
}


@pytest.mark.parametrize("style", ["a", "b"])
def test_golden_digest(style):
    assert _digest(synthetic_split(style, "test", seed=0, num_images=6)) == GOLDEN[style]


def test_images_do_not_depend_on_split_size_but_splits_and_styles_differ():
    short = synthetic_split("a", "test", num_images=10)
    long = synthetic_split("a", "test", num_images=25)
    assert np.array_equal(long.images[:10], short.images)
    assert long.captions[:50] == short.captions
    dev = synthetic_split("a", "dev", num_images=10)
    b = synthetic_split("b", "test", num_images=10)
    assert not np.array_equal(dev.images, short.images)
    assert not np.array_equal(b.images, short.images)


def test_layout(small):
    n = small.num_images
    assert small.images.shape == (n, FEATURE_DIM) and small.images.dtype == np.float32
    assert np.isfinite(small.images).all() and (small.images >= 0).all()
    assert small.num_captions == 5 * n and small.captions_per_image == 5
    assert np.array_equal(small.cap_to_img, np.arange(5 * n) // 5)
    assert len(small.attributes) == n
    assert all(len(set(small.captions[5 * i : 5 * i + 5])) >= 4 for i in range(n))


def test_render_reproduces_the_featurised_pixels(small):
    pixels = np.stack([small.render(i) for i in range(small.num_images)])
    assert pixels.shape == (small.num_images, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert pixels.dtype == np.uint8
    assert np.array_equal(extract_features(pixels), small.images)
    with pytest.raises(IndexError, match="out of range"):
        small.render(small.num_images)


def test_features_are_exact_integer_arithmetic():
    """float32 and float64 pipelines agree bit for bit, also on extreme images: every
    intermediate is an exactly representable integer, whatever BLAS does."""
    rng = np.random.default_rng(0)
    images = np.concatenate(
        [
            np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8),
            np.full((1, IMAGE_SIZE, IMAGE_SIZE, 3), 255, np.uint8),
            (rng.random((1, IMAGE_SIZE, IMAGE_SIZE, 3)) < 0.5).astype(np.uint8) * 255,
            rng.integers(0, 256, (5, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
        ]
    )
    w1, b1, w2, b2 = (w.astype(np.float64) for w in feature_module._weights())
    x = images.astype(np.float64) - 128
    h = np.floor(feature_module._conv4x4s2_relu(x, w1, b1) / feature_module._SHIFT1)
    h = feature_module._conv4x4s2_relu(h, w2, b2)
    pooled = h.reshape(len(images), 4, 3, 4, 3, -1).sum(axis=(2, 4)).reshape(len(images), -1)
    assert pooled.max() < 2**24
    expected = np.sqrt(pooled.astype(np.float32)) * feature_module._SCALE
    assert np.array_equal(extract_features(images), expected)
    with pytest.raises(ValueError, match="images must be uint8"):
        extract_features(images.astype(np.float32))


def test_scenes(small):
    attrs = small.attributes
    counts = attrs.num_objects
    assert set(counts.tolist()) == {1, 2, 3}
    for i in range(len(attrs)):
        k = counts[i]
        assert (attrs.shape[i, k:] == -1).all() and (attrs.shape[i, :k] >= 0).all()
        assert len(set(attrs.position[i, :k].tolist())) == k  # one object per cell
        assert attrs.size[i, 0] == attrs.size[i, :k].max()  # the main object is a biggest one
    assert set(attrs.shape[:, 0].tolist()) == set(range(len(SHAPES)))
    assert set(attrs.colour[:, 0].tolist()) == set(range(len(COLOURS)))


def _word_classes(table_of: str, names) -> dict[str, int]:
    """Token -> attribute id, from both styles' phrase tables (tokens shared by two values,
    such as "shape" in "round shape" and "triangular shape", are left out)."""
    owners: dict[str, set[int]] = {}
    for phrasing in PHRASINGS.values():
        table = getattr(phrasing, table_of)
        for value, options in table.items() if isinstance(table, dict) else enumerate(table):
            vid = names.index(value) if isinstance(value, str) else value
            for phrase in options.options:
                for token in phrase.split():
                    owners.setdefault(token, set()).add(vid)
    return {tok: ids.pop() for tok, ids in owners.items() if len(ids) == 1}


def test_captions_state_only_true_attributes(small):
    """Every shape, colour and size word names an object that is in the image, every caption
    names at least one shape, and corner words appear only with an object in a corner."""
    shape_of = _word_classes("shapes", SHAPES)
    colour_of = _word_classes("colours", COLOURS)
    size_of = _word_classes("sizes", SIZES)
    assert {"circle", "disc", "rhombus", "plus"} <= shape_of.keys()
    assert {"crimson", "turquoise", "red"} <= colour_of.keys() and "tiny" in size_of
    attrs = small.attributes
    for j, caption in enumerate(small.captions):
        i, tokens = small.cap_to_img[j], caption.split()
        k = attrs.num_objects[i]
        shapes = {shape_of[t] for t in tokens if t in shape_of}
        assert shapes and shapes <= set(attrs.shape[i, :k].tolist()), caption
        assert {colour_of[t] for t in tokens if t in colour_of} <= set(attrs.colour[i, :k]), caption
        assert {size_of[t] for t in tokens if t in size_of} <= set(attrs.size[i, :k]), caption
        if "corner" in tokens:
            assert {0, 2, 6, 8} & set(attrs.position[i, :k].tolist()), caption


def test_spatial_relations_are_true():
    for style, (a, b) in itertools.product(PHRASINGS, itertools.permutations(range(9), 2)):
        obj = [SceneObject(0, 0, 0, p, 4, (0, 0), (0, 0, 0)) for p in (a, b)]
        writer = _Writer(PHRASINGS[style], Draws(np.random.default_rng([a, b])))
        (ra, ca), (rb, cb) = divmod(a, 3), divmod(b, 3)
        for _ in range(8):
            words = writer.relation(*obj).split()
            if "left" in words:
                assert ca < cb
            elif "right" in words:
                assert ca > cb
            elif words[0] in ("above", "over", "higher"):
                assert ra < rb
            elif words[0] in ("below", "under", "beneath", "lower"):
                assert ra > rb
            else:
                assert max(abs(ra - rb), abs(ca - cb)) == 1, (words, a, b)


def test_default_sizes_and_vocabulary(train_a):
    assert train_a.num_images == DEFAULT_SIZES["train"]
    vocab = Vocabulary.build(train_a.captions)
    assert len(vocab) >= 100
    mentioned = set(" ".join(train_a.captions).split())
    for names in (SHAPES, COLOURS, SIZES):
        assert set(names) <= mentioned
    assert {"left", "right", "top", "bottom", "centre", "corner"} <= set(vocab.word2idx)


def test_styles_differ_in_pixels_and_phrasing(train_a):
    b = synthetic_split("b", "train", num_images=1000)
    words_a = set(Vocabulary.build(train_a.captions).word2idx)
    words_b = set(Vocabulary.build(b.captions).word2idx)
    assert "centre" in words_a and "center" in words_b and "center" not in words_a
    assert len(words_a & words_b) >= 0.8 * len(words_a)  # a large shared vocabulary
    full_stops = [np.mean([c.endswith(" .") for c in s.captions]) for s in (train_a, b)]
    assert full_stops[1] > full_stops[0] + 0.3
    # The same scene drawn in both styles: different background and outline.
    scene = [SceneObject(0, 0, 1, 4, 7, (0, 0), (0, 0, 0))]
    noise = np.zeros(IMAGE_SIZE * IMAGE_SIZE * 3, np.uint8)
    a_px, b_px = (render_scene(scene, STYLES[s], noise) for s in "ab")
    assert not np.array_equal(a_px[0], b_px[0])  # background
    assert not np.array_equal(a_px[24, 24 - 7 : 24 - 4], b_px[24, 24 - 7 : 24 - 4])  # outline
    assert np.array_equal(a_px[24, 24], STYLES["a"].palette[0])


def test_semantic_classes_and_overlap():
    attrs = SceneAttributes(
        shape=np.array([[0, 1, -1], [0, -1, -1], [2, 2, 0]], np.int8),
        colour=np.array([[0, 1, -1], [1, -1, -1], [0, 3, 0]], np.int8),
        size=np.array([[1, 0, -1], [0, -1, -1], [1, 1, 0]], np.int8),
        position=np.array([[0, 4, -1], [8, -1, -1], [1, 2, 3]], np.int8),
    )
    assert attrs.num_objects.tolist() == [2, 1, 3]
    assert attrs.semantic_class("shape").tolist() == [0, 0, 2]
    assert attrs.semantic_class("shape+colour").tolist() == [0, 1, 2 * len(COLOURS)]
    names = SceneAttributes.class_names("shape+colour")
    assert names[attrs.semantic_class("shape+colour")[2]] == "red triangle"
    assert SceneAttributes.class_names("position") == list(POSITIONS)
    # Sets of shapes: {0, 1} vs {0} -> 1/2; {0, 1} vs {2, 0} -> 1/3; {2, 0} vs itself -> 1.
    jac = attrs.jaccard(np.array([0, 0, 2]), np.array([1, 2, 2]), keys=("shape",))
    assert np.allclose(jac, [1 / 2, 1 / 3, 1])
    # Coloured shapes: (circle, red), (square, green) vs (circle, green) -> 0.
    assert attrs.jaccard(0, 1).item() == 0
    assert attrs.describe(1) == "small green circle (bottom right)"
    assert attrs.subset([2]).semantic_class("colour").tolist() == [0]
    with pytest.raises(ValueError, match="kind must be one of"):
        attrs.semantic_class("texture")
    with pytest.raises(ValueError, match="keys must be names"):
        attrs.jaccard(0, 1, keys=("hue",))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"style": "c"}, "style must be one of"),
        ({"split": "testall"}, "has splits"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"num_images": 0}, "num_images must be a positive integer"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic_split(**{"num_images": 2, **kwargs})


def test_load_split_dispatch():
    split = load_split("synthetic-b", "dev", num_images=3, seed=2)
    assert split.name == "synthetic-b/dev"
    assert _digest(split) == _digest(synthetic_split("b", "dev", seed=2, num_images=3))
    with pytest.raises(ValueError, match="has 5 captions per image"):
        load_split("synthetic-a", "dev", num_images=3, captions_per_image=1)
    with pytest.raises(FileNotFoundError, match="neither an embedded dataset"):
        load_split("synthetic-c", "dev")
