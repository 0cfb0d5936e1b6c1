"""Bad and untrusted files: data, vocabularies, configurations and checkpoints.

What test_data_*.py already covers (truncated or wrong-dtype ``.npy``, caption counts, non-UTF-8
bytes, empty lines, missing splits, malformed vocabularies, pickled ``.npy`` arrays, fuzzing of
the readers) is not repeated here. This file adds forged headers, writers that fail midway (a
full disk is simulated with ``RLIMIT_FSIZE``, which works for root too), checkpoints and configs
that are damaged or crafted to run code, and the trainer's command line on such files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jwae_ext import checkpoint
from jwae_ext.config import TrainConfig, from_args, resolve
from jwae_ext.data import (
    Vocabulary,
    export_precomp,
    load_precomp,
    write_precomp,
    write_precomp_splits,
)
from jwae_ext.data.precomp import read_features
from jwae_ext.losses import VARIANTS

TINY = [
    "--train-images", "48", "--eval-images", "24", "--batch-size", "16",
    "--embed-size", "16", "--img-hidden", "16", "--word-dim", "8", "--warmup-epochs", "1",
    "--no-progress",
]  # fmt: skip
# One thread: the tiny models train in a second, while two threads spinning on a shared CI
# machine take ten times as long.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def train(run_dir: Path, *args: str, **popen) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jwae_ext.train", "--run-dir", str(run_dir), *TINY, *args],
        capture_output=True, text=True, timeout=300, env=ENV, **popen,
    )  # fmt: skip


@contextlib.contextmanager
def file_size_limit(limit: int):
    """A full disk for this process: writes beyond ``limit`` bytes fail with EFBIG (SIGXFSZ,
    which would kill the process, is ignored)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _features(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


# Files pickled by plain pickle make torch warn about their protocol before it refuses them.
PICKLE_PROTOCOL_WARNING = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


# ---- feature files ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2**32, 2**32), (2**31, 2**31, 4), (2**62, 2)])
def test_forged_header_with_a_huge_shape_names_the_file(tmp_path, shape):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    path = tmp_path / "train_ims.npy"
    path.write_bytes(header.getvalue())
    with pytest.raises(ValueError, match="is truncated") as raised:
        read_features(path)
    assert str(path) in str(raised.value)


def test_fortran_order_features_are_read_as_written(tmp_path):
    features = np.asfortranarray(_features(3, 5))
    np.save(tmp_path / "train_ims.npy", features)
    (tmp_path / "train_caps.txt").write_text("a\nb\nc\n")
    assert np.array_equal(np.asarray(load_precomp(tmp_path, "train").images), features)


_DTYPES = ["<f4", ">f4", "<f8", "<i4", "|u1", "<f2"]


@given(
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple),
    descr=st.sampled_from(_DTYPES),
    fortran=st.booleans(),
    extra=st.integers(-6, 6),
)
def test_feature_reader_fuzz_headers(tmp_path_factory, shape, descr, fortran, extra):
    """Any well-formed header with a payload of any length: the array as numpy reads it, or an
    error naming the file."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": descr, "fortran_order": fortran, "shape": shape}
    )
    size = int(np.prod(shape)) * np.dtype(descr).itemsize
    payload = bytes(range(256)) * (max(size + extra, 0) // 256 + 1)
    path = tmp_path_factory.mktemp("ims") / "x_ims.npy"
    path.write_bytes(header.getvalue() + payload[: max(size + extra, 0)])
    try:
        features = read_features(path)
    except ValueError as err:
        assert str(path) in str(err)
    else:
        assert descr == "<f4" and extra == 0 and len(shape) in (2, 3) and 0 not in shape
        want = np.load(path)
        if len(shape) == 3:  # regions are pooled in float64 (see PooledRegions), then rounded
            want = want.mean(1, dtype=np.float64).astype(np.float32)
        assert np.array_equal(np.asarray(features), want, equal_nan=True)  # payload bytes hold NaNs


# ---- vocabularies and configurations ------------------------------------------------------------


@pytest.mark.parametrize("text", ["[" * 100_000, '{"word2idx": ' + "[" * 50_000 + "]" * 50_000])
def test_deeply_nested_vocabulary_json_names_the_file(tmp_path, text):
    path = tmp_path / "vocab.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="not valid JSON") as raised:
        Vocabulary.load(path)
    assert str(path) in str(raised.value)


def _saved_run(tmp_path: Path, **config) -> Path:
    """A run folder holding only a config.json (what --resume reads first)."""
    run = tmp_path / "run"
    run.mkdir()
    values = dataclasses.asdict(resolve(TrainConfig(name="run", run_dir=str(tmp_path))))
    (run / "config.json").write_text(json.dumps({**values, **config}))
    return run


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "expected a JSON object"),
        ("{" * 1, "Expecting property name"),
        ("[" * 100_000, "recursion"),
        (b"\xff\xfe{}", "codec can't decode"),
        ({"epochs": "ten"}, "'epochs' must be of type int"),
        ({"lr": True}, "'lr' must be of type float"),
        ({"progress": 1}, "'progress' must be of type bool"),
        ({"margin": float("nan")}, "--margin must be finite"),
        ({"lambda_rec": float("inf")}, "--lambda-rec must be finite"),
        ({"variant": "clip"}, "--variant must be one of"),
        ({"protocol": "10k"}, "--protocol must be one of"),
        ({"batch_size": -4}, "--batch-size must be >= 1"),
    ],
)
def test_damaged_config_json_is_a_value_error_naming_the_file(tmp_path, content, message):
    run = _saved_run(tmp_path, **(content if isinstance(content, dict) else {}))
    if isinstance(content, bytes):
        (run / "config.json").write_bytes(content)
    elif isinstance(content, str):
        (run / "config.json").write_text(content)
    with pytest.raises(ValueError, match=message) as raised:
        from_args(["--resume", "--name", "run", "--run-dir", str(tmp_path)])
    assert f"--resume: {run / 'config.json'} is not a valid run configuration" in str(raised.value)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)


@given(
    st.dictionaries(st.sampled_from([f.name for f in dataclasses.fields(TrainConfig)]), _json)
)
def test_config_json_fuzz(tmp_path_factory, edits):
    """Any JSON values for any fields: a checked configuration or a ValueError, nothing else."""
    run = _saved_run(tmp_path_factory.mktemp("cfg"), **edits)
    try:
        cfg = resolve(from_args(["--resume", "--name", "run", "--run-dir", str(run.parent)]))
    except ValueError:
        return
    assert cfg.epochs >= 1 and cfg.lr > 0 and cfg.variant in VARIANTS


# ---- writers that fail midway leave nothing behind ----------------------------------------------


def test_export_that_fails_at_a_later_split_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="num_images must be a positive integer"):
        export_precomp(tmp_path / "new" / "folder", sizes={"train": 2, "dev": 0})
    assert list(tmp_path.iterdir()) == []
    write_precomp(tmp_path, "train", _features(2, 3), ["a", "b"])
    before = _listing(tmp_path)
    with pytest.raises(ValueError, match="splits"):
        export_precomp(tmp_path, sizes={"train": 2, "val": 1})
    assert _listing(tmp_path) == before


def test_full_disk_while_writing_a_split_keeps_the_previous_one(tmp_path):
    write_precomp(tmp_path, "train", _features(2, 3), ["a", "b"])
    before = _listing(tmp_path)
    with file_size_limit(4096), pytest.raises(OSError, match="too large"):
        write_precomp(tmp_path, "train", _features(200, 50), ["c"] * 200)
    assert _listing(tmp_path) == before
    with file_size_limit(4096), pytest.raises(OSError, match="too large"):
        write_precomp_splits(
            tmp_path / "a" / "b", {"train": (_features(2, 3), ["x", "y"]), "test": (_features(
                300, 4), ["z"] * 300)}
        )  # fmt: skip
    assert not (tmp_path / "a").exists()


def test_full_disk_while_saving_a_vocabulary_keeps_the_previous_one(tmp_path):
    path = tmp_path / "vocab.json"
    Vocabulary(["small"]).save(path)
    before = _listing(tmp_path)
    with file_size_limit(512), pytest.raises(OSError, match="too large"):
        Vocabulary([f"word{i}" for i in range(1000)]).save(path)
    assert _listing(tmp_path) == before


# ---- checkpoints --------------------------------------------------------------------------------


def _state(size: int) -> dict:
    return {"format": 1, "weights": torch.arange(size, dtype=torch.float32)}


def test_full_disk_while_saving_a_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic(_state(10), path)
    before = _listing(tmp_path)
    with file_size_limit(64 * 1024), pytest.raises(checkpoint.CheckpointError) as raised:
        checkpoint.save_atomic(_state(100_000), path)
    assert str(path) in str(raised.value) and "too large" in str(raised.value)
    assert "previous checkpoint, if any, is intact" in str(raised.value)
    assert _listing(tmp_path) == before
    assert torch.equal(checkpoint.load(path)["weights"], _state(10)["weights"])


def test_temporary_files_of_a_killed_save_are_removed_by_the_next(tmp_path):
    stale = [tmp_path / ".last.pt.k1ll3d.tmp", tmp_path / ".last.pt.0ther.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    (tmp_path / ".best.pt.x.tmp").write_bytes(b"another file's")
    checkpoint.save_atomic(_state(3), tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best.pt.x.tmp", "last.pt"]


def _damaged(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.pt"
    checkpoint.save_atomic(_state(1000), good)
    data = good.read_bytes()
    files = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "bit flip in the header": data[:3] + bytes([data[3] ^ 0xFF]) + data[4:],
        "random bytes": bytes(range(256)) * 8,
        "JSON": b'{"format": 1}',
        "a plain-data pickle without 'format'": pickle.dumps({"weights": [1.0]}),
        "a list": None,
    }
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{len(paths)}.pt"
        if content is None:
            torch.save([1, 2], paths[name])
        else:
            paths[name].write_bytes(content)
    paths["a folder"] = tmp_path / "folder.pt"
    paths["a folder"].mkdir()
    return paths


@PICKLE_PROTOCOL_WARNING
def test_damaged_checkpoints_are_checkpoint_errors_naming_the_file(tmp_path):
    for name, path in _damaged(tmp_path).items():
        with pytest.raises(checkpoint.CheckpointError) as raised:
            checkpoint.load(path)
        assert str(path) in str(raised.value), name


# ---- files crafted to run code when unpickled ---------------------------------------------------


class Exploit:
    """Unpickling this calls ``open(marker, "w")``, creating the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _crafted(path: Path, marker: Path, as_torch_zip: bool) -> Path:
    payload = {"format": 1, "model": Exploit(marker)}
    if as_torch_zip:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


