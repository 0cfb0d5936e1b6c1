"""``python -m jwae_ext.experiments poster | unpaired --data FOLDER --quick`` on generated pooled,
region and Flickr30k Entities folders: every table cell against the runs evaluated separately
(``python -m jwae_ext.evaluate`` on the same run folders, the ridge baseline fitted on its own),
the COCO 1K protocol, and the errors raised before any training."""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import pytest

from jwae_ext import evaluate, experiments
from jwae_ext.baseline import ridge_baseline
from jwae_ext.checkpoint import load_model
from jwae_ext.data import Vocabulary, export_precomp, load_split, tokenize, write_precomp_splits
from jwae_ext.grounding.synthetic import export_entities
from jwae_ext.published import published_columns

SIZES = {"train": 40, "dev": 12, "test": 12}
SEEDS = (0, 1)
VARIANTS = ("vse0", "jwae-mh", "scan")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Small folders: pooled and region features of two styles (one per "dataset"), two captions
    per image, and a Flickr30k Entities layout folder."""
    root = tmp_path_factory.mktemp("folders")
    for name, style, seed in (("photos", "a", 0), ("drawings", "b", 1)):
        for regions in (False, True):
            folder = root / (f"{name}_regions" if regions else name)
            export_precomp(
                folder, style, seed=seed, sizes=SIZES, regions=regions, captions_per_image=2
            )
    export_entities(root / "entities", sizes={"train": 16, "val": 8, "test": 8}, num_proposals=8)
    return root


def _main(*args: str) -> None:
    code = experiments.main([*map(str, args), "--quick"])
    assert code == 0


def _poster_args(out, data) -> list:
    """The poster job on the generated folders: 3 variants, 2 localization rows, 2 seeds."""
    return [
        "poster", "--out", out, "--data", data / "photos_regions",
        "--cross-data", f"{data / 'drawings_regions'}:test", "--grounding-data", data / "entities",
        "--variants", *VARIANTS, "--grounding", "embnet", "cite",
        "--seeds", *map(str, SEEDS), "--published", "coco",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def job(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("poster-folders")
    _main(*_poster_args(out, data))
    return out, json.loads((out / "results.json").read_text())


def _evaluated(run, folder, tmp_path, *extra: str) -> dict:
    """What ``python -m jwae_ext.evaluate RUN --data FOLDER ...`` writes."""
    path = tmp_path / f"{run.name}-{folder.name}.json"
    args = [str(run), "--data", str(folder), "--out", str(path), "--device", "cpu", *extra]
    assert evaluate.main(args) == 0
    return json.loads(path.read_text())


def _tables(result: dict) -> dict:
    return {k: result[k] for k in ("i2t", "t2i", "rsum")}


def test_every_cell_is_the_separately_evaluated_runs_mean_and_std(job, data, tmp_path):
    out, results = job
    assert set(results["runs"]) == {f"{v}-s{s}" for v in VARIANTS for s in SEEDS}
    for name, run in results["runs"].items():
        folder = out / "runs" / name
        assert _tables(run["in-domain"]) == _tables(
            _evaluated(folder, data / "photos_regions", tmp_path)
        )
        assert _tables(run["cross-dataset"]) == _tables(
            _evaluated(folder, data / "drawings_regions", tmp_path)
        )
        assert run["in-domain"]["continuity"] is None  # a folder has no labels
    summary = results["summary"]
    table = (out / "results.md").read_text()
    for variant in VARIANTS:
        runs = [results["runs"][f"{variant}-s{s}"] for s in SEEDS]
        for key, test, get in (
            ("in-domain/t2i R@1", "in-domain", lambda r: r["t2i"]["r1"]),
            ("cross-dataset/i2t R@5", "cross-dataset", lambda r: r["i2t"]["r5"]),
            ("cross-dataset/rsum", "cross-dataset", lambda r: r["rsum"]),
        ):
            values = [get(r[test]) for r in runs]
            assert summary[variant][key]["values"] == values
            assert summary[variant][key]["mean"] == pytest.approx(statistics.fmean(values))
            assert summary[variant][key]["std"] == pytest.approx(statistics.stdev(values))
        cells = [summary[variant][f"in-domain/{h}"] for h in ("i2t R@1", "t2i R@1", "rsum")]
        poster = published_columns("in", "coco")[1][variant]
        row = " | ".join(f"{c['mean']:.1f} ± {c['std']:.1f}" for c in cells)
        assert f"| {variant} | {row} | {poster['i2t R@1']:.1f} | {poster['t2i R@1']:.1f} |" in table
    assert "No labels" in table and "shape@10" not in table
    assert "poster i2t R@5" in table and "COCO → Flickr30k" in table


def test_the_ridge_baseline_row_is_the_baseline_fitted_on_its_own(job, data):
    out, results = job
    train, dev = (load_split(data / "photos_regions", s) for s in ("train", "dev"))
    for test, folder in (("in-domain", "photos_regions"), ("cross-dataset", "drawings_regions")):
        alone = ridge_baseline(train, dev, load_split(data / folder, "test"))
        assert _tables(results["baseline"]["tests"][test]) == _tables(alone)
        row = results["summary"]["ridge baseline"]
        assert row[f"{test}/rsum"]["values"] == [alone["rsum"]]
        assert results["baseline"]["alpha"] == alone["alpha"]
    cells = [row[f"in-domain/{h}"]["mean"] for h in ("i2t R@1", "t2i R@1", "rsum")]
    line = "| ridge baseline | " + " | ".join(f"{c:.1f}" for c in cells) + " | — | — |"
    assert line in (out / "results.md").read_text()


def test_the_cross_table_says_how_many_words_the_vocabulary_lacks(job, data):
    out, results = job
    captions = load_split(data / "drawings_regions", "test").captions
    words = [t for c in captions for t in tokenize(c) if any(ch.isalnum() for ch in t)]
    run = out / "runs" / "jwae-mh-s0"
    vocab = load_model(run).vocab  # the input vocabulary: training words and GloVe's
    missing = [w for w in words if w not in vocab]
    share = results["unknown_words"]["jwae-mh-s0"]
    assert share["tokens"] == len(words) and share["unknown_tokens"] == len(missing)
    assert share["unknown_words"] == len(set(missing)) and len(missing) < len(words)
    # The training vocabulary alone lacks words the pretrained vectors know.
    training_only = Vocabulary.load(run / "vocab.json")
    assert len(missing) < sum(w not in training_only for w in words)
    assert (
        f"lacks {100 * len(missing) / len(words):.1f}% of the test captions' word tokens"
        in (out / "results.md").read_text()
    )


def test_the_localization_table_is_the_runs_tested_on_the_entities_folder(job, data, tmp_path):
    out, results = job
    grounding = results["grounding"]
    for method in ("embnet", "cite"):
        values = []
        for seed in SEEDS:
            run = out / "runs" / f"grounding-{method}-s{seed}"
            values.append(_evaluated(run, data / "entities", tmp_path)["r1"])
        assert grounding["summary"][method]["r1"]["values"] == values
    table = (out / "results.md").read_text()
    assert f"train and test on {data / 'entities'}" in table
    assert "| embnet |" in table and "| 51.0 |" in table  # the poster's R@1 beside it


def test_a_second_start_skips_every_run(job, data, capsys):
    out, results = job
    _main(*_poster_args(out, data))
    assert capsys.readouterr().out.count("trained, skipping") == (len(VARIANTS) + 2) * len(SEEDS)
    assert json.loads((out / "results.json").read_text())["summary"] == results["summary"]
    # Runs trained on other data are not mixed in.
    args = ["poster", "--out", str(out), "--data", str(data / "photos"), "--quick"]
    code = experiments.main([*args, "--variants", "vse0"])
    assert code == 2 and "other settings (data" in capsys.readouterr().err


def test_a_scan_row_on_pooled_features_is_refused_before_any_training(data, tmp_path, capsys):
    for train, cross in (("photos", None), ("photos_regions", "drawings")):
        args = ["poster", "--out", str(tmp_path), "--data", str(data / train), "--variants"]
        args += ["vse0", "scan", "--quick"]
        args += [] if cross is None else ["--cross-data", str(data / cross)]
        assert experiments.main(args) == 2
        err = capsys.readouterr().err
        pooled = data / (cross or train)
        assert f"SCAN needs region features, but {pooled} has pooled ones" in err
        assert not (tmp_path / "runs").exists()


def test_pooled_folders_default_to_the_pooled_variants(data):
    args = argparse.Namespace(variants=None, grounding=None, grounding_data=None)
    args.data = str(data / "photos")
    assert experiments._poster_rows(args) == (("vse0", "vse++", "jwae-mse", "jwae-mh"), ())
    args.data = str(data / "photos_regions")
    assert experiments._poster_rows(args)[0] == experiments.VARIANTS


def test_the_1k_protocol_is_the_mean_over_five_folds_of_testall(data, tmp_path):
    """A folder with a 5000-image ``testall`` (the generated test images repeated, with noise):
    the in-domain table is evaluate's ``--split testall --protocol 1k``."""
    folder = tmp_path / "coco"
    splits = {s: load_split(data / "photos", s) for s in ("train", "dev", "test")}
    rng = np.random.default_rng(0)
    rows = np.arange(5000) % splits["test"].num_images
    images = np.asarray(splits["test"].images)[rows]
    images = images + rng.normal(scale=0.01, size=images.shape).astype(np.float32)
    captions = [splits["test"].captions[2 * i] for i in rows]
    write_precomp_splits(
        folder,
        {
            **{s: (np.asarray(splits[s].images), splits[s].captions) for s in ("train", "dev")},
            "testall": (images, captions),
        },
    )
    out = tmp_path / "out"
    _main("poster", "--out", out, "--data", folder, "--protocol", "1k", "--variants", "jwae-mh",
          "--seeds", "0")  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    alone = _evaluated(out / "runs" / "jwae-mh-s0", folder, tmp_path, "--split", "testall",
                       "--protocol", "1k")  # fmt: skip
    assert _tables(results["runs"]["jwae-mh-s0"]["in-domain"]) == _tables(alone)
    assert alone["images"] == 5000 and alone["protocol"] == "1k"
    train, dev, testall = (load_split(folder, s) for s in ("train", "dev", "testall"))
    ridge = ridge_baseline(train, dev, testall, protocol="1k")
    assert results["baseline"]["tests"]["in-domain"]["rsum"] == ridge["rsum"]
    assert "test its testall split, protocol 1k" in (out / "results.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--protocol", "1k"], "no split 'testall'"),
        (["--cross-data", "/no/such/folder"], "--cross-data must be a precomp folder"),
        (["--grounding", "cite"], "needs --grounding-data"),
        (["--grounding-data", "/no/such/folder"], "--grounding-data must be a Flickr30k"),
    ],
)
def test_bad_folder_arguments_are_refused(data, tmp_path, capsys, args, message):
    argv = ["poster", "--out", str(tmp_path), "--data", str(data / "photos"), "--quick", *args]
    assert experiments.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_folder_flags_need_data(capsys):
    assert experiments.main(["poster", "--cross-data", "x"]) == 2
    assert "--cross-data needs --data" in capsys.readouterr().err
    assert experiments.main(["unpaired", "--unpaired", "x"]) == 2
    assert "--data and --unpaired go together" in capsys.readouterr().err


