"""Caption layouts, matching images with captions, captions per image and splits (no network)."""

import json
import re

import pytest
from features_testdata import write_captions, write_collection

from jwae_ext.extract import make_plan, read_caption_file

CAPS = {"a.png": ["one a", "two a"], "sub/b.png": ["one b"], "c.png": ["x", "y", "z"]}


@pytest.mark.parametrize("layout", ["coco", "karpathy", "tsv", "csv"])
def test_every_file_layout_reads_the_same_captions(tmp_path, layout):
    path = write_captions(tmp_path / "imgs", CAPS, layout) if layout != "sidecar" else None
    assert read_caption_file(path).captions == CAPS


@pytest.mark.parametrize("layout", ["sidecar", "coco", "karpathy", "tsv", "csv"])
@pytest.mark.parametrize("k", [1, 5])
def test_plan_has_k_captions_of_each_image_in_every_layout(tmp_path, layout, k):
    names, captions = write_collection(tmp_path / "imgs", 20, layout=layout, captions_per_image=k)
    plan = make_plan(tmp_path / "imgs", captions)
    assert plan.captions_per_image == k
    items = [item for split in plan.splits.values() for item in split]
    assert sorted(item.name for item in items) == sorted(names)
    assert all(len(item.captions) == k for item in items)
    assert plan.report.lines() == []


