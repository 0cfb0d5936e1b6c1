"""Querying an index: :class:`Index` (one folder, or the shards of one collection).

Scores are the model's own, computed from the same codes as evaluation's
(:mod:`jwae_ext.encoding`): cosine of the pooled codes, the cross-attention score for SCAN's text
queries. Every answer is exact (:mod:`jwae_ext.search.topk`): the k best of the whole score
matrix, ties to the lower image id, shards merged as one index. An image query of a SCAN index
(its score needs a caption) ranks images by the cosine of their mean region codes
(:func:`jwae_ext.encoding.mean_region_codes`, what continuity and the figures use).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import jwae_ext.search.layout as layout
from jwae_ext.checkpoint import CheckpointError, LoadedModel, load_model
from jwae_ext.encoding import caption_codes, image_codes, mean_region_codes, word_codes
from jwae_ext.extract import UnreadableImage, load_backbone
from jwae_ext.extract.backbones import INPUT_SIZE, Backbone
from jwae_ext.extract.images import load_rgb, rgb_pixels
from jwae_ext.search.build import file_digest
from jwae_ext.search.sources import as_model_input
from jwae_ext.search.topk import Best, dot_topk, merge_best, xattn_topk
from jwae_ext.search.words import query_words

TARGETS = ("images", "captions")


class QueryError(ValueError):
    """A query the index cannot answer (no known word, an unreadable image, an unknown id, a
    search the index's model does not define); the message names the query."""


@dataclass(frozen=True)
class Hit:
    """One result. ``id``: the image's id in the collection; ``path``: its file (``None`` for an
    index built from features); ``caption``/``caption_id``: for caption results, the caption's
    text and its row in the index's caption order (``id`` is then the caption's image);
    ``name``: the image's name in the collection (relative path, or precomp id)."""

    id: int
    score: float
    path: str | None
    caption: str | None = None
    name: str | None = None
    caption_id: int | None = None


@dataclass(frozen=True)
class TextResult:
    """The hits of one text query and its words outside the run's vocabulary."""

    hits: list[Hit]
    unknown_words: list[str]


class _Shard:
    """One index folder's arrays and lines, memory-mapped."""

    def __init__(self, folder: Path, manifest: dict) -> None:
        self.folder = folder
        self.manifest = manifest
        self.codes = layout.open_array(folder, layout.CODES, manifest["images"])
        self.image_ids = layout.open_array(folder, layout.IMAGE_IDS, manifest["images"])
        self.caption_images = layout.open_array(folder, layout.CAPTION_IMAGES, manifest["captions"])
        self.caption_codes = (
            layout.open_array(folder, layout.CAPTION_CODES, manifest["captions"])
            if manifest["kind"] == "pooled"
            else None
        )
        self.grams = (
            layout.open_array(folder, layout.GRAMS, manifest["images"])
            if manifest["kind"] == "scan"
            else None
        )
        self.items = layout.Lines(folder / layout.ITEMS)
        self.captions = layout.Lines(folder / layout.CAPTIONS)

    def row_of(self, image_id: int) -> int | None:
        row = int(np.searchsorted(self.image_ids, image_id))
        return row if row < len(self.image_ids) and self.image_ids[row] == image_id else None


class Index:
    """An index folder, or the shards of one collection, ready to answer queries. Open with
    :meth:`open`."""

    def __init__(self, shards: list[_Shard], loaded: LoadedModel) -> None:
        self._shards = shards
        self._loaded = loaded
        self._manifest = shards[0].manifest
        self._backbone: Backbone | None = None
        self._caption_offsets = np.cumsum([0, *(s.manifest["captions"] for s in shards)])

    @classmethod
    def open(
        cls, paths: str | os.PathLike | Sequence[str | os.PathLike], device: str = "cpu"
    ) -> Index:
        """Open an index folder, or every shard of one collection (in any order), and its model
        (the run's checkpoint, which must be the one indexed: same digest)."""
        folders = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else list(map(Path, paths))
        if not folders:
            raise ValueError("jwae_ext: INDEX: give at least one index folder")
        shards = [_Shard(f, layout.read_manifest(f)) for f in folders]
        shards.sort(key=lambda s: s.manifest["shard"][0])
        _check_one_collection(shards)
        manifest = shards[0].manifest
        checkpoint = Path(manifest["checkpoint"])
        if not checkpoint.is_file():
            raise layout.IndexFormatError(
                f"jwae_ext: index {folders[0]}: its run's checkpoint {checkpoint} is gone"
            )
        if file_digest(checkpoint) != manifest["checkpoint_digest"]:
            raise layout.IndexFormatError(
                f"jwae_ext: index {folders[0]}: the checkpoint {checkpoint} changed since it "
                "was indexed (another digest); rebuild the index with python -m jwae_ext.index"
            )
        try:
            loaded = load_model(checkpoint, device)
        except CheckpointError as err:
            raise layout.IndexFormatError(
                f"jwae_ext: index {folders[0]}: cannot load its run's checkpoint: {err}"
            ) from None
        loaded.model.eval()
        return cls(shards, loaded)

    @property
    def info(self) -> dict:
        """What the index holds, summed over its shards (see docs/search.md)."""
        m = self._manifest
        return {
            "run": m["run"],
            "variant": m["variant"],
            "checkpoint_digest": m["checkpoint_digest"],
            "images": sum(s.manifest["images"] for s in self._shards),
            "captions": sum(s.manifest["captions"] for s in self._shards),
            "dtype": m["dtype"],
            "vocab_size": m["vocab_size"],
            "backbone": (m["extraction"] or {}).get("backbone"),
            "shards": len(self._shards),
            "kind": m["kind"],
            "regions": m["regions"],
            "image_folder": m["source"].get("images"),
        }

    # ---- queries ----------------------------------------------------------------------------

    def search_text(
        self, queries: Sequence[str], k: int = 10, target: str = "images"
    ) -> list[TextResult]:
        """The k best images (or indexed captions) for each text query, with the query's
        words outside the run's vocabulary. :class:`QueryError` for a query without a known
        word."""
        k, target = _check_k(k), _check_target(target)
        queries = list(queries)
        unknown = []
        for query in queries:
            if not isinstance(query, str):
                raise QueryError(f"jwae_ext: a text query must be a str, got {query!r}")
            known, missing = query_words(self._loaded.vocab, query)
            if not known:
                raise QueryError(
                    f"jwae_ext: query {query!r} has no word the model knows"
                    + (f" (not in the vocabulary: {', '.join(missing)})" if missing else "")
                )
            unknown.append(missing)
        if not queries:
            return []
        model, vocab = self._loaded.model, self._loaded.vocab
        device = self._device()
        if self._manifest["kind"] == "scan":
            if target == "captions":
                raise QueryError(
                    "jwae_ext: a SCAN index ranks images for a text query (its score compares "
                    "a caption with an image, not two captions): use target images"
                )
            words, lengths = word_codes(model, vocab, queries, device)
            options = model.xattn.options()
            best = self._over_shards(
                lambda s: xattn_topk(words, lengths, s.codes, k, options, s.grams), k
            )
        else:
            codes = caption_codes(model, vocab, queries, device)
            best = self._ranked(codes, k, target)
        hits = self._hits(best, target)
        return [TextResult(h, u) for h, u in zip(hits, unknown, strict=True)]

    def search_image(
        self, images: Sequence[str | os.PathLike | Image.Image], k: int = 10, target="images"
    ) -> list[list[Hit]]:
        """The k best images (or indexed captions) for each image (a file or a PIL image), put
        through the index's recorded feature extraction."""
        k, target = _check_k(k), _check_target(target)
        images = list(images)
        if target == "captions":
            self._require_caption_codes()
        if not images:
            return []
        return self._hits(self._ranked(self._image_query_codes(images), k, target), target)

    def search_item(self, ids: Sequence[int], k: int = 10) -> list[list[Hit]]:
        """The k best images for indexed images (by id) used as queries (the image itself
        comes first, unless another has the same code and a lower id)."""
        k = _check_k(k)
        rows = []
        for image_id in ids:
            shard, row = self._locate(image_id)
            rows.append(torch.from_numpy(np.array(shard.codes[row : row + 1], np.float32)))
        if not rows:
            return []
        codes = torch.cat(rows)
        if self._manifest["kind"] == "scan":
            codes = mean_region_codes(codes)
        return self._hits(self._ranked(codes, k, "images"), "images")

    def image_path(self, image_id: int) -> Path | None:
        """The indexed image file of ``image_id`` (None for an index built from features);
        ``KeyError`` for an id not in the index."""
        try:
            shard, row = self._locate(image_id)
        except QueryError as err:
            raise KeyError(str(err)) from None
        return self._path(shard.items[row])

    def captions_of(self, image_id: int) -> list[str]:
        """The indexed captions of image ``image_id`` (none for an uncaptioned image), in their
        index order; ``KeyError`` for an id not in the index."""
        try:
            shard, _ = self._locate(image_id)
        except QueryError as err:
            raise KeyError(str(err)) from None
        # The build writes the captions in image order: an image's captions are one run.
        first, stop = np.searchsorted(shard.caption_images, [image_id, image_id + 1])
        return [shard.captions[row] for row in range(int(first), int(stop))]

    # ---- internals ----------------------------------------------------------------------

    def _device(self) -> torch.device:
        return next(self._loaded.model.parameters()).device

    def _locate(self, image_id: int) -> tuple[_Shard, int]:
        if isinstance(image_id, bool) or not isinstance(image_id, (int, np.integer)):
            raise QueryError(f"jwae_ext: image ids are integers, got {image_id!r}")
        for shard in self._shards:
            row = shard.row_of(int(image_id))
            if row is not None:
                return shard, row
        raise QueryError(f"jwae_ext: image id {image_id} is not in the index")

    def _image_query_codes(self, images: list) -> torch.Tensor:
        extraction = self._manifest["extraction"]
        if extraction is None:
            raise QueryError(
                "jwae_ext: this index cannot take image queries: its run was trained on "
                "features no recorded extraction reproduces from image files (see "
                "python -m jwae_ext.index --images)"
            )
        if self._backbone is None:
            try:
                self._backbone = load_backbone(
                    extraction["backbone"], extraction["weights"], str(self._device())
                )
            except (OSError, ValueError, ImportError) as err:
                raise QueryError(f"jwae_ext: cannot load the index's backbone: {err}") from None
        size = extraction["input_size"] or INPUT_SIZE
        pixels = []
        for image in images:
            try:
                if isinstance(image, Image.Image):
                    pixels.append(rgb_pixels(image.copy(), size))
                else:
                    pixels.append(load_rgb(image, size))
            except (UnreadableImage, OSError, ValueError) as err:
                raise QueryError(f"jwae_ext: image query {image}: unreadable ({err})") from None
        scan = self._manifest["kind"] == "scan"
        feats = self._backbone.features(torch.from_numpy(np.stack(pixels)), extraction["regions"])
        codes = image_codes(self._loaded.model, as_model_input(feats.cpu().numpy(), scan))
        return mean_region_codes(codes) if scan else codes

    def _ranked(self, codes: torch.Tensor, k: int, target: str) -> Best:
        """The k best by dot product of pooled query ``codes`` against every shard's image codes
        (SCAN: mean region codes) or caption codes."""
        if target == "captions":
            self._require_caption_codes()
            return self._over_shards(lambda s: dot_topk(codes, s.caption_codes, k), k, "captions")
        transform = mean_region_codes if self._manifest["kind"] == "scan" else None
        return self._over_shards(lambda s: dot_topk(codes, s.codes, k, transform), k)

    def _require_caption_codes(self) -> None:
        if self._manifest["kind"] == "scan":
            raise QueryError(
                "jwae_ext: a SCAN index holds no caption codes (its score compares a caption's "
                "words with an image's regions): use target images"
            )

    def _over_shards(self, search, k: int, target: str = "images") -> Best:
        """Each shard's k best, merged shard after shard (ascending ids): one exact answer.
        Positions are global: image ids, or caption rows over the shards in order."""
        best = None
        for number, shard in enumerate(self._shards):
            scores, rows = (t.cpu() for t in search(shard))
            if target == "images":
                positions = torch.from_numpy(np.asarray(shard.image_ids[rows.numpy()]))
            else:
                positions = rows + int(self._caption_offsets[number])
            best = merge_best(best, scores, positions, k)
        return best

    def _hits(self, best: Best, target: str) -> list[list[Hit]]:
        scores, positions = best
        return [
            [self._hit(int(p), float(s), target) for s, p in zip(row_s, row_p, strict=True)]
            for row_s, row_p in zip(scores.tolist(), positions.tolist(), strict=True)
        ]

    def _hit(self, position: int, score: float, target: str) -> Hit:
        if target == "images":
            shard, row = self._locate(position)
            name = shard.items[row]
            return Hit(position, score, _str(self._path(name)), name=name)
        number = int(np.searchsorted(self._caption_offsets, position, side="right")) - 1
        shard, row = self._shards[number], position - int(self._caption_offsets[number])
        image_id = int(shard.caption_images[row])
        image_shard, image_row = self._locate(image_id)
        name = image_shard.items[image_row]
        return Hit(
            image_id, score, _str(self._path(name)), shard.captions[row], name, caption_id=position
        )

    def _path(self, name: str) -> Path | None:
        folder = self._manifest["source"].get("images")
        return None if folder is None else Path(folder) / name


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"jwae_ext: k must be an integer >= 1, got {k!r}")
    return int(k)