def test_unpaired_on_folders_adds_the_other_folder_s_training_data(data, tmp_path):
    out = tmp_path / "out"
    _main("unpaired", "--out", out, "--data", data / "photos",
          "--unpaired", f"{data / 'drawings'}:train", "--seeds", "0")  # fmt: skip
    results = json.loads((out / "results-unpaired.json").read_text())
    assert set(results["runs"]) == {"jwae-mh-s0", "jwae-mh-unpaired-s0"}
    config = json.loads((out / "runs" / "jwae-mh-unpaired-s0" / "config.json").read_text())
    assert config["unpaired_images"] == config["unpaired_captions"] == f"{data / 'drawings'}:train"
    assert "unpaired_recon" in (out / "runs" / "jwae-mh-unpaired-s0" / "metrics.jsonl").read_text()
    plain = json.loads((out / "runs" / "jwae-mh-s0" / "config.json").read_text())
    assert plain["unpaired_images"] is None
    for name, run in results["runs"].items():
        for folder in ("photos", "drawings"):
            alone = _evaluated(out / "runs" / name, data / folder, tmp_path)
            assert _tables(run[str(data / folder)]) == _tables(alone)
    table = (out / "results-unpaired.md").read_text()
    assert f"## Test: {data / 'drawings'}" in table and "colour@10" not in table


def test_the_poster_s_numbers_only_where_it_published_them():
    assert published_columns("in", None)[1] == {}
    assert published_columns("in", "f30k")[1] == {}  # no Flickr30k-trained retrieval table
    setting, numbers = published_columns("cross", "coco")
    assert setting == "COCO → Flickr30k" and numbers["scan-jwae-mh"] == {
        "i2t R@5": 80.0,
        "t2i R@5": 66.7,
    }
    assert "vse++" not in numbers  # not in the poster's cross-dataset table
    assert published_columns("grounding", "f30k")[1]["cite-jwae"] == {"R@1": 60.4}
    with pytest.raises(ValueError, match="--published must be one of"):
        published_columns("in", "flickr")


def test_two_folders_of_one_name_are_refused(data, tmp_path, capsys):
    (tmp_path / "photos").symlink_to(data / "drawings", target_is_directory=True)
    argv = ["poster", "--out", str(tmp_path / "out"), "--data", str(data / "photos")]
    assert experiments.main([*argv, "--cross-data", str(tmp_path / "photos"), "--quick"]) == 2
    assert "would write the same evaluation file eval-photos-test.json" in capsys.readouterr().err
