"""The Flickr30k Entities layout: a hand-written folder read back, the embedded grounding set
exported and loaded unchanged, and damaged folders named in errors."""

import numpy as np
import pytest

from jwae_ext.data.captions import strip_markup
from jwae_ext.data.synthetic import synthetic_split
from jwae_ext.grounding.data import load_entities, spatial_features, write_entities
from jwae_ext.grounding.entities import AnnotatedObject
from jwae_ext.grounding.sources import load_grounding
from jwae_ext.grounding.synthetic import export_entities, grounding_split

SENTENCE = (
    "[/EN#1/people A man] and [/EN#2/people/other two kids] near [/EN#3/scene a lake] "
    "under [/EN#0/notvisual the sky] with [/EN#4/other a kite] .\n"
)
XML = """<annotation><size><width>100</width><height>50</height><depth>3</depth></size>
<object><name>1</name><bndbox><xmin>11</xmin><ymin>11</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>
<object><name>2</name><bndbox><xmin>41</xmin><ymin>11</ymin><xmax>50</xmax><ymax>30</ymax></bndbox></object>
<object><name>2</name><bndbox><xmin>61</xmin><ymin>21</ymin><xmax>70</xmax><ymax>40</ymax></bndbox></object>
<object><name>3</name><nobndbox>0</nobndbox><scene>1</scene></object>
<object><name>4</name><nobndbox>1</nobndbox><scene>0</scene></object>
</annotation>
"""


@pytest.fixture
def folder(tmp_path):
    """One image, 3 proposal rows of which 2 are real: the union box of entity 2 is
    (40, 10, 69, 39) in 0-based pixels; proposal 1 is that box, proposal 0 entity 1's box."""
    (tmp_path / "Sentences").mkdir()
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Sentences" / "77.txt").write_text(SENTENCE * 2)
    (tmp_path / "Annotations" / "77.xml").write_text(XML)
    (tmp_path / "test.txt").write_text("77\n")
    boxes = np.array([[[10, 10, 29, 39], [40, 10, 69, 39], [0, 0, 99, 49]]], dtype=np.float32)
    np.save(tmp_path / "test_boxes.npy", boxes)
    np.save(tmp_path / "test_box_feats.npy", np.ones((1, 3, 2), dtype=np.float32))
    np.save(tmp_path / "test_num_boxes.npy", np.array([2], dtype=np.int64))
    return tmp_path


def test_a_hand_written_folder(folder):
    split = load_entities(folder, "test")
    table = split.phrases
    # Each sentence: the man and the two kids (union box); the lake (scene), the sky
    # (notvisual) and the kite (no box) are left out.
    assert table.text == ["A man", "two kids"] * 2
    assert table.types[1] == ("people", "other")
    assert table.gt.tolist() == [[10, 10, 29, 39], [40, 10, 69, 39]] * 2
    assert table.iou[:, 2].tolist() == [0.0] * 4  # padding: never a match
    assert table.iou[0, 0] == 1.0 and table.iou[1, 1] == 1.0
    assert split.upper_bound() == 100.0
    features = split.features(np.array([0]))
    assert features.shape == (1, 3, 2 + 5)
    assert features[0, 0, 2:].tolist() == pytest.approx([0.1, 0.2, 0.29, 0.78, 19 * 29 / 5000])


def test_spatial_features_are_cites_five_values():
    got = spatial_features(np.array([[0, 0, 50, 25]]), 100, 50)
    assert got.tolist() == [[0.0, 0.0, 0.5, 0.5, 0.25]]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "test.txt").unlink(), "has no split list test.txt"),
        (lambda f: (f / "Sentences" / "77.txt").write_text("[/EN#1/x a\n"), "77.txt, line 1"),
        (lambda f: (f / "Annotations" / "77.xml").unlink(), "77.xml"),
        (
            lambda f: np.save(f / "test_boxes.npy", np.zeros((2, 3, 4), np.float32)),
            "test_boxes.npy has 2 rows",
        ),
        (
            lambda f: np.save(f / "test_num_boxes.npy", np.zeros(1, np.int32)),
            "test_num_boxes.npy must hold int64",
        ),
        (
            lambda f: np.save(f / "test_num_boxes.npy", np.array([4])),
            r"counts in \[0, 3\]",
        ),
        (lambda f: (f / "test_box_feats.npy").write_bytes(b"junk"), "not a valid .npy"),
    ],
)
def test_damaged_folders_name_the_file(folder, damage, message):
    damage(folder)
    with pytest.raises((ValueError, OSError), match=message):
        load_entities(folder, "test")


def test_unknown_split_and_data_are_refused(folder):
    with pytest.raises(ValueError, match="grounding split must be one of"):
        load_entities(folder, "dev")
    with pytest.raises(FileNotFoundError, match="neither an embedded dataset"):
        load_grounding(folder / "missing", "test")


def test_embedded_set_export_load_round_trip(tmp_path):
    export_entities(tmp_path / "f", "b", seed=3, sizes={"train": 6, "val": 3, "test": 4})
    for split, n in (("train", 6), ("val", 3), ("test", 4)):
        made = grounding_split("b", split, seed=3, num_images=n)
        read = load_entities(tmp_path / "f", split)
        assert read.image_ids == made.image_ids
        assert read.annotations == made.annotations
        assert read.sentences == made.sentences
        for name in ("boxes", "box_feats", "num_boxes"):
            assert np.array_equal(getattr(read, name), getattr(made, name)), name
        assert read.phrases.text == made.phrases.text
        assert np.array_equal(read.phrases.iou, made.phrases.iou)
    with pytest.raises(OSError):  # an existing file in the way: nothing is half written
        write_entities(tmp_path / "f" / "test.txt", {"test": made})


def test_embedded_set_is_the_retrieval_scenes_with_boxes_and_markup():
    made = grounding_split("a", "val", num_images=40)
    scenes = synthetic_split("a", "dev", num_images=40)
    words = [[s.text for s in sentences] for sentences in made.sentences]
    plain = [strip_markup(c).replace(" , ", ", ") for c in scenes.captions]
    assert [w.replace(" , ", ", ") for ws in words for w in ws] == plain
    table = made.phrases
    groups = [t for t in table.types if len(t) > 1]
    assert groups, "some phrases name several objects (their union box)"
    left_out = [p for s in made.sentences for c in s for p in c.phrases if not p.visual]
    assert left_out, "some phrases are not visual"
    assert made.boxes.shape == (40, 24, 4) and made.box_feats.shape == (40, 24, 256)
    assert 50 < made.upper_bound() < 100  # the ground truth is not always among the proposals
    annotation = made.annotations[0]
    boxed = [o for o in annotation.objects if o.box is not None]
    assert all(isinstance(o, AnnotatedObject) for o in boxed)
    assert len(boxed) == scenes.attributes.num_objects[0]


def test_object_boxes_hold_the_drawn_pixels():
    made = grounding_split("a", "test", num_images=20)
    for i in range(20):
        drawn = made.render(i).astype(int).sum(axis=2) > 150  # style a: a dark background
        covered = np.zeros_like(drawn)
        for obj in made.annotations[i].objects:
            if obj.box is not None:
                x1, y1, x2, y2 = obj.box
                assert drawn[y1 : y2 + 1, x1 : x2 + 1].any()
                covered[y1 : y2 + 1, x1 : x2 + 1] = True
        assert not (drawn & ~covered).any()
