"""``python -m jwae_ext.train --task grounding`` and ``python -m jwae_ext.evaluate`` on a
grounding run, end to end in subprocesses, on a tiny slice of the embedded grounding set."""

import json
import os
import subprocess
import sys

import pytest
import torch
from matplotlib.image import imread

from jwae_ext import figures
from jwae_ext.grounding.synthetic import export_entities

TINY = [
    "--task", "grounding", "--train-images", "12", "--eval-images", "8", "--batch-size", "4",
    "--embed-size", "16", "--img-hidden", "16", "--concept-dim", "8", "--word-dim", "8",
    "--proposals", "8", "--vocab-threshold", "1", "--no-progress",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(module: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", f"jwae_ext.{module}", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    proc = run("train", "--run-dir", str(runs), *TINY, "--variant", "cite-jwae", "--epochs", "2")
    return runs / "cite-jwae-synthetic-a-s0", proc


def test_train_writes_the_run_and_prints_the_localization_table(finished):
    run_dir, proc = finished
    assert {"config.json", "vocab.json", "metrics.jsonl", "last.pt", "best.pt", "test.json"} <= {
        p.name for p in run_dir.iterdir()
    }
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"match", "concept_l1", "recon", "nll", "adv_img", "adv_txt", "disc"} <= set(
        records[0]["train"]
    )
    test = json.loads((run_dir / "test.json").read_text())
    assert 0 <= test["r1"] <= test["r5"] <= 100 and 0 < test["upper_bound"] <= 100
    assert test["per_type"] and "R@1 per phrase type" in proc.stdout
    config = json.loads((run_dir / "config.json").read_text())
    assert config["task"] == "grounding" and config["lr"] == 5e-4  # the embedded preset


def test_resume_continues_exactly(tmp_path):
    # cite-jwae: both optimizers, and random streams (negatives, proposals, word dropout, prior).
    args = [*TINY, "--run-dir", str(tmp_path), "--variant", "cite-jwae"]
    run("train", *args, "--epochs", "2", "--name", "straight")
    run("train", *args, "--epochs", "1", "--name", "resumed")
    run("train", "--run-dir", str(tmp_path), "--resume", "--epochs", "2", "--name", "resumed")
    want, got = (
        torch.load(tmp_path / name / "last.pt", weights_only=True)["model"]
        for name in ("straight", "resumed")
    )
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key


def test_evaluate_in_domain_cross_dataset_and_on_an_entities_folder(finished, tmp_path):
    run_dir, _ = finished
    proc = run("evaluate", str(run_dir), "--out", str(tmp_path / "a.json"))
    assert "upper bound" in proc.stdout and "R@5" in proc.stdout
    same = json.loads((tmp_path / "a.json").read_text())
    test = json.loads((run_dir / "test.json").read_text())
    assert same["r1"] == test["r1"] and same["variant"] == "cite-jwae"

    run("evaluate", str(run_dir), "--data", "synthetic-b", "--out", str(tmp_path / "b.json"))
    other = json.loads((tmp_path / "b.json").read_text())
    assert other["data"] == "synthetic-b/test" and other["trained_on"] == "synthetic-a"

    folder = export_entities(
        tmp_path / "entities", "b", sizes={"test": 8}, num_proposals=8
    )  # the same images as synthetic-b's first 8 test images, read from files
    run(
        "evaluate", str(run_dir), "--data", str(folder), "--out", str(tmp_path / "f.json"),
        "--figures", str(tmp_path / "figures"),
    )  # fmt: skip
    files = json.loads((tmp_path / "f.json").read_text())
    assert {k: files[k] for k in ("r1", "r5", "upper_bound")} == {
        k: other[k] for k in ("r1", "r5", "upper_bound")
    }
    drawn = imread(tmp_path / "figures" / "grounding.png")
    assert drawn.shape[:2] == figures.grounding_size(6)  # 6 phrases of 6 of the 8 images


@pytest.mark.parametrize(
    ("module", "args", "message"),
    [
        ("train", ["--variant", "vse++"], "--variant must be one of"),
        ("train", ["--data", "/nonexistent/folder"], "neither an embedded dataset"),
        ("train", ["--pos-iou", "0.2"], "--neg-iou and --pos-iou"),
        ("train", ["--concepts", "0"], "--concepts must be >= 1"),
        ("train", ["--img-hidden", "0"], "--img-hidden must be >= 1 for --task grounding"),
    ],
)
def test_bad_arguments_fail_with_a_message(tmp_path, module, args, message):
    proc = run(module, "--run-dir", str(tmp_path), *TINY, *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_refuses_an_unknown_split(finished, tmp_path):
    run_dir, _ = finished
    proc = run("evaluate", str(run_dir), "--split", "dev", check=False)
    assert proc.returncode == 2 and "grounding split must be one of" in proc.stderr