def test_the_exploit_works_when_unpickled(tmp_path):
    """The crafted files below would run code with a plain unpickle (the tests would be empty
    otherwise)."""
    marker = tmp_path / "PWNED"
    pickle.loads(_crafted(tmp_path / "x.pkl", marker, as_torch_zip=False).read_bytes())
    assert marker.exists()
    marker.unlink()
    torch.load(_crafted(tmp_path / "x.pt", marker, as_torch_zip=True), weights_only=False)
    assert marker.exists()


@PICKLE_PROTOCOL_WARNING
@pytest.mark.parametrize("as_torch_zip", [True, False])
def test_crafted_checkpoint_is_refused_without_running_it(tmp_path, as_torch_zip):
    marker = tmp_path / "PWNED"
    path = _crafted(tmp_path / "last.pt", marker, as_torch_zip)
    with pytest.raises(checkpoint.CheckpointError, match="refusing to load") as raised:
        checkpoint.load(path)
    assert str(path) in str(raised.value)
    assert not marker.exists()


def test_crafted_vocabulary_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "PWNED"
    path = _crafted(tmp_path / "vocab.json", marker, as_torch_zip=False)
    with pytest.raises(ValueError, match="not valid JSON"):
        Vocabulary.load(path)
    assert not marker.exists()


