"""Approximate search past exact: a pooled index's codes loaded into faiss (the ``faiss`` extra).

The codes are l2-normalized, so faiss's inner product is the index's own score (the cosine):
an exhaustive faiss search (IVF with ``nprobe = nlist``) ranks as :class:`~jwae_ext.search.Index`
does, up to float rounding; fewer probes (or HNSW) trade recall for time (docs/search.md,
"Approximate search with faiss", for recall@10 measured at 1M images). Codes are read from the
memory-mapped files block by block (float16 ones converted per block): faiss holds its own copy,
nothing else is held whole. faiss ids are the collection's image ids, over every shard given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import jwae_ext.search.layout as layout
from jwae_ext.search.topk import blocks

KINDS = ("ivf", "hnsw")
# Training rows per IVF list: faiss's k-means wants 30-256 points per centroid.
TRAIN_ROWS_PER_LIST = 64


def to_faiss(
    folders: str | os.PathLike | Sequence[str | os.PathLike],
    kind: str = "ivf",
    nlist: int = 1024,
    nprobe: int = 16,
    hnsw_m: int = 32,
    ef_search: int = 64,
):
    """A faiss index (inner product) of the pooled image codes of an index folder, or of every
    shard of one collection, with the collection's image ids as faiss ids.

    ``kind="ivf"``: ``IndexIVFFlat`` with ``nlist`` lists, trained on evenly spaced rows
    (:data:`TRAIN_ROWS_PER_LIST` per list), searched with ``nprobe`` lists (``nprobe = nlist``:
    exhaustive). ``kind="hnsw"``: ``IndexHNSWFlat`` with ``hnsw_m`` links per node, searched with
    ``ef_search``. Change the search settings later through ``faiss.extract_index_ivf(i).nprobe``
    or ``faiss.downcast_index(i.index).hnsw.efSearch``. ``index.search(queries, k)`` takes float32
    query codes ``(Q, d)`` (e.g. :func:`jwae_ext.encoding.caption_codes`) and returns
    ``(scores, image_ids)``.
    """
    faiss = _import_faiss()
    if kind not in KINDS:
        raise ValueError(f"jwae_ext: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    for name, value in (("nlist", nlist), ("nprobe", nprobe), ("hnsw_m", hnsw_m),
                        ("ef_search", ef_search)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"jwae_ext: {name} must be an integer >= 1, got {value!r}")
    shards = _pooled_shards(folders)
    dim, total = shards[0][0].shape[1], sum(len(codes) for codes, _ in shards)
    if kind == "ivf" and nlist > total:
        raise ValueError(f"jwae_ext: nlist must be at most the {total} indexed images, got {nlist}")
    if kind == "ivf":
        index = faiss.IndexIVFFlat(
            faiss.IndexFlatIP(dim), dim, int(nlist), faiss.METRIC_INNER_PRODUCT
        )
        index.train(_training_rows(shards, TRAIN_ROWS_PER_LIST * int(nlist)))
        index.nprobe = min(int(nprobe), int(nlist))
    else:
        graph = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efSearch = int(ef_search)
        index = faiss.IndexIDMap2(graph)  # faiss's wrapper keeps ``graph`` alive
    for codes, ids in shards:
        for start, stop in blocks(len(codes), 4 * dim):
            index.add_with_ids(np.ascontiguousarray(codes[start:stop], np.float32), ids[start:stop])
    return index


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError(
            "jwae_ext: approximate search needs faiss: pip install 'jwae_ext[faiss]' (faiss-cpu)"
        ) from None
    return faiss


def _pooled_shards(folders) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(codes, image_ids)`` memory-mapped, per shard folder; pooled indexes only."""
    paths = [Path(folders)] if isinstance(folders, (str, os.PathLike)) else list(map(Path, folders))
    if not paths:
        raise ValueError("jwae_ext: give at least one index folder")
    out = []
    for folder in paths:
        manifest = layout.read_manifest(folder)
        if manifest["kind"] != "pooled":
            raise ValueError(
                f"jwae_ext: index {folder} holds {manifest['kind']} codes; faiss takes one "
                "pooled code per image (SCAN's score compares a caption's words with every "
                "region: search it exactly with Index)"
            )
        out.append(
            (
                layout.open_array(folder, layout.CODES, manifest["images"]),
                layout.open_array(folder, layout.IMAGE_IDS, manifest["images"]),
            )
        )
    return out


def _training_rows(shards: list[tuple[np.ndarray, np.ndarray]], wanted: int) -> np.ndarray:
    """About ``wanted`` evenly spaced rows over all shards, float32 (all rows when fewer)."""
    step = max(1, sum(len(codes) for codes, _ in shards) // wanted)
    return np.concatenate([np.asarray(codes[::step], np.float32) for codes, _ in shards])
