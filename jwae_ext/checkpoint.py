"""Checkpoints that survive crashes and never execute what they load, and what they hold.

The layout of a training checkpoint is :class:`TrainingState`: the trainer writes it
(:meth:`TrainingState.to_checkpoint`) and reads it back for ``--resume``
(:func:`load_training_state`); evaluation rebuilds the trained model from it (:func:`load_model`).

Writing: to a temporary file in the same folder, flushed and fsynced, then renamed over the
target (atomic on POSIX) and the folder fsynced, so a reader sees the old checkpoint or the new
one, never a torn file, whenever the process dies. Reading: ``torch.load(weights_only=True)``,
which refuses any pickle that would construct arbitrary objects or run code.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from jwae_ext.config import saved_config
from jwae_ext.data import Vocabulary
from jwae_ext.data.vocab import SPECIAL_TOKENS
from jwae_ext.data.word_vectors import WordVectorsMissing, load_recorded
from jwae_ext.grounding.models import GroundingConfig, GroundingModel
from jwae_ext.models import JointModel, ModelConfig, build_model

CHECKPOINT_FORMAT = 1


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


def load(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", *, mmap: bool = False
) -> dict:
    """Read a checkpoint written by :func:`save_atomic`, refusing anything but plain data.
    ``mmap``: its tensors are mapped from the file, read only where used (a model loaded for
    inference then never holds the optimizer's state in memory)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
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


# ---- what a training checkpoint holds -------------------------------------------------------


@dataclass
class TrainingState:
    """A training checkpoint (``last.pt``, ``best.pt``): plain data and tensors only, so that a
    ``weights_only`` load reads it. The first five entries describe the trained model (what
    :func:`load_model` needs); the rest is where the trainer stands."""

    config: dict  # the run's TrainConfig, as dataclasses.asdict gives it
    model_config: dict  # the ModelConfig
    vocab: list[str]  # Vocabulary.idx2word: the special tokens, then the words
    model: dict  # the model's state_dict() (never the frozen word vectors' matrix)
    word_vectors: dict | None  # the VectorsSource of the model's word vectors, if any
    optimizer: dict
    disc_optimizer: dict
    epoch: int  # epochs completed
    step_in_epoch: int  # steps completed in the current epoch
    global_step: int
    best_rsum: float
    epoch_sums: dict[str, float]  # the current epoch's summed loss terms so far
    epoch_counted: int  # ... over this many counted steps
    rng: list | None  # every rank's generator states in rank order (None where not rank 0)

    def to_checkpoint(self) -> dict:
        """What the checkpoint file holds (write it with :func:`save_atomic`): the entries, with
        the layout's ``format``."""
        entries = {f.name: getattr(self, f.name) for f in fields(self)}  # no copy of the tensors
        return {"format": CHECKPOINT_FORMAT, **entries}


# What describes the trained model: all that evaluation reads.
_MODEL_ENTRIES = ("config", "model_config", "vocab", "model")
# Entries that older checkpoints lack, and their meaning there: a checkpoint at an epoch's end,
# a model without pretrained word vectors.
_DEFAULTS = {"epoch_sums": {}, "epoch_counted": 0, "word_vectors": None}


def load_training_state(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> TrainingState:
    """Read the :class:`TrainingState` of a checkpoint (one written by an earlier version too:
    missing partial-epoch sums are empty, a single ``rng`` state is one process's)."""
    entries = {**_DEFAULTS, **load(path, map_location)}
    names = [f.name for f in fields(TrainingState)]
    _require(entries, names, path)
    state = TrainingState(**{name: entries[name] for name in names})
    state.epoch_sums = dict(state.epoch_sums)
    if not isinstance(state.rng, list):
        state.rng = [state.rng]
    return state


def _require(entries: dict, names: list[str] | tuple[str, ...], path: str | os.PathLike) -> None:
    missing = [name for name in names if name not in entries]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")


@dataclass
class LoadedModel:
    """A trained model rebuilt from a checkpoint, with its vocabulary and training settings."""

    path: Path
    model: JointModel  # a GroundingModel for a phrase-localization run
    vocab: Vocabulary
    config: dict  # the run's TrainConfig as saved


def checkpoint_file(path: str | Path) -> Path:
    """``path`` itself, or for a run folder its ``best.pt`` (``last.pt`` when there is none)."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in ("best.pt", "last.pt"):
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"run folder {path} holds no checkpoint (best.pt or last.pt)")


def load_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild the model saved in checkpoint ``path`` (a file or a run folder) on ``device``."""
    path = checkpoint_file(path)
    state = {**_DEFAULTS, **load(path, map_location=device, mmap=True)}
    _require(state, _MODEL_ENTRIES, path)
    words = state["vocab"]
    if not isinstance(words, list) or tuple(words[:4]) != SPECIAL_TOKENS:
        raise CheckpointError(f"checkpoint {path}: 'vocab' is not a jwae_ext vocabulary list")
    try:
        config = dict(state["config"])
        train = saved_config(config)
        vocab = Vocabulary(words[len(SPECIAL_TOKENS) :])
        vectors = None if state["word_vectors"] is None else load_recorded(state["word_vectors"])
        if vectors is not None:
            vocab = vocab.with_vectors(vectors.words)
        if train.task == "grounding":
            model = GroundingModel(GroundingConfig(**state["model_config"]))
        else:
            model = build_model(
                train.variant,
                ModelConfig(**state["model_config"]),
                train.xattn_config,
                vectors.module_for(vocab.idx2word) if vectors else None,
            )
        model.load_state_dict(state["model"])
    except WordVectorsMissing as err:
        raise CheckpointError(f"checkpoint {path}: {err}") from err
    except (TypeError, ValueError, RuntimeError) as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {path} does not describe a valid model: {first}"
        ) from err
    return LoadedModel(path, model.to(device), vocab, config)
