"""Checkpoints that survive crashes and never execute what they load.

Writing: to a temporary file in the same folder, flushed and fsynced, then renamed over the
target (atomic on POSIX) and the folder fsynced, so a reader sees the old checkpoint or the new
one, never a torn file, whenever the process dies. Reading: ``torch.load(weights_only=True)``,
which refuses any pickle that would construct arbitrary objects or run code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message names the file."""


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` with ``torch.save`` to ``path`` atomically; return the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise CheckpointError(f"cannot write checkpoint {path}: {err.strerror or err}") from err
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as err:
        # Leave the previous checkpoint in place and no partial file behind.
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise CheckpointError(
                f"cannot write checkpoint {path}: {err.strerror or err} "
                "(the previous checkpoint, if any, is intact)"
            ) from err
        raise
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
            f"jwae_ext (weights_only load failed: {str(err).splitlines()[0]})"
        ) from err
    if not isinstance(obj, dict) or "format" not in obj:
        raise CheckpointError(f"{path} is not a jwae_ext checkpoint (no 'format' entry)")
    return obj
