"""Faults during training: ``python -m jwae_ext.train`` killed, interrupted, fed non-finite data,
out of disk space; each run then resumed and compared with one that was never disturbed.

Every run is a tiny one (the flags of test_train.py) in a subprocess. "Exact" means bit-identical
weights, metrics and test table: resuming replays from the last checkpoint (an epoch end, or the
step a signal stopped at) with the random state saved there, so whatever was lost after it is
recomputed identically.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from jwae_ext import checkpoint
from jwae_ext.config import TrainConfig, resolve
from jwae_ext.data import Vocabulary, collate, export_precomp
from jwae_ext.train import NonFiniteLoss, Trainer, epoch_batches

TINY = [
    "--train-images", "48", "--eval-images", "24", "--batch-size", "16",
    "--embed-size", "16", "--img-hidden", "16", "--word-dim", "8", "--warmup-epochs", "1",
    "--no-progress",
]  # fmt: skip
EPOCHS = ["--epochs", "4"]
# One thread: the tiny models train in a second, while two threads spinning on a shared CI
# machine take ten times as long.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SEED = int(os.environ.get("JWAE_FAULT_SEED", random.randrange(2**32)))


def command(run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "jwae_ext.train", "--run-dir", str(run_dir), *TINY, *args]


def train(run_dir: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(run_dir, *args), capture_output=True, text=True, timeout=300, env=ENV, **kwargs
    )


def start(run_dir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        command(run_dir, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )


def wait_for_line(proc: subprocess.Popen, prefix: str) -> bool:
    """Read ``proc``'s output up to a line starting with ``prefix``; False if it ended first."""
    return any(line.startswith(prefix) for line in proc.stdout)


def _records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]