def _check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"jwae_ext: target must be images or captions, got {target!r}")
    return target


def _check_one_collection(shards: list[_Shard]) -> None:
    """Several folders must be every shard of one collection, each once."""
    first = shards[0]
    for shard in shards[1:]:
        differ = [
            key
            for key in layout.MANIFEST_KEYS
            if key not in (*layout.SHARD_KEYS, *layout.LOCAL_KEYS)
            and shard.manifest[key] != first.manifest[key]
        ]
        if differ:
            raise layout.IndexFormatError(
                f"jwae_ext: INDEX: {shard.folder} and {first.folder} are not shards of one "
                f"collection (their manifests differ in {', '.join(differ)})"
            )
    count = first.manifest["shard"][1]
    numbers = [s.manifest["shard"][0] for s in shards]
    if len(numbers) != len(set(numbers)) or any(s.manifest["shard"][1] != count for s in shards):
        given = ", ".join(
            f"{s.folder} (shard {'/'.join(map(str, s.manifest['shard']))})" for s in shards
        )
        raise layout.IndexFormatError(
            f"jwae_ext: INDEX: the same shard given twice, or shards of different splits: {given}"
        )
    missing = sorted(set(range(count)) - set(numbers))
    if missing:
        raise layout.IndexFormatError(
            f"jwae_ext: INDEX: the collection has {count} shards; shard(s) "
            f"{', '.join(f'{i}/{count}' for i in missing)} not given (an exact answer needs all)"
        )
