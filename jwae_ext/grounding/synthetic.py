"""The embedded grounding set: the embedded dataset's scenes as a phrase-localization dataset.

Image ``i`` of a split has the scene, pixels and captions of image ``i`` of the same split of the
retrieval data (:func:`jwae_ext.data.synthetic_split`; the grounding split ``val`` is the
retrieval split ``dev``), its captions marked up as Flickr30k Entities sentences (each object
is an entity; "two shapes" names several; the background and "the image" are left out of the
evaluation), and every object has its box. Each image gets a fixed budget of proposals that
overlap the objects more or less well, as EdgeBoxes proposals do: jittered object boxes, parts
of object boxes, boxes around several objects and background boxes, shuffled. The ground truth
itself is not among them, so some phrases cannot be localized (:meth:`GroundingSplit.upper_bound`).
Each proposal's features come from the embedded data's fixed extractor
(:func:`jwae_ext.data.features.box_features`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jwae_ext.data.captions import group_entity, scene_entity
from jwae_ext.data.features import box_features
from jwae_ext.data.render import CELL, IMAGE_SIZE, coverage
from jwae_ext.data.scenes import SHAPES, SceneObject
from jwae_ext.data.synthetic import DEFAULT_SIZES, generate_scenes, image_rng
from jwae_ext.grounding.data import SPLITS, GroundingSplit, write_entities
from jwae_ext.grounding.entities import AnnotatedObject, Annotation, parse_sentence

__all__ = ["NUM_PROPOSALS", "export_entities", "grounding_split", "object_box"]

NUM_PROPOSALS = 24
_SCENE_SPLIT = {"train": "train", "val": "dev", "test": "test"}
_PROPOSAL_STREAM = 2  # the random stream of the proposals (0: scene and captions, 1: texture)
_JITTERED = 3  # per object
_PARTS = 2  # per object
_PART = (0.3, 0.75)  # the share of a box a part keeps
_JITTER = 0.5  # of the box's size: how far each side may move
_MIN_SIDE, _MAX_SIDE = 5, 30  # background boxes, pixels


def object_box(obj: SceneObject) -> np.ndarray:
    """``(4,)`` int64 inclusive pixel box of the pixels ``obj`` is drawn on."""
    sprite = coverage(SHAPES[obj.shape], float(obj.radius))
    rows, cols = np.flatnonzero(sprite.any(axis=1)), np.flatnonzero(sprite.any(axis=0))
    reach = sprite.shape[0] // 2
    top = (obj.position // 3) * CELL + CELL // 2 + obj.offset[1] - reach
    left = (obj.position % 3) * CELL + CELL // 2 + obj.offset[0] - reach
    return np.array([left + cols[0], top + rows[0], left + cols[-1], top + rows[-1]])


def _clip(boxes: np.ndarray) -> np.ndarray:
    """Round to whole pixels inside the image, at least one pixel wide and high."""
    boxes = np.clip(np.round(boxes), 0, IMAGE_SIZE - 1)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
    return boxes


def _jittered(box: np.ndarray, count: int, uniform: np.ndarray) -> np.ndarray:
    """``count`` boxes whose sides move by up to :data:`_JITTER` of the box's size."""
    size = np.tile(box[2:] - box[:2] + 1, 2).astype(np.float64)
    return box + (uniform.reshape(count, 4) * 2 - 1) * _JITTER * size


def _part(box: np.ndarray, which: float, share: float) -> np.ndarray:
    """The left, right, top or bottom part (``which`` in [0, 1) picks) of ``box``, cut off at
    :data:`_PART` times ``share`` in [0, 1) of its width or height."""
    part = box.astype(np.float64).copy()
    side = int(which * 4)
    axis, low = side // 2, side % 2 == 0
    length = box[axis + 2] - box[axis] + 1
    kept = (_PART[0] + share * (_PART[1] - _PART[0])) * length
    if low:
        part[axis + 2] = box[axis] + kept - 1
    else:
        part[axis] = box[axis + 2] - kept + 1
    return part