# ---- the command lines on such files ------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A completed one-epoch run (last.pt at its final epoch, best.pt, vocab.json, ...)."""
    runs = tmp_path_factory.mktemp("runs")
    proc = train(runs, "--epochs", "1", "--name", "done")
    assert proc.returncode == 0, proc.stderr
    return runs / "done"


def _copy_run(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / run.name
    copy.mkdir()
    for path in run.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    return copy


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_resume_refuses_a_crafted_checkpoint_without_running_it(finished_run, tmp_path, name):
    """last.pt is read when the run resumes, best.pt when the resumed (finished) run tests."""
    run = _copy_run(finished_run, tmp_path)
    marker = tmp_path / "PWNED"
    _crafted(run / name, marker, as_torch_zip=True)
    proc = train(tmp_path, "--resume", "--name", run.name)
    assert proc.returncode == 2, proc.stderr
    assert f"refusing to load checkpoint {run / name}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_evaluate_refuses_a_crafted_checkpoint_without_running_it(finished_run, tmp_path):
    from jwae_ext import evaluate

    if not hasattr(evaluate, "main"):
        pytest.skip("python -m jwae_ext.evaluate does not exist yet (issue 6)")
    marker = tmp_path / "PWNED"
    crafted = _crafted(tmp_path / "model.pt", marker, as_torch_zip=True)
    proc = subprocess.run(
        [sys.executable, "-m", "jwae_ext.evaluate", str(crafted), "--data", "synthetic-a",
         "--split", "test"],
        capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert str(crafted) in proc.stderr
    assert not marker.exists()


def test_training_on_a_damaged_folder_names_the_file_and_leaves_no_run(tmp_path):
    data = tmp_path / "data"
    export_precomp(data, sizes={"train": 4, "dev": 2})
    (data / "dev_caps.txt").write_bytes(b"fine\n" * 6 + b"caf\xe9\n" + b"fine\n" * 3)
    proc = train(tmp_path / "runs", "--data", str(data), "--name", "bad")
    assert proc.returncode == 2
    assert f"{data / 'dev_caps.txt'}, line 7: not valid UTF-8" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_ctrl_c_while_loading_data_exits_with_a_message(tmp_path):
    """A caption file that is a FIFO blocks the loader until the test lets go of it."""
    data = tmp_path / "data"
    export_precomp(data, sizes={"train": 4, "dev": 2})
    (data / "train_caps.txt").unlink()
    os.mkfifo(data / "train_caps.txt")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jwae_ext.train", "--run-dir", str(tmp_path), *TINY,
         "--data", str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        # A shell starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT
        # ignored; the trainer must see the Ctrl-C of an interactive terminal.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    writer = _open_when_read(data / "train_caps.txt", proc)
    _wait_until_blocked_reading(proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    os.close(writer)
    assert proc.returncode == 128 + signal.SIGINT
    assert "interrupted" in stderr and "Traceback" not in stderr


def _open_when_read(fifo: Path, proc: subprocess.Popen) -> int:
    """Open ``fifo`` for writing once ``proc`` has opened it for reading (then blocks reading)."""
    for _ in range(6000):
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
    raise AssertionError("the trainer never opened the caption file")


def _wait_until_blocked_reading(proc: subprocess.Popen, seconds: float = 10.0) -> None:
    """Wait until ``proc``'s main thread sleeps in a pipe read.

    A SIGINT that lands after the reader's ``open`` returned but before its ``read`` started only
    trips Python's flag, which nothing checks before ``read`` blocks: the child would wait on the
    FIFO forever (4 runs in 100 here). Once the thread sleeps in ``read``, the signal interrupts
    it. Kernels name that sleep ``pipe_read`` or ``anon_pipe_read`` (older ones ``pipe_wait``);
    where ``wchan`` is hidden, the deadline stands in for it.
    """
    wchan = Path(f"/proc/{proc.pid}/wchan")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if any(name in wchan.read_text() for name in ("pipe_read", "pipe_wait")):
                return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.005)