def test_flickr_variants_pipes_unquoted_commas_and_malformed_rows(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text(
        "image_name| comment_number| comment\n"
        "1.jpg| 0| A dog , running .\n"
        '1.jpg| 1| "Quoted" dog\n'
        "2.jpg| 4 A broken row\n"
        "2.jpg| 0|   \n"
    )
    source = read_caption_file(path)
    assert source.captions == {"1.jpg": ["A dog , running .", '"Quoted" dog'], "2.jpg": []}
    assert source.malformed == ["row 4"] and source.empty == 1
    path.write_text('image,caption\n1.jpg,a dog, running\n1.jpg,"a cat, sitting"\n')
    assert read_caption_file(path).captions == {"1.jpg": ["a dog, running", "a cat, sitting"]}


def test_coco_line_breaks_unknown_ids_and_splits(tmp_path):
    data = {
        "images": [{"id": 1, "file_name": "a.png", "split": "val"},
                   {"id": 2, "file_name": "b.png", "split": "restval"}],
        "annotations": [{"image_id": 1, "caption": "a\ncat  "}, {"image_id": 9, "caption": "z"},
                        {"image_id": 2, "caption": " "}],
    }  # fmt: skip
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    source = read_caption_file(path)
    assert source.captions == {"a.png": ["a cat"], "b.png": []}
    assert source.unknown_ids == ["9"] and source.empty == 1
    assert source.splits == {"a.png": "dev", "b.png": "train"}


def test_missing_images_and_uncaptioned_images_are_reported_and_skipped(tmp_path):
    names, _ = write_collection(tmp_path / "imgs", 12, layout="sidecar")
    (tmp_path / "imgs" / names[0]).with_suffix(".txt").unlink()  # an image without captions
    (tmp_path / "imgs" / "ghost.txt").write_text("a caption of no image\n")
    plan = make_plan(tmp_path / "imgs")
    kept = {item.name for split in plan.splits.values() for item in split}
    assert kept == set(names[1:])
    assert plan.report.counts == {
        "caption files without an image (skipped)": 1,
        "images without captions (skipped)": 1,
    }
    assert plan.report.problems["images without captions (skipped)"] == [names[0]]

    captions = {n: ["a caption"] for n in [*names[2:], "gone1.png", "gone2.png"]}
    plan = make_plan(tmp_path / "imgs", write_captions(tmp_path / "imgs", captions, "tsv"))
    assert plan.report.problems == {
        "captioned images missing from the image folder (skipped)": ["gone1.png", "gone2.png"],
        "images without captions (skipped)": names[:2],
    }


def test_names_resolve_by_relative_path_then_unique_base_name(tmp_path):
    names, _ = write_collection(tmp_path / "imgs" / "deep", 10, layout="sidecar")
    caps = {f"deep/{names[0]}": ["by path"], names[1]: ["by base name"], "other/x.png": ["no"]}
    plan = make_plan(tmp_path / "imgs", write_captions(tmp_path / "imgs", caps, "tsv"),
                     fractions=(0.5, 0.5, 0.0))  # fmt: skip
    kept = {item.name: item.path for split in plan.splits.values() for item in split}
    assert kept[f"deep/{names[0]}"] == tmp_path / "imgs" / "deep" / names[0]
    assert kept[names[1]] == tmp_path / "imgs" / "deep" / names[1]
    assert "other/x.png" not in kept


def test_varying_caption_counts_truncate_or_repeat_to_the_common_count(tmp_path):
    names, _ = write_collection(tmp_path / "imgs", 10, layout="sidecar")
    caps = {n: [f"{n} caption {j}" for j in range(5)] for n in names}
    caps[names[0]] = ["only one"]
    caps[names[1]] = ["first", "second"]
    caps[names[2]] = [f"c{j}" for j in range(7)]
    path = write_captions(tmp_path / "imgs", caps, "tsv")
    plan = make_plan(tmp_path / "imgs", path)
    items = {i.name: i for split in plan.splits.values() for i in split}
    assert plan.captions_per_image == 5
    assert items[names[0]].captions == ("only one",) * 5
    assert items[names[1]].captions == ("first", "second", "first", "second", "first")
    assert items[names[2]].captions == ("c0", "c1", "c2", "c3", "c4")
    assert plan.report.counts == {
        "images with more than 5 captions (kept the first 5)": 1,
        "images with fewer than 5 captions (repeated to 5)": 2,
    }
    plan = make_plan(tmp_path / "imgs", path, captions_per_image=1)
    assert all(len(i.captions) == 1 for split in plan.splits.values() for i in split)


def test_splits_are_by_image_seeded_and_sized_by_fractions(tmp_path):
    write_collection(tmp_path / "imgs", 50, layout="sidecar")
    plan = make_plan(tmp_path / "imgs", seed=3)
    sizes = {s: len(v) for s, v in plan.splits.items()}
    assert sizes == {"train": 40, "dev": 5, "test": 5}
    names = [i.name for s in plan.splits.values() for i in s]
    assert len(set(names)) == 50
    assert make_plan(tmp_path / "imgs", seed=3).splits == plan.splits
    assert make_plan(tmp_path / "imgs", seed=4).splits != plan.splits
    for split in plan.splits.values():  # source order within a split
        assert [i.name for i in split] == sorted(i.name for i in split)
    plan = make_plan(tmp_path / "imgs", fractions=(0.7, 0.3, 0.0))
    assert {s: len(v) for s, v in plan.splits.items()} == {"train": 35, "dev": 15}


def test_a_caption_files_splits_are_kept_unless_fractions_are_given(tmp_path):
    names, _ = write_collection(tmp_path / "imgs", 6, layout="sidecar")
    split_of = dict(zip(names, ["train", "val", "test", "restval", "train", "val"], strict=True))
    images = [{"filename": n, "split": split_of[n], "sentences": [{"raw": "a"}]} for n in names]
    path = tmp_path / "karpathy.json"
    path.write_text(json.dumps({"images": images}))
    plan = make_plan(tmp_path / "imgs", path)
    assert plan.split_source == "caption file"
    got = {s: [i.name for i in v] for s, v in plan.splits.items()}
    assert got == {"train": [names[0], names[3], names[4]], "dev": [names[1], names[5]],
                   "test": [names[2]]}  # fmt: skip
    plan = make_plan(tmp_path / "imgs", path, fractions=(0.5, 0.5, 0.0))
    assert plan.split_source.startswith("seed 0") and set(plan.splits) == {"train", "dev"}


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        ('{"images": 3}', "expected a JSON object with an 'images' list"),
        ('{"images": [{"id": 1}], "annotations": []}', "images[0] has no 'file_name'"),
        ('{"images": [{"filename": "a", "split": "x", "sentences": []}]}', "unknown split 'x'"),
        ('{"images": [', "is not valid JSON"),
        ("just one column\n", "expected 'image','caption' columns"),
    ],
)
def test_malformed_caption_files_are_errors_naming_the_file(tmp_path, contents, message):
    path = tmp_path / "caps.txt"
    path.write_text(contents)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        read_caption_file(path)
    assert str(path) in str(info.value)


def test_partial_split_fields_too_few_images_and_bad_fractions_are_errors(tmp_path):
    names, _ = write_collection(tmp_path / "imgs", 3, layout="sidecar")
    images = [{"filename": n, "sentences": ["s"]} for n in names]
    images[0]["split"] = "train"
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"images": images}))
    with pytest.raises(ValueError, match="only 1 of 3 images have a 'split' field"):
        make_plan(tmp_path / "imgs", path)
    write_collection(tmp_path / "two", 2, layout="sidecar")
    with pytest.raises(ValueError, match="2 captioned images are too few for --splits"):
        make_plan(tmp_path / "two")
    with pytest.raises(ValueError, match="summing to 1"):
        make_plan(tmp_path / "imgs", fractions=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match=r"no image under .* has a caption"):
        make_plan(tmp_path / "imgs", write_captions(tmp_path, {"z.png": ["a"]}, "tsv"))
    with pytest.raises(FileNotFoundError, match=r"image folder .* does not exist"):
        make_plan(tmp_path / "nothing")
