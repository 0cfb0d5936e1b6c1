"""What an index is built from: the images (features, or files through the run's recorded
extraction) and their captions, in a fixed order, checked against the run.

A run can be indexed with the features it reads: image features of its own size (``--data``: a
precomp folder, all splits or one, or an embedded dataset), or image files put through exactly
the extraction its training folder records in ``extract.json`` (``--images``). Anything else is
refused with both sides named: codes from other features would be silently wrong.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path

import numpy as np
import torch

from jwae_ext.checkpoint import LoadedModel
from jwae_ext.data import available_splits, load_split
from jwae_ext.data.precomp import stream_precomp
from jwae_ext.data.sources import embedded_style
from jwae_ext.data.split import PooledRegions, no_region_features
from jwae_ext.extract import MANIFEST as EXTRACT_MANIFEST
from jwae_ext.extract import UnreadableImage, find_images, load_backbone, load_rgb
from jwae_ext.extract.backbones import INPUT_SIZE, Backbone
from jwae_ext.extract.caption_files import read_caption_file
from jwae_ext.extract.plan import image_finder
from jwae_ext.models import SCAN
from jwae_ext.search.items import PackedItems

EMBEDDED_SPLITS = ("train", "dev", "test")
# The settings of an extraction that decide its features (extract.json keys).
EXTRACTION_KEYS = ("backbone", "weights", "regions", "input_size", "feature_shape")


@dataclass
class Collection:
    """The images to index in order, how to get the features of a run of them
    (``features(start, stop) -> (rows, skipped)``: rows for the readable ones, ``[position, name,
    reason]`` for the others), and what describes them in the manifest."""

    items: PackedItems  # a million names and captions in memory that does not grow with them
    features: Callable[[int, int], tuple[np.ndarray, list[list]]]
    description: dict
    extraction: dict | None  # the run's recorded extraction (what a raw image query goes through)
    regions: int | None  # regions per image of SCAN's features, None for a pooled model


def run_extraction(loaded: LoadedModel) -> tuple[dict | None, str]:
    """The extraction settings of the run's training features (``None`` when they do not come
    from :mod:`jwae_ext.extract`) and why not, when not."""
    data = str(loaded.config.get("data"))
    if embedded_style(data) is not None:
        return None, (
            f"it was trained on the embedded dataset {data}, whose features are computed from "
            "generated scenes, not from image files"
        )
    path = Path(data) / EXTRACT_MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, (
            f"its training features in {data} have no {EXTRACT_MANIFEST} (they were not "
            "extracted by python -m jwae_ext.features, or the folder moved)"
        )
    except (OSError, ValueError) as err:
        return None, f"{path} is unreadable: {err}"
    return {key: manifest.get(key) for key in EXTRACTION_KEYS}, ""


def _model_input(loaded: LoadedModel) -> tuple[bool, int]:
    return isinstance(loaded.model, SCAN), loaded.model.cfg.img_dim


def from_images(loaded: LoadedModel, folder: str | os.PathLike, captions: str | None,
                device: str, scratch: Path) -> Collection:  # fmt: skip
    """Every image file under ``folder`` (sorted by relative path), with the captions of the
    caption file ``captions`` (any layout :mod:`jwae_ext.features` reads) matched by name; their
    names and captions go to files in ``scratch`` (a folder the caller removes)."""
    extraction, why_not = run_extraction(loaded)
    if extraction is None:
        raise ValueError(
            f"jwae_ext: --images: the run {loaded.path} cannot index image files: {why_not}. "
            "Index features like its own with --data instead"
        )
    regions, wanted = _model_input(loaded)
    shape = extraction["feature_shape"]
    if shape[-1] != wanted or (regions and extraction["regions"] != "grid"):
        raise ValueError(
            f"jwae_ext: --images: the run {loaded.path} reads {wanted}-dimensional "
            f"{'region' if regions else 'image'} features, but its training folder records the "
            f"extraction {extraction['backbone']} ({extraction['regions']}, features "
            f"{tuple(shape)}); the index cannot reproduce them"
        )
    on_disk = find_images(folder)
    if not on_disk:
        raise ValueError(f"jwae_ext: --images: no image files under {folder}")
    by_image: dict[str, list[str]] = {}
    if captions is not None:
        find = image_finder(on_disk)
        for name, caps in read_caption_file(captions).captions.items():
            found = find(name)
            if found is not None:
                by_image.setdefault(found, []).extend(caps)
    items = PackedItems.spill(
        scratch,
        on_disk,
        (caption for name in on_disk for caption in by_image.get(name, ())),
        (len(by_image.get(name, ())) for name in on_disk),
        root=folder,
    )
    del on_disk, by_image
    backbone: list[Backbone] = []  # loaded on first use: a finished index needs no network

    def features(start: int, stop: int) -> tuple[np.ndarray, list[list]]:
        if not backbone:
            backbone.append(load_backbone(extraction["backbone"], extraction["weights"], device))
        pixels, skipped = [], []
        for position in range(start, stop):
            item = items[position]
            try:
                pixels.append(load_rgb(item.path, extraction["input_size"] or INPUT_SIZE))
            except UnreadableImage as err:
                skipped.append([position, item.name, str(err)])
        if not pixels:
            return np.empty((0, *shape), np.float32), skipped
        feats = backbone[0].features(torch.from_numpy(np.stack(pixels)), extraction["regions"])
        return as_model_input(feats.cpu().numpy(), regions), skipped

    description = {
        "images": str(Path(folder).resolve()),
        "captions": None if captions is None else str(Path(captions).resolve()),
    }
    return Collection(items, features, description, extraction, shape[0] if regions else None)


def as_model_input(features: np.ndarray, regions: bool) -> np.ndarray:
    """Features as the model reads them: grid features of a pooled model are mean-pooled the way
    its training data pooled them (:class:`~jwae_ext.data.split.PooledRegions`)."""
    if features.ndim == 3 and not regions:
        return PooledRegions(features)[:]
    return features


@dataclass
class _SplitSource:
    """One split's part of a collection: its features as the model reads them, and its names,
    captions and captions per image as streams (read when the items are spilled)."""

    features: np.ndarray | PooledRegions
    names: Iterable[str]
    captions: Iterable[str]
    counts: Iterable[int]


def from_data(loaded: LoadedModel, data: str, device: str, scratch: Path) -> Collection:
    """The images of ``data`` (``NAME[:SPLIT]``: a precomp folder or an embedded dataset; all
    splits, ``testall`` only when named, or the one split), with their captions; their names
    and captions go to files in ``scratch`` (a folder the caller removes)."""
    name, splits = _data_and_splits(data)
    regions, wanted = _model_input(loaded)
    sources = [_split_source(loaded, name, split_name, regions) for split_name in splits]
    for split_name, source in zip(splits, sources, strict=True):
        if source.features.shape[-1] != wanted:
            raise ValueError(
                f"jwae_ext: --data {data}: split {split_name} has {source.features.shape[-1]}-"
                f"dimensional {'region' if regions else 'image'} features, but the run "
                f"{loaded.path} reads {wanted}-dimensional ones"
            )
    counts = {source.features.shape[1] if regions else None for source in sources}
    if len(counts) > 1:
        raise ValueError(f"jwae_ext: --data {data}: splits differ in regions per image: {counts}")
    _check_same_extraction(loaded, name)
    items = PackedItems.spill(
        scratch,
        chain.from_iterable(source.names for source in sources),
        chain.from_iterable(source.captions for source in sources),
        chain.from_iterable(source.counts for source in sources),
    )
    firsts = np.cumsum([0, *(len(source.features) for source in sources[:-1])])
    parts = [(int(first), s.features) for first, s in zip(firsts, sources, strict=True)]

    def features(start: int, stop: int) -> tuple[np.ndarray, list[list]]:
        rows = [
            np.asarray(feats[max(start - first, 0) : stop - first], dtype=np.float32)
            for first, feats in parts
            if first < stop and first + len(feats) > start
        ]
        return np.concatenate(rows), []

    description = {"data": name, "splits": list(splits)}
    return Collection(items, features, description, run_extraction(loaded)[0], counts.pop())


def _split_source(loaded: LoadedModel, data: str, split: str, regions: bool) -> _SplitSource:
    """A precomp split streamed from its files (never its captions whole), or an embedded split
    (generated in memory, as small as the embedded data is)."""
    if embedded_style(data) is None:
        streamed = stream_precomp(data, split)
        images = streamed.images
        if regions and not isinstance(images, PooledRegions):
            raise no_region_features(f"{data}/{split}")
        n, k = len(images), streamed.captions_per_image
        return _SplitSource(
            images.regions if regions else images,
            _item_names(data, split, n),
            streamed.captions(),  # a generator: the file is opened when the items are spilled
            repeat(k, n),
        )
    split_data = load_split(data, split, seed=loaded.config.get("seed", 0))
    order = np.argsort(split_data.cap_to_img, kind="stable")  # each image's captions in order
    return _SplitSource(
        split_data.require_regions() if regions else split_data.images,
        _item_names(data, split, split_data.num_images),
        (split_data.captions[j] for j in order),
        np.bincount(split_data.cap_to_img, minlength=split_data.num_images).tolist(),
    )


def _data_and_splits(data: str) -> tuple[str, list[str]]:
    if embedded_style(data) is None and not os.path.isdir(data) and ":" in data:
        name, split = data.rsplit(":", 1)
        return name, [split]
    if embedded_style(data) is not None:
        return data, list(EMBEDDED_SPLITS)
    if not os.path.isdir(data):
        raise ValueError(
            f"jwae_ext: --data {data!r} is neither an embedded dataset nor an existing precomp "
            "folder (optionally followed by :SPLIT)"
        )
    found = available_splits(data)
    if not found:
        raise ValueError(f"jwae_ext: --data {data}: no {{split}}_ims.npy in the folder")
    return data, [s for s in found if s != "testall" or found == ["testall"]]


def _item_names(data: str, split: str, n: int) -> Iterator[str]:
    """The images' ids (``{split}_ids.txt`` of an extracted folder, read a line at a time),
    else ``split/number`` (always for an embedded dataset)."""
    ids = Path(data) / f"{split}_ids.txt"
    if embedded_style(data) is None and ids.is_file():
        with open(ids, encoding="utf-8") as f:
            lines = sum(1 for _ in f)
        if lines == n:
            with open(ids, encoding="utf-8") as f:
                yield from (line.rstrip("\n") for line in f)
            return
    yield from (f"{split}/{i}" for i in range(n))


def _check_same_extraction(loaded: LoadedModel, data: str) -> None:
    """Refuse features extracted differently from the run's (when both folders record it)."""
    if embedded_style(data) is not None:
        return
    theirs, _ = run_extraction(loaded)
    try:
        ours = json.loads((Path(data) / EXTRACT_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    keys = ("backbone", "input_size", "feature_shape")
    if theirs is not None and any(theirs[key] != ours.get(key) for key in keys):
        mine = ", ".join(f"{key} {ours.get(key)}" for key in keys)
        run = ", ".join(f"{key} {theirs[key]}" for key in keys)
        raise ValueError(
            f"jwae_ext: --data {data}: its features were extracted with {mine}, but the run "
            f"{loaded.path} was trained on features extracted with {run}"
        )
