"""Phrase-localization data in the Flickr30k Entities layout, read and written unchanged.

A folder holds, per split ``S`` in ``train``, ``val``, ``test``:

- ``S.txt``: the split's image ids, one per line;
- ``Sentences/<id>.txt`` and ``Annotations/<id>.xml`` of each image (:mod:`.entities`);
- precomputed proposals, rows in the order of ``S.txt``: ``S_boxes.npy`` ``(N, P, 4)`` float32
  ``(x1, y1, x2, y2)``, inclusive pixel corners, 0-based as the dataset's parser reads the
  XML's boxes (the XML's values minus 1); ``S_box_feats.npy`` ``(N, P, D)`` float32 appearance
  features (memory-mapped); ``S_num_boxes.npy`` ``(N,)`` int64, how many of the ``P`` rows are
  proposals (the rest is padding).

The models see each proposal's appearance features followed by CITE's 5 spatial values
(:func:`spatial_features`). A phrase is evaluated when it can have a box (not entity 0, not
``notvisual``) and its entity has at least one box; its ground truth is the union of them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from jwae_ext.data.precomp import write_array, write_bytes, write_files
from jwae_ext.grounding.boxes import SUCCESS_IOU, box_iou, union_box
from jwae_ext.grounding.entities import (
    Annotation,
    Sentence,
    format_annotation,
    format_sentence,
    read_annotation,
    read_sentences,
)

__all__ = [
    "SPATIAL_DIM",
    "SPLITS",
    "GroundingSplit",
    "PhraseTable",
    "load_entities",
    "spatial_features",
    "write_entities",
]

SPLITS = ("train", "val", "test")
SPATIAL_DIM = 5
_IOU_CHUNK = 4096  # phrases per IoU computation
_BOXES, _FEATS, _COUNTS = "{}_boxes.npy", "{}_box_feats.npy", "{}_num_boxes.npy"


def spatial_features(boxes: np.ndarray, width: np.ndarray, height: np.ndarray) -> np.ndarray:
    """CITE's 5 spatial values of ``boxes`` ``(..., 4)`` in images of ``width`` x ``height``
    (broadcast to the boxes' leading shape): ``x1/W, y1/H, x2/W, y2/H`` and the area ratio
    ``(x2 - x1)(y2 - y1) / (W H)`` (CITE's data preparation measures widths as ``x2 - x1``).
    float32."""
    boxes = np.asarray(boxes, dtype=np.float64)
    w, h = np.asarray(width, dtype=np.float64), np.asarray(height, dtype=np.float64)
    x1, y1, x2, y2 = np.moveaxis(boxes, -1, 0)
    area = (x2 - x1) * (y2 - y1) / (w * h)
    return np.stack([x1 / w, y1 / h, x2 / w, y2 / h, area], axis=-1).astype(np.float32)


@dataclass(frozen=True)
class PhraseTable:
    """The evaluated phrases of a split, in file order (image, sentence, phrase). ``image``
    ``(n,)`` int64 indexes the split's images; ``gt`` ``(n, 4)`` the ground-truth union boxes;
    ``iou`` ``(n, P)`` float32 each phrase's IoU with its image's proposals (0 for padding)."""

    image: np.ndarray
    sentence: np.ndarray  # (n,) int64, the caption of its image the phrase is in
    text: list[str]
    types: list[tuple[str, ...]]
    gt: np.ndarray
    iou: np.ndarray

    def __len__(self) -> int:
        return len(self.text)

    def upper_bound(self) -> float:
        """The share (%) of phrases that some real proposal localizes (IoU >= 0.5)."""
        if not len(self):
            return 0.0
        return 100.0 * float((self.iou >= SUCCESS_IOU).any(axis=1).mean())


@dataclass
class GroundingSplit:
    """One split: per image its annotation, its captions and its proposals.

    ``boxes`` ``(N, P, 4)``, ``box_feats`` ``(N, P, D)`` (a memory map for files), ``num_boxes``
    ``(N,)``; ``renderer`` (image index -> ``(H, W, 3)`` uint8) for the embedded data.
    """

    name: str
    image_ids: list[str]
    annotations: list[Annotation]
    sentences: list[list[Sentence]]
    boxes: np.ndarray
    box_feats: np.ndarray
    num_boxes: np.ndarray
    renderer: Callable[[int], np.ndarray] | None = None

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        if n == 0:
            raise ValueError(f"jwae_ext: grounding split {self.name} has no images")
        for label, items in (("annotations", self.annotations), ("sentences", self.sentences)):
            if len(items) != n:
                raise ValueError(
                    f"jwae_ext: grounding split {self.name}: {len(items)} {label} for {n} images"
                )
        boxes, feats, counts = self.boxes, self.box_feats, np.asarray(self.num_boxes)
        if boxes.ndim != 3 or boxes.shape[0] != n or boxes.shape[2] != 4:
            raise ValueError(
                f"jwae_ext: grounding split {self.name}: boxes must be ({n}, P, 4), "
                f"got {boxes.shape}"
            )
        if feats.ndim != 3 or feats.shape[:2] != boxes.shape[:2] or feats.shape[2] == 0:
            raise ValueError(
                f"jwae_ext: grounding split {self.name}: box features must be "
                f"({n}, {boxes.shape[1]}, D), got {feats.shape}"
            )
        if counts.shape != (n,) or counts.min() < 0 or counts.max() > boxes.shape[1]:
            raise ValueError(
                f"jwae_ext: grounding split {self.name}: num_boxes must be ({n},) counts in "
                f"[0, {boxes.shape[1]}], got shape {counts.shape}, range "
                f"[{counts.min()}, {counts.max()}]"
            )
        self.num_boxes = counts.astype(np.int64)

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def num_proposals(self) -> int:
        return self.boxes.shape[1]

    @property
    def feature_dim(self) -> int:
        """Size of a proposal's model input: appearance features and the spatial values."""
        return self.box_feats.shape[2] + SPATIAL_DIM

    @functools.cached_property
    def sizes(self) -> np.ndarray:
        """``(N, 2)`` int64: each image's width and height."""
        return np.array([(a.width, a.height) for a in self.annotations], dtype=np.int64)

    def features(self, images: np.ndarray) -> np.ndarray:
        """``(len(images), P, D + 5)`` float32 model inputs of the proposals of ``images``:
        appearance features followed by :func:`spatial_features`."""
        images = np.asarray(images, dtype=np.int64)
        size = self.sizes[images]
        spatial = spatial_features(self.boxes[images], size[:, None, 0], size[:, None, 1])
        return np.concatenate([np.asarray(self.box_feats[images]), spatial], axis=2)

    @functools.cached_property
    def phrases(self) -> PhraseTable:
        """The evaluated phrases (see the module's docstring)."""
        image, sentence, text, types, gt = [], [], [], [], []
        for i, (annotation, captions) in enumerate(
            zip(self.annotations, self.sentences, strict=True)
        ):
            for s, caption in enumerate(captions):
                for phrase in caption.phrases:
                    boxes = annotation.boxes(phrase.entity) if phrase.visual else None
                    if boxes is None or not len(boxes):
                        continue
                    image.append(i)
                    sentence.append(s)
                    text.append(phrase.text)
                    types.append(phrase.types)
                    gt.append(union_box(boxes))
        image_ids = np.array(image, dtype=np.int64)
        gt_boxes = np.array(gt, dtype=np.int64).reshape(-1, 4)
        iou = np.zeros((len(text), self.num_proposals), dtype=np.float32)
        real = np.arange(self.num_proposals)
        for start in range(0, len(text), _IOU_CHUNK):  # bounded float64 temporaries
            rows = slice(start, start + _IOU_CHUNK)
            chunk = box_iou(self.boxes[image_ids[rows]], gt_boxes[rows, None, :])
            iou[rows] = chunk * (real < self.num_boxes[image_ids[rows]][:, None])
        return PhraseTable(
            image_ids, np.array(sentence, dtype=np.int64), text, types, gt_boxes, iou
        )

    def upper_bound(self) -> float:
        """The share (%) of evaluated phrases some proposal localizes (IoU >= 0.5)."""
        return self.phrases.upper_bound()

    def render(self, index: int) -> np.ndarray:
        """Pixels ``(H, W, 3)`` uint8 of image ``index`` (embedded data only)."""
        if self.renderer is None:
            raise ValueError(
                f"jwae_ext: grounding split {self.name} has no pixels (precomputed features only)"
            )
        return self.renderer(int(index))


# ---- the folder layout -------------------------------------------------------------------------


def _split_name(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"jwae_ext: grounding split must be one of {SPLITS}, got {split!r}")
    return split


def _load_array(path: Path, dtype: type, ndim: int, mmap: bool = False) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"jwae_ext: {path} is not a valid .npy file: {err}") from None
    if array.dtype != np.dtype(dtype) or array.ndim != ndim:
        raise ValueError(
            f"jwae_ext: {path} must hold {np.dtype(dtype)} of {ndim} dimensions, "
            f"got {array.dtype} of shape {array.shape}"
        )
    return array


def load_entities(
    folder: str | os.PathLike, split: str, *, num_images: int | None = None
) -> GroundingSplit:
    """Read ``split`` of a Flickr30k-Entities-layout ``folder`` (the first ``num_images`` images
    only, when given)."""
    folder = Path(folder)
    split = _split_name(split)
    ids_path = folder / f"{split}.txt"
    if not ids_path.is_file():
        raise FileNotFoundError(f"jwae_ext: {folder} has no split list {ids_path.name}")
    ids = [line.strip() for line in ids_path.read_text(encoding="utf-8").splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise ValueError(f"jwae_ext: {ids_path} lists no image ids")
    boxes = _load_array(folder / _BOXES.format(split), np.float32, 3)
    feats = _load_array(folder / _FEATS.format(split), np.float32, 3, mmap=True)
    counts = _load_array(folder / _COUNTS.format(split), np.int64, 1)
    for name, array in ((_BOXES, boxes), (_FEATS, feats), (_COUNTS, counts)):
        if array.shape[0] != len(ids):
            raise ValueError(
                f"jwae_ext: {folder / name.format(split)} has {array.shape[0]} rows, but "
                f"{ids_path} lists {len(ids)} images"
            )
    if num_images is not None:
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"jwae_ext: num_images must be a positive integer, got {num_images!r}")
        ids = ids[:num_images]
    n = len(ids)
    boxes = np.ascontiguousarray(boxes[:n])
    if not np.isfinite(boxes).all():
        raise ValueError(f"jwae_ext: {folder / _BOXES.format(split)} holds non-finite boxes")
    return GroundingSplit(
        name=f"{folder}/{split}",
        image_ids=ids,
        annotations=[read_annotation(folder / "Annotations" / f"{i}.xml") for i in ids],
        sentences=[read_sentences(folder / "Sentences" / f"{i}.txt") for i in ids],
        boxes=boxes,
        box_feats=feats[:n],
        num_boxes=counts[:n],
    )


def write_entities(folder: str | os.PathLike, splits: Mapping[str, GroundingSplit]) -> Path:
    """Write ``splits`` (``{"train": ..., "val": ..., "test": ...}``, any of them) as a
    Flickr30k-Entities-layout ``folder``, all files or none; returns the folder."""
    folder = Path(folder)
    files: dict[Path, Callable[[BinaryIO], object]] = {}
    for split, data in splits.items():
        split = _split_name(split)
        ids = "".join(f"{i}\n" for i in data.image_ids)
        files[folder / f"{split}.txt"] = functools.partial(write_bytes, data=ids.encode())
        arrays = (
            (_BOXES, data.boxes.astype(np.float32)),
            (_FEATS, np.asarray(data.box_feats, dtype=np.float32)),
            (_COUNTS, data.num_boxes.astype(np.int64)),
        )
        for name, array in arrays:
            files[folder / name.format(split)] = functools.partial(write_array, array=array)
        for image_id, annotation, captions in zip(
            data.image_ids, data.annotations, data.sentences, strict=True
        ):
            text = "".join(f"{format_sentence(c)}\n" for c in captions)
            xml = format_annotation(annotation)
            files[folder / "Sentences" / f"{image_id}.txt"] = functools.partial(
                write_bytes, data=text.encode()
            )
            files[folder / "Annotations" / f"{image_id}.xml"] = functools.partial(
                write_bytes, data=xml.encode()
            )
    write_files(files)
    return folder