def proposals(boxes: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """``(count, 4)`` float32 proposals for an image whose objects have ``boxes`` ``(n, 4)``:
    per object :data:`_JITTERED` jittered boxes and :data:`_PARTS` parts of it, jittered boxes
    around every pair of objects and around all of them, background boxes for the rest of the
    budget; in random order. Only ``rng.random`` is drawn (stable across numpy versions)."""
    found = []
    for box in boxes:
        found.append(_jittered(box, _JITTERED, rng.random(4 * _JITTERED)))
        found += [_part(box, *rng.random(2))[None] for _ in range(_PARTS)]
    n = len(boxes)
    groups = [[a, b] for a in range(n) for b in range(a + 1, n)] + ([list(range(n))] * (n > 2))
    for group in groups:
        union = np.concatenate([boxes[group, :2].min(axis=0), boxes[group, 2:].max(axis=0)])
        found.append(_jittered(union, 1, rng.random(4)))
    found = np.concatenate(found)[:count]
    rest = count - len(found)
    side = _MIN_SIDE + rng.random((rest, 2)) * (_MAX_SIDE - _MIN_SIDE)
    corner = rng.random((rest, 2)) * (IMAGE_SIZE - side)
    background = np.concatenate([corner, corner + side - 1], axis=1)
    every = _clip(np.concatenate([found, background]))
    order = np.argsort(rng.random(count), kind="stable")
    return every[order].astype(np.float32)


def _annotation(objects: list[SceneObject], image_id: str) -> Annotation:
    n = len(objects)
    group = (group_entity(n),) if n > 1 else ()
    boxed = [
        AnnotatedObject((str(k + 1), *group), box=tuple(int(v) for v in object_box(obj)))
        for k, obj in enumerate(objects)
    ]
    background = AnnotatedObject((scene_entity(n),), scene=True)
    return Annotation(IMAGE_SIZE, IMAGE_SIZE, (*boxed, background), filename=f"{image_id}.png")


def grounding_split(
    style: str = "a",
    split: str = "train",
    *,
    seed: int = 0,
    num_images: int | None = None,
    num_proposals: int = NUM_PROPOSALS,
) -> GroundingSplit:
    """Generate ``split`` (``train``, ``val`` or ``test``) of the embedded grounding set in
    ``style`` (``"a"`` or ``"b"``): ``num_images`` (default: the retrieval split's size) images
    with ``num_proposals`` proposals each."""
    if split not in _SCENE_SPLIT:
        raise ValueError(f"jwae_ext: grounding split must be one of {SPLITS}, got {split!r}")
    if isinstance(num_proposals, bool) or not isinstance(num_proposals, int) or num_proposals < 1:
        raise ValueError(
            f"jwae_ext: num_proposals must be a positive integer, got {num_proposals!r}"
        )
    scene_split = _SCENE_SPLIT[split]
    scenes = generate_scenes(style, scene_split, seed=seed, num_images=num_images, marked=True)
    n = len(scenes.objects)
    ids = [f"{style}-{split}-{i:05d}" for i in range(n)]
    boxes = np.stack(
        [
            proposals(
                np.stack([object_box(o) for o in objects]),
                image_rng(int(seed), style, scene_split, i, _PROPOSAL_STREAM),
                num_proposals,
            )
            for i, objects in enumerate(scenes.objects)
        ]
    )
    return GroundingSplit(
        name=f"synthetic-{style}/{split}",
        image_ids=ids,
        annotations=[_annotation(o, i) for o, i in zip(scenes.objects, ids, strict=True)],
        sentences=[[parse_sentence(c) for c in captions] for captions in scenes.captions],
        boxes=boxes,
        box_feats=box_features(scenes.pixels, boxes),
        num_boxes=np.full(n, num_proposals, dtype=np.int64),
        renderer=scenes.render,
    )


def export_entities(
    folder: str | os.PathLike,
    style: str = "a",
    *,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    num_proposals: int = NUM_PROPOSALS,
) -> Path:
    """Write the embedded grounding set's splits (``sizes``: images per split, default the
    retrieval data's) as a Flickr30k-Entities-layout folder; returns the folder."""
    default = {s: DEFAULT_SIZES[_SCENE_SPLIT[s]] for s in SPLITS}
    splits = {
        split: grounding_split(style, split, seed=seed, num_images=n, num_proposals=num_proposals)
        for split, n in (sizes or default).items()
    }
    return write_entities(folder, splits)
