"""Building an index folder: the model's codes of a collection, streamed in batches.

Codes go batch by batch into memory-mapped arrays in ``INDEX/.index-partial/`` (the feature
extractor's resumable work area, :class:`jwae_ext.extract.partial.PartialExtraction`): a build
killed at any point loses at most its batch in flight, and the same command continues it (same
run, collection, settings: the same fingerprint). Batches start at fixed positions, so a resumed
build writes the same bytes as an uninterrupted one. The finished files are written in one
transaction (:func:`jwae_ext.data.precomp.write_files`), the manifest last: an index folder is
complete or has no manifest. Memory: one batch of features and codes. The collection's names,
captions and ids are streamed through files of a scratch folder in ``INDEX`` (``.index-items-*``,
removed when the build ends) and memory-mapped (:class:`~jwae_ext.search.items.PackedItems`), so
the build's own memory does not grow with the number of images.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import jwae_ext.search.layout as layout
from jwae_ext import ops
from jwae_ext.checkpoint import checkpoint_file, load_model
from jwae_ext.data.precomp import write_array, write_bytes, write_files
from jwae_ext.encoding import caption_codes, image_codes
from jwae_ext.extract.partial import PartialExtraction
from jwae_ext.models import SCAN
from jwae_ext.search.items import Item, PackedItems
from jwae_ext.search.sources import Collection, from_data, from_images

WORK_DIR = ".index-partial"
SCRATCH_PREFIX = ".index-items-"  # the items' files during a build, removed after it
_CHUNK = 1 << 16  # images per step where ids and counts are streamed
ENCODE_ROWS = 1024  # images or captions per encoder call, at most
ENCODE_BYTES = 4 * 2**20  # features or codes (float32) of the images per encoder call, at most
_CODES, _CAPTION_CODES, _GRAMS = "codes", "caption_codes", "grams"


@dataclass
class BuildSummary:
    """What a build produced: this shard's images and captions, the images skipped (unreadable
    files: one line each), the images an earlier interrupted run had done, and the throughput of
    this run (0 when there was nothing to do)."""

    out: Path
    images: int
    captions: int
    skipped: list[str]
    resumed: int
    seconds: float
    images_per_second: float


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index = count = -1
    if not 0 <= index < count:
        raise ValueError(f"jwae_ext: --shard must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return index, count


def file_digest(path: Path) -> str:
    """sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_index(
    run: str | os.PathLike,
    out: str | os.PathLike,
    *,
    data: str | None = None,
    images: str | os.PathLike | None = None,
    captions: str | os.PathLike | None = None,
    dtype: str = "float32",
    shard: str | tuple[int, int] = (0, 1),
    batch_size: int = 256,
    device: str = "cpu",
    restart: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> BuildSummary:
    """Index the collection ``data`` (``NAME[:SPLIT]``) or ``images`` (a folder, with the
    ``captions`` file) with the trained run ``run`` into the folder ``out``; see the module
    docstring and docs/search.md."""
    if (data is None) == (images is None):
        raise ValueError("jwae_ext: give exactly one of --data and --images")
    if captions is not None and images is None:
        raise ValueError("jwae_ext: --captions goes with --images (--data folders hold theirs)")
    if dtype not in layout.DTYPES:
        raise ValueError(f"jwae_ext: --dtype must be float32 or float16, got {dtype!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"jwae_ext: --batch-size must be an integer >= 1, got {batch_size!r}")
    shard = parse_shard(shard) if isinstance(shard, str) else shard
    out = Path(out)
    loaded = load_model(run, device)
    if loaded.config.get("task") == "grounding":
        raise ValueError(
            f"jwae_ext: RUN {loaded.path} is a phrase-localization run; only retrieval runs "
            "can be indexed"
        )
    loaded.model.eval()
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=out) as scratch:
            return _build(
                loaded, run, out, Path(scratch), data=data, images=images, captions=captions,
                dtype=dtype, shard=shard, batch_size=batch_size, device=device, restart=restart,
                progress=progress, log=log,
            )  # fmt: skip
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()  # a build refused before its first file leaves no folder behind
        raise


def _build(loaded, run, out, scratch, *, data, images, captions, dtype, shard, batch_size,
           device, restart, progress, log) -> BuildSummary:  # fmt: skip
    """build_index once the run is loaded, with ``scratch`` for the collection's items."""
    if data is not None:
        collection = from_data(loaded, data, device, scratch)
    else:
        caption_file = None if captions is None else str(captions)
        collection = from_images(loaded, images, caption_file, device, scratch)
    first, stop = _shard_range(len(collection.items), shard)
    items = collection.items[first:stop]
    digest = file_digest(checkpoint_file(run))
    scan = isinstance(loaded.model, SCAN)
    fingerprint = _fingerprint(collection, items, first, digest, dtype, shard, batch_size)
    done = _finished(out, fingerprint, restart)
    if done is not None:
        log(f"{out} already holds this index (nothing to do)")
        return done
    d = loaded.model.cfg.embed_size
    shapes = {_CODES: (len(items), *([collection.regions] if scan else []), d)}
    if scan:
        shapes[_GRAMS] = (len(items), collection.regions, collection.regions)
    else:
        shapes[_CAPTION_CODES] = (items.caption_count(), d)
    work, resumed = PartialExtraction.open(
        out, fingerprint, shapes, dtype=np.dtype(dtype), dtypes={_GRAMS: np.float32},
        restart=restart, work_dir=WORK_DIR, what="index build",
    )  # fmt: skip
    already = work.progress[_CODES].next
    if resumed:
        log(f"continuing an interrupted index build: {already} of {len(items)} images done")
    start_time = time.perf_counter()
    with tqdm(total=len(items) - already, unit="img", disable=not progress, desc="index") as bar:
        for start in range(already, len(items), batch_size):
            end = min(start + batch_size, len(items))
            _index_batch(work, loaded, collection, items, first, start, end, device, dtype)
            bar.update(end - start)
    seconds = time.perf_counter() - start_time
    manifest = _manifest(loaded, run, digest, collection, scan, d, dtype, shard, fingerprint)
    summary = _finish(out, work, items, first, manifest, scratch)
    todo = len(items) - already
    summary.resumed, summary.seconds = already, seconds
    summary.images_per_second = todo / seconds if todo and seconds > 0 else 0.0
    work.remove()
    return summary


def _shard_range(n: int, shard: tuple[int, int]) -> tuple[int, int]:
    index, count = shard
    first, stop = index * n // count, (index + 1) * n // count
    if first == stop:
        raise ValueError(
            f"jwae_ext: --shard {index}/{count}: the collection has only {n} images, this "
            "shard would hold none"
        )
    return first, stop


def _index_batch(work, loaded, collection, items, first, start, end, device, dtype) -> None:
    """Codes of the shard's images ``start:end`` (and of their captions) into the work area,
    committed together. They go through the encoders in parts of at most ENCODE_BYTES of
    features or codes (and ENCODE_ROWS rows): those parts, not ``--batch-size``, set the build's
    memory (a SCAN image's regions are hundreds of KB; a large batch only commits less often)."""
    regions = collection.regions or 1
    row_bytes = 4 * regions * max(loaded.model.cfg.img_dim, loaded.model.cfg.embed_size)
    step = max(1, min(ENCODE_ROWS, ENCODE_BYTES // row_bytes))
    skipped = []
    for part in range(start, end, step):
        part_end = min(part + step, end)
        feats, part_skipped = collection.features(first + part, first + part_end)
        skipped += part_skipped
        gone = {position for position, _, _ in part_skipped}
        kept = [item for p, item in enumerate(items[part:part_end], first + part) if p not in gone]
        if kept:
            stored = image_codes(loaded.model, feats, device).cpu().numpy().astype(dtype)
            work.write(_CODES, stored)
            if _GRAMS in work.arrays:  # from the codes as a query reads them back (float32)
                as_read = torch.from_numpy(stored.astype(np.float32))
                work.write(_GRAMS, ops.xattn_region_grams(as_read).numpy())
        if _CAPTION_CODES in work.arrays:
            texts = [c for item in kept for c in item.captions]
            for first_text in range(0, len(texts), ENCODE_ROWS):
                some = texts[first_text : first_text + ENCODE_ROWS]
                codes = caption_codes(loaded.model, loaded.vocab, some, device)
                work.write(_CAPTION_CODES, codes.cpu().numpy().astype(dtype))
    done = {name: (end, skipped if name == _CODES else []) for name in work.arrays}
    work.commit_many(done)


def _fingerprint(
    collection: Collection,
    items: Sequence[Item],
    first: int,
    digest: str,
    dtype: str,
    shard: tuple[int, int],
    batch_size: int,
) -> str:
    """What the index's bytes depend on: the checkpoint, the collection (names, files' sizes
    and times, captions), this shard, the dtype, the batch cut."""

    def stat(path: Path | None) -> list:
        if path is None:
            return []
        info = path.stat()
        return [info.st_size, info.st_mtime_ns]

    key = {
        "format": layout.FORMAT,
        "checkpoint": digest,
        "source": collection.description,
        "items": _items_digest([i.name, *stat(i.path), *i.captions] for i in items),
        "first": first,
        "dtype": dtype,
        "shard": list(shard),
        "batch_size": batch_size,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _items_digest(rows: Iterable[list]) -> str:
    """sha256 of the JSON list of ``rows``, hashed row by row (never the whole text at once)."""
    digest = hashlib.sha256(b"[")
    for number, row in enumerate(rows):
        digest.update(((", " if number else "") + json.dumps(row)).encode())
    return digest.update(b"]") or digest.hexdigest()


def _finished(out: Path, fingerprint: str, restart: bool) -> BuildSummary | None:
    """The summary of this very index when ``out`` already holds it; an error when ``out``
    holds another (unless ``restart``)."""
    if not (out / layout.MANIFEST).is_file():
        return None
    manifest = layout.read_manifest(out)
    if manifest["fingerprint"] == fingerprint:
        skipped = [f"{name} ({why})" for _, name, why in manifest["skipped"]]
        return BuildSummary(out, manifest["images"], manifest["captions"], skipped, 0, 0.0, 0.0)
    if not restart:
        raise ValueError(
            f"jwae_ext: --out {out} holds another index (other run, images or settings); "
            "choose another folder, or pass --restart to replace it"
        )
    return None


def _manifest(loaded, run, digest, collection, scan, d, dtype, shard, fingerprint) -> dict:
    return {
        "format": layout.FORMAT,
        "kind": "scan" if scan else "pooled",
        "run": str(Path(run).resolve()),
        "checkpoint": str(loaded.path.resolve()),
        "checkpoint_digest": digest,
        "variant": loaded.config.get("variant"),
        "vocab_size": len(loaded.vocab),
        "source": collection.description,
        "extraction": collection.extraction,
        "embed_size": d,
        "regions": None,
        "dtype": dtype,
        "collection_images": len(collection.items),
        "shard": list(shard),
        "fingerprint": fingerprint,
    }


def _finish(
    out: Path,
    work: PartialExtraction,
    items: PackedItems,
    first: int,
    manifest: dict,
    scratch: Path,
) -> BuildSummary:
    """The finished files from the work area, the names and captions streamed from ``items``
    to their lines files; ids and offsets go through arrays mapped from ``scratch`` files, so
    memory does not grow with the collection."""
    skipped = work.progress[_CODES].skipped
    gone = np.array(sorted(position for position, _, _ in skipped), dtype=np.int64)

    def kept_chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The kept images' ids and caption counts, a chunk at a time."""
        for start in range(0, len(items), _CHUNK):
            stop = min(start + _CHUNK, len(items))
            ids = np.arange(first + start, first + stop, dtype=np.int64)
            keep = ~np.isin(ids, gone)
            yield ids[keep], items.caption_counts(start, stop)[keep]

    image_ids = _scratch_array(scratch, "image_ids", len(items) - len(gone))
    if not len(image_ids):
        raise ValueError(f"jwae_ext: no image of this shard could be read ({len(skipped)} skipped)")
    caption_images = _scratch_array(
        scratch, "caption_images", sum(int(counts.sum()) for _, counts in kept_chunks())
    )
    done_images = done_captions = 0
    for ids, counts in kept_chunks():
        image_ids[done_images : done_images + len(ids)] = ids
        caption_images[done_captions : done_captions + int(counts.sum())] = np.repeat(ids, counts)
        done_images, done_captions = done_images + len(ids), done_captions + int(counts.sum())

    def kept() -> Iterator[Item]:
        return (items[int(p) - first] for p in image_ids)

    codes = work.features(_CODES)
    manifest.update(
        images=len(image_ids),
        captions=len(caption_images),
        skipped=skipped,
        regions=int(codes.shape[1]) if codes.ndim == 3 else None,
    )
    files = {
        out / layout.CODES: partial(write_array, array=codes),
        out / layout.IMAGE_IDS: partial(write_array, array=image_ids),
        out / layout.CAPTION_IMAGES: partial(write_array, array=caption_images),
    }
    for name, file in ((_CAPTION_CODES, layout.CAPTION_CODES), (_GRAMS, layout.GRAMS)):
        if name in work.arrays:
            files[out / file] = partial(write_array, array=work.features(name))
    for name, count, texts in (
        (layout.ITEMS, len(image_ids), (item.name for item in kept())),
        (layout.CAPTIONS, len(caption_images), (c for item in kept() for c in item.captions)),
    ):
        offsets = _scratch_array(scratch, f"{name}.offsets", count + 1)
        files[out / name] = partial(layout.write_lines, texts=texts, offsets=offsets)
        # written after its lines file (write_files keeps this order), which fills the offsets
        files[out / layout.offsets_name(name)] = partial(write_array, array=offsets)
    manifest_bytes = json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8")
    files[out / layout.MANIFEST] = partial(write_bytes, data=manifest_bytes)  # renamed last
    write_files(files)
    return BuildSummary(
        out,
        len(image_ids),
        len(caption_images),
        [f"{n} ({why})" for _, n, why in skipped],
        0,
        0.0,
        0.0,
    )


def _scratch_array(scratch: Path, name: str, length: int) -> np.ndarray:
    """``length`` int64 zeros in a file of ``scratch``, memory-mapped."""
    if length == 0:  # a file cannot map zero bytes
        return np.zeros(0, dtype=np.int64)
    return np.lib.format.open_memmap(scratch / f"{name}.npy", "w+", np.int64, (length,))