def assert_same_run(run: Path, reference: Path) -> None:
    """Bit-identical weights (last and best), per-epoch metrics and test table."""
    for name in ("last.pt", "best.pt"):
        got, want = (checkpoint.load(r / name)["model"] for r in (run, reference))
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), f"{name}: {key} (seed {SEED})"
    assert _records(run) == _records(reference), f"metrics.jsonl (seed {SEED})"
    test = [json.loads((r / "test.json").read_text()) for r in (run, reference)]
    assert test[0] == test[1]
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def assert_intact(run: Path) -> None:
    """Whatever a killed run left: every file complete and readable."""
    json.loads((run / "config.json").read_text())
    Vocabulary.load(run / "vocab.json")
    if (run / "metrics.jsonl").exists():
        assert [r["epoch"] for r in _records(run)] == list(range(1, len(_records(run)) + 1))
    for name in ("last.pt", "best.pt"):
        if (run / name).exists():
            checkpoint.load(run / name)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The undisturbed run every other is compared with."""
    runs = tmp_path_factory.mktemp("straight")
    proc = train(runs, *EPOCHS, "--name", "straight")
    assert proc.returncode == 0, proc.stderr
    return runs / "straight"


def _epoch_seconds(run: Path) -> float:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return max(r["seconds"] for r in records)


# ---- kill -9 ------------------------------------------------------------------------------------


def test_kill_9_at_random_moments_then_resume_gives_the_undisturbed_run(straight, tmp_path):
    """Three kills: one in the first epoch (no checkpoint yet: the run starts again), then two
    at a random moment of the epoch after a checkpoint (mid-epoch, in validation or while saving:
    the run resumes from that checkpoint and replays what was lost)."""
    rng = random.Random(SEED)
    run = tmp_path / "run"
    span = 0.9 * _epoch_seconds(straight)
    kills = []
    for kill in range(3):
        resume = ["--resume"] if (run / "last.pt").exists() else []
        proc = start(tmp_path, *EPOCHS, "--name", "run", *resume)
        # The first kill lands in the first epoch; the others after this process's first save.
        reached = wait_for_line(proc, "run " if kill == 0 else "epoch ")
        delay = rng.uniform(0, span)
        time.sleep(delay)
        proc.kill()
        proc.communicate()
        last = checkpoint.load(run / "last.pt")["epoch"] if (run / "last.pt").exists() else None
        kills.append((reached, round(delay, 3), proc.returncode, last))
        assert_intact(run)
    resume = ["--resume"] if (run / "last.pt").exists() else []
    proc = train(tmp_path, *EPOCHS, "--name", "run", *resume)
    assert proc.returncode == 0, f"{proc.stderr}\nkills: {kills} (seed {SEED})"
    assert_same_run(run, straight)
    # Every kill hit a running process (one epoch of the four is left as headroom).
    assert [k[2] for k in kills] == [-signal.SIGKILL] * 3, kills


# ---- Ctrl-C and SIGTERM -------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_mid_epoch_and_resume_is_exact(straight, tmp_path, signum):
    proc = start(tmp_path, *EPOCHS, "--name", "run")
    assert wait_for_line(proc, "epoch 1/4")
    time.sleep(random.Random(SEED).uniform(0, 0.5 * _epoch_seconds(straight)))
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, stderr
    stopped = re.search(r"stopped by (\w+) at epoch (\d+), step (\d+); checkpoint saved to (\S+)\.",
                        stderr)  # fmt: skip
    assert stopped and "Continue with --resume" in stderr and "Traceback" not in stderr, stderr
    name, epoch, step, path = stopped.groups()
    assert name == signal.Signals(signum).name and Path(path) == tmp_path / "run" / "last.pt"
    state = checkpoint.load(path)
    assert (state["epoch"] + 1, state["step_in_epoch"]) == (int(epoch), int(step))
    assert 1 <= int(step) <= 15  # before the epoch's validation: 15 steps of 16 pairs
    proc = train(tmp_path, "--resume", "--name", "run")
    assert proc.returncode == 0, proc.stderr
    assert_same_run(tmp_path / "run", straight)


@pytest.mark.parametrize("epochs", [1, 2])
def test_signal_during_validation_stops_at_the_end_of_the_epoch(tmp_path, epochs):
    cfg = resolve(TrainConfig(
        run_dir=str(tmp_path), name="run", train_images=8, eval_images=4, batch_size=8,
        embed_size=8, img_hidden=8, word_dim=4, epochs=epochs, progress=False,
    ))  # fmt: skip
    trainer = Trainer(cfg)
    validate = trainer.validate

    def validate_while_signalled() -> dict:
        os.kill(os.getpid(), signal.SIGTERM)  # caught by the trainer's handler, a flag
        return validate()

    trainer.validate = validate_while_signalled
    with pytest.raises(SystemExit) as stopped:
        trainer.fit()
    assert stopped.value.code == 128 + signal.SIGTERM
    # Neither the next epoch nor (after the last one) the test ran; last.pt is that epoch's end.
    state = checkpoint.load(tmp_path / "run" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 0)
    assert not (tmp_path / "run" / "test.json").exists()


# ---- non-finite losses --------------------------------------------------------------------------

POISONED_IMAGE = 5  # its captions are pairs 25..29


@pytest.fixture
def precomp(tmp_path) -> tuple[Path, np.ndarray]:
    """A precomp copy of the tiny training set, and its features with image 5 made NaN."""
    folder = export_precomp(tmp_path / "data", sizes={"train": 48, "dev": 24})
    features = np.load(folder / "train_ims.npy")
    features[POISONED_IMAGE, 3] = np.nan
    return folder, features


def _poisoned_steps(epoch: int) -> list[int]:
    """The 1-based steps of ``epoch`` (0-based) whose batch holds a caption of image 5."""
    captions = set(range(5 * POISONED_IMAGE, 5 * POISONED_IMAGE + 5))
    return [
        step for step, batch in enumerate(epoch_batches(240, 16, 0, epoch), start=1)
        if captions & set(batch)
    ]  # fmt: skip


def test_nonfinite_loss_stops_naming_step_and_terms_or_skips(tmp_path, precomp):
    folder, poisoned = precomp
    args = ["--data", str(folder), "--name", "run"]
    assert train(tmp_path, *args, "--epochs", "1").returncode == 0
    run = tmp_path / "run"
    files = ("last.pt", "best.pt", "metrics.jsonl")
    before = {name: (run / name).read_bytes() for name in files}
    np.save(folder / "train_ims.npy", poisoned)

    proc = train(tmp_path, *args, "--resume", "--epochs", "2")
    assert proc.returncode == 3, proc.stderr
    step = _poisoned_steps(1)[0]
    message = re.search(
        rf"non-finite loss at epoch 2, step {step} \(global step {15 + step}\): terms (.*) = (.*);"
        " weights left as they were before this step", proc.stderr
    )  # fmt: skip
    assert message and "Traceback" not in proc.stderr, proc.stderr
    # The NaN image feature reaches the image code: the hinge, reconstruction and image prior
    # terms; the caption terms stay finite.
    assert message.group(1).split(", ") == ["match", "recon", "adv_img", "total"]
    assert {name: (run / name).read_bytes() for name in files} == before

    proc = train(tmp_path, *args, "--resume", "--epochs", "2", "--on-nonfinite", "skip")
    assert proc.returncode == 0, proc.stderr
    skipped = [int(s) for s in re.findall(r"skipping step: non-finite loss at epoch 2, step (\d+)",
                                          proc.stderr)]  # fmt: skip
    assert skipped == _poisoned_steps(1)
    weights = checkpoint.load(run / "last.pt")["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert [r["epoch"] for r in _records(run)] == [1, 2]
    assert all(math.isfinite(v) for v in _records(run)[1]["train"].values())


@pytest.mark.parametrize("on_nonfinite", ["stop", "skip"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_a_nonfinite_step_changes_no_weight_and_no_optimizer_state(tmp_path, on_nonfinite, value):
    cfg = resolve(TrainConfig(
        run_dir=str(tmp_path), name="run", train_images=8, eval_images=4, batch_size=8,
        embed_size=8, img_hidden=8, word_dim=4, on_nonfinite=on_nonfinite,
    ))  # fmt: skip
    trainer = Trainer(cfg)
    batch = collate([trainer.dataset[j] for j in range(8)])
    trainer.train_step(batch)  # optimizer states exist from here on
    before = copy.deepcopy(trainer._state())
    batch.images[2, 0] = value
    if on_nonfinite == "stop":
        with pytest.raises(NonFiniteLoss, match=r"epoch 1, step 1 \(global step 1\): terms match"):
            trainer.train_step(batch)
    else:
        assert trainer.train_step(batch) is None
    after = trainer._state()
    for part in ("model", "optimizer", "disc_optimizer"):
        assert _equal(after[part], before[part]), part


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# ---- disk full, unwritable run folder -----------------------------------------------------------


def test_disk_full_is_a_clear_error_and_the_previous_checkpoint_survives(straight, tmp_path):
    assert train(tmp_path, "--epochs", "1", "--name", "run").returncode == 0
    run = tmp_path / "run"
    last = (run / "last.pt").read_bytes()
    limit = len(last) // 2

    def disk_full():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    proc = train(tmp_path, *EPOCHS, "--resume", "--name", "run", preexec_fn=disk_full)
    assert proc.returncode == 2, proc.stderr
    assert re.search(rf"error: cannot write checkpoint {run}/(last|best)\.pt: File too large "
                     r"\(the previous checkpoint, if any, is intact\)", proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr
    assert (run / "last.pt").read_bytes() == last
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    # Space again: the resumed run repeats epoch 2 (its record replaces the one logged before the
    # failed save) and ends as the undisturbed run.
    proc = train(tmp_path, *EPOCHS, "--resume", "--name", "run")
    assert proc.returncode == 0, proc.stderr
    assert_same_run(run, straight)


def test_run_folder_that_cannot_be_created(tmp_path):
    (tmp_path / "runs").write_text("a file where the run folder should go")
    proc = train(tmp_path / "runs", "--epochs", "1")
    assert proc.returncode == 2
    assert f"error: [Errno 20] Not a directory: '{tmp_path / 'runs'}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_read_only_run_folder(tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o555)
    if os.access(probe, os.W_OK):
        pytest.skip("permissions do not stop this user (root) from writing")
    assert train(tmp_path, "--epochs", "1", "--name", "run").returncode == 0
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    run.chmod(0o555)
    try:
        proc = train(tmp_path, *EPOCHS, "--resume", "--name", "run")
    finally:
        run.chmod(0o755)
    assert proc.returncode == 2 and "Permission denied" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
