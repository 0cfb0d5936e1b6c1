"""``python -m jwae_ext.train`` end to end, in subprocesses, on a tiny slice of the embedded set."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jwae_ext.config import TrainConfig, resolve
from jwae_ext.train import Trainer

TINY = [
    "--train-images", "48", "--eval-images", "24", "--batch-size", "16",
    "--embed-size", "16", "--img-hidden", "16", "--word-dim", "8", "--warmup-epochs", "1",
    "--no-progress",
]  # fmt: skip


def tiny_config(run_dir: Path, **fields) -> TrainConfig:
    """The resolved configuration of a tiny model on a tiny slice (``fields`` override it)."""
    tiny = {
        "train_images": 16,
        "eval_images": 8,
        "batch_size": 8,
        "embed_size": 16,
        "img_hidden": 16,
        "word_dim": 8,
        "progress": False,
    }
    return resolve(TrainConfig(run_dir=str(run_dir), **{**tiny, **fields}))


def tiny_trainer(run_dir: Path, **fields) -> Trainer:
    """An in-process trainer of :func:`tiny_config`'s model."""
    return Trainer(tiny_config(run_dir, **fields))


def train(run_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "jwae_ext.train", "--run-dir", str(run_dir), *TINY, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def test_train_writes_the_run_and_prints_the_test_table(tmp_path):
    proc = train(tmp_path, "--epochs", "2", "--name", "run")
    run = tmp_path / "run"
    assert {"config.json", "vocab.json", "metrics.jsonl", "last.pt", "best.pt", "test.json"} <= {
        p.name for p in run.iterdir()
    }
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert {"match", "recon", "nll", "adv_img", "adv_txt", "disc", "total"} <= set(r["train"])
        assert {"i2t", "t2i", "rsum"} <= set(r["dev"])
        assert set(r["dev"]["codes"]) == {"image", "caption"}  # their spread (collapse.py)
    assert "R@1" in proc.stdout and "rsum" in proc.stdout and "i2t" in proc.stdout
    assert "synthetic-a/train: 0 of 240 captions have no known word" in proc.stdout
    assert "synthetic-a/dev: " in proc.stdout and "captions have no known word" in proc.stdout
    baseline = json.loads((run / "baseline.json").read_text())
    assert baseline["data"] == "synthetic-a/dev" and str(baseline["alpha"]) in baseline["dev_rsum"]
    assert f"dev rsum {baseline['rsum']:.1f}" in proc.stdout.split("ridge baseline on")[1]
    test = json.loads((run / "test.json").read_text())
    assert 0 <= test["i2t"]["r1"] <= 100 and test["rsum"] > 0
    config = json.loads((run / "config.json").read_text())
    assert config["variant"] == "jwae-mh" and config["epochs"] == 2 and config["embed_size"] == 16


def test_resume_continues_exactly(tmp_path):
    train(tmp_path, "--epochs", "2", "--name", "straight")
    train(tmp_path, "--epochs", "1", "--name", "resumed")
    # Resumed runs keep their saved configuration; only the explicit --epochs changes.
    train(tmp_path, "--resume", "--epochs", "2", "--name", "resumed")
    straight, resumed = (_weights(tmp_path / n / "last.pt") for n in ("straight", "resumed"))
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    lines = [
        [json.loads(line) for line in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
        for n in ("straight", "resumed")
    ]
    assert [r["train"] for r in lines[0]] == [r["train"] for r in lines[1]]


def test_a_run_below_the_ridge_baseline_ends_with_a_warning(tmp_path):
    train(tmp_path, "--epochs", "1", "--name", "run")
    run = tmp_path / "run"
    # A resumed run reads baseline.json back instead of fitting again: with a baseline rsum of
    # 600 (every recall 100%), which the tiny run stays below, it ends with the warning.
    baseline = json.loads((run / "baseline.json").read_text())
    (run / "baseline.json").write_text(json.dumps({**baseline, "rsum": 600.0}))
    proc = train(tmp_path, "--resume", "--epochs", "2", "--name", "run")
    assert "dev rsum 600.0" in proc.stdout.split("ridge baseline on")[1]
    best = max(json.loads(line)["dev"]["rsum"] for line in (run / "metrics.jsonl").open())
    assert best < 600.0
    assert (
        f"warning: the best dev rsum of this run, {best:.1f}, stayed below the ridge baseline's "
        "dev rsum, 600.0, on the same split (synthetic-a/dev)"
    ) in proc.stderr
    (run / "baseline.json").write_text("{damaged")
    proc = train(tmp_path, "--resume", "--epochs", "2", "--name", "run", check=False)
    assert proc.returncode == 2 and f"cannot read {run / 'baseline.json'}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_warning_at_or_above_the_baseline(tmp_path):
    trainer = tiny_trainer(tmp_path)
    trainer.baseline = {"rsum": 120.0}
    for best, warned in ((119.9, True), (120.0, False), (300.0, False)):
        trainer.best_rsum = best
        assert bool(trainer.notes_at_end()) == warned


@pytest.mark.parametrize("variant", ["vse++", "vse0", "jwae-mse"])
def test_baseline_variants_train(tmp_path, variant):
    proc = train(tmp_path, "--epochs", "1", "--variant", variant, "--name", "v")
    record = json.loads((tmp_path / "v" / "metrics.jsonl").read_text().splitlines()[0])
    assert ("recon" in record["train"]) == (variant == "jwae-mse")
    assert "rsum" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--img-hidden", "-1"], "--img-hidden must be >= 0, got -1"),
        (["--variant", "clip"], "invalid choice"),
        (["--data", "/nonexistent/folder"], "neither an embedded dataset"),
        (["--resume", "--name", "never-ran"], "no config.json"),
    ],
)
def test_bad_arguments_fail_with_a_message(tmp_path, args, message):
    proc = train(tmp_path, *args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_refuses_to_overwrite_a_run(tmp_path):
    train(tmp_path, "--epochs", "1", "--name", "once")
    proc = train(tmp_path, "--epochs", "1", "--name", "once", check=False)
    assert proc.returncode == 2 and "--resume" in proc.stderr
