"""Checkpoints that survive crashes and never execute what they load.

Writing: to a temporary file in the same folder, flushed and fsynced, then renamed over the
target (atomic on POSIX) and the folder fsynced, so a reader sees the old checkpoint or the new
one, never a torn file, whenever the process dies. Reading: ``torch.load(weights_only=True)``,
which refuses any pickle that would construct arbitrary objects or run code.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint (or another run file) cannot be written or read; the message names the file."""


class _RecordingWriter:
    """A file that remembers why a write failed: ``torch.save`` reports a failed write (a full
    disk, a file size limit) only as an opaque error of its zip writer."""

    def __init__(self, file) -> None:
        self._file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self._file.flush()


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` with ``torch.save`` to ``path`` atomically; return the path.

    Temporary files left by a writer that was killed mid-save are removed once the new checkpoint
    is in place.
    """
    return _write_atomic(path, lambda f: torch.save(obj, f), "checkpoint")


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (as :func:`save_atomic`); return the path."""
    return _write_atomic(path, lambda f: f.write(text.encode("utf-8")), "file")


def _write_atomic(path: str | os.PathLike, write: Callable[[Any], object], what: str) -> Path:
    path = Path(path)
    prefix = f".{path.name}."
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise CheckpointError(f"cannot write {what} {path}: {err.strerror or err}") from err
    writer = None
    try:
        with os.fdopen(fd, "wb") as f:
            writer = _RecordingWriter(f)
            write(writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as err:
        # Leave the previous file in place and no partial file behind.
        Path(tmp).unlink(missing_ok=True)
        cause = err if isinstance(err, OSError) else writer and writer.error
        if cause:
            raise CheckpointError(
                f"cannot write {what} {path}: {cause.strerror or cause} "
                f"(the previous {what}, if any, is intact)"
            ) from err
        raise
    for stale in path.parent.glob(f"{prefix}*.tmp"):
        stale.unlink(missing_ok=True)
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_atomic`, refusing anything but plain data."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"refusing to load checkpoint {path}: it is not a plain-data checkpoint written by "
            f"jwae_ext (weights_only load failed: {_first_line(err)})"
        ) from err
    if not isinstance(obj, dict) or "format" not in obj:
        raise CheckpointError(f"{path} is not a jwae_ext checkpoint (no 'format' entry)")
    return obj


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
