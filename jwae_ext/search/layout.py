"""The files of an index folder (docs/search.md, "Index layout") and reading them back.

An index folder holds one shard of a collection (the whole collection is shard ``0/1``):

- ``codes.npy``: the model's image codes, ``(n, d)`` for the pooled models, ``(n, R, d)`` region
  codes for SCAN; float32, or float16 (scores are still accumulated in float32);
- ``grams.npy``: SCAN only, float32 ``(n, R, R)``: each image's Gram matrix of its region codes
  (as read, float32), :func:`jwae_ext.ops.xattn_region_grams`: a query's cross-attention scores
  need them, and they do not depend on the query;
- ``caption_codes.npy``: the codes ``(m, d)`` of the indexed captions (pooled models only);
- ``image_ids.npy``: int64 ``(n,)``, each row's image id in the collection (its place in the
  collection's order; ids of unreadable images are missing), ascending;
- ``items.txt`` / ``captions.txt``: one JSON string per line (an image's name, a caption's text),
  with ``*.offsets.npy`` (int64, ``lines + 1`` byte offsets) for reading one line without the
  rest; ``caption_images.npy``: int64 ``(m,)``, each caption's image id;
- ``manifest.json``: what was indexed with what (:data:`MANIFEST_KEYS`), written last.

Every array is memory-mapped on reading; nothing is read whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

FORMAT = 1
MANIFEST = "manifest.json"
CODES, CAPTION_CODES, IMAGE_IDS = "codes.npy", "caption_codes.npy", "image_ids.npy"
GRAMS = "grams.npy"
ITEMS, CAPTIONS, CAPTION_IMAGES = "items.txt", "captions.txt", "caption_images.npy"
DTYPES = ("float32", "float16")
# What a manifest holds; shards of one collection agree on all but the shard's own entries.
MANIFEST_KEYS = (
    "format", "kind", "run", "checkpoint", "checkpoint_digest", "variant", "vocab_size",
    "source", "extraction", "embed_size", "regions", "dtype", "collection_images", "shard",
    "images", "captions", "skipped", "fingerprint",
)  # fmt: skip
SHARD_KEYS = ("shard", "images", "captions", "skipped", "fingerprint")
# Where the run was when a shard was built (shards built on several machines may differ there;
# the checkpoint digest says whether it is the same run).
LOCAL_KEYS = ("run", "checkpoint")


class IndexFormatError(ValueError):
    """An index folder that is missing, unfinished or damaged; the message names the folder."""


def offsets_name(lines_file: str) -> str:
    return lines_file.replace(".txt", ".offsets.npy")


def write_lines(f: BinaryIO, texts: Iterable[str], offsets: np.ndarray) -> None:
    """A :func:`jwae_ext.data.precomp.write_files` writer of a lines file (one JSON string per
    line: any text, newlines included), streamed from ``texts``; fills ``offsets`` (its
    ``lines + 1`` byte offsets, written next to it after)."""
    position, count = 0, 0
    for count, text in enumerate(texts, start=1):
        line = (json.dumps(text, ensure_ascii=False) + "\n").encode("utf-8")
        f.write(line)
        position += len(line)
        offsets[count] = position
    if count != len(offsets) - 1:
        raise ValueError(f"jwae_ext: {count} lines written, {len(offsets) - 1} expected")


class Lines:
    """One line of a lines file by number, read on demand (the file is not loaded)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offsets = np.load(path.with_name(offsets_name(path.name)), mmap_mode="r")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
        with open(self.path, "rb") as f:
            f.seek(start)
            return json.loads(f.read(stop - start).decode("utf-8"))


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of the finished index in ``folder``; :class:`IndexFormatError` when there is
    none (not an index, or its build was interrupted) or it is not one of this format."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IndexFormatError(f"jwae_ext: index folder {folder} does not exist")
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexFormatError(
            f"jwae_ext: {folder} is not a finished index (no {MANIFEST}; an interrupted build "
            "continues when python -m jwae_ext.index is run again with the same arguments)"
        ) from None
    except (OSError, ValueError) as err:
        raise IndexFormatError(f"jwae_ext: {folder / MANIFEST} is unreadable: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(
            f"jwae_ext: {folder / MANIFEST} is not an index manifest of format {FORMAT}"
        )
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise IndexFormatError(f"jwae_ext: {folder / MANIFEST} lacks {', '.join(missing)}")
    return manifest


def open_array(folder: Path, name: str, rows: int) -> np.ndarray:
    """Memory-map ``folder/name`` (copy-on-write: torch can view it, the file never changes),
    checking it has ``rows`` rows as the manifest says."""
    path = folder / name
    try:
        array = np.load(path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise IndexFormatError(
            f"jwae_ext: index file {path} is missing or damaged: {err}"
        ) from None
    if len(array) != rows:
        raise IndexFormatError(
            f"jwae_ext: index file {path} has {len(array)} rows, its manifest says {rows}"
        )
    return array
