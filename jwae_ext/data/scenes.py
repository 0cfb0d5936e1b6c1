"""Scenes of the embedded dataset: what is in each image, independent of how it is drawn or said.

A scene holds 1 to :data:`MAX_OBJECTS` objects, each with a shape, a colour, a size and a position
(one cell of a 3 x 3 grid, at most one object per cell). Object 0 is the *main* object: the scene
is sampled with the big objects first, so it is the largest one (or one of them). Attributes are
stored as small integers indexing the name tables below; ``-1`` marks a missing object.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan")
SIZES = ("small", "big")
POSITIONS = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
MAX_OBJECTS = 3
ATTRIBUTES = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "position": POSITIONS}


@dataclass(frozen=True)
class SceneAttributes:
    """Per-image object attributes: four ``int8`` arrays of shape ``(N, MAX_OBJECTS)``.

    ``shape[i, k]`` indexes :data:`SHAPES` (likewise ``colour``, ``size``, ``position``) for
    object ``k`` of image ``i``, or is ``-1`` when the image has fewer than ``k + 1`` objects.
    """

    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    position: np.ndarray

    def __post_init__(self):
        arrays = [getattr(self, name) for name in ATTRIBUTES]
        if any(a.shape != arrays[0].shape or a.ndim != 2 for a in arrays):
            raise ValueError("jwae_ext: scene attribute arrays must share one (N, objects) shape")
        if not (self.shape[:, 0] >= 0).all():
            raise ValueError("jwae_ext: every scene needs at least one object")

    def __len__(self) -> int:
        return self.shape.shape[0]

    @property
    def num_objects(self) -> np.ndarray:
        """``(N,)`` int64: how many objects each image holds."""
        return (self.shape >= 0).sum(axis=1).astype(np.int64)

    def subset(self, indices: Sequence[int] | np.ndarray | slice) -> SceneAttributes:
        """The attributes of the images ``indices``, in that order."""
        return SceneAttributes(*(getattr(self, name)[indices] for name in ATTRIBUTES))

    def semantic_class(self, kind: str = "shape") -> np.ndarray:
        """``(N,)`` int64 class of each image's main object: ``kind`` is ``"shape"``,
        ``"colour"``, ``"size"``, ``"position"`` or ``"shape+colour"``
        (``shape * len(COLOURS) + colour``); names from :meth:`class_names`."""
        if kind == "shape+colour":
            return self.shape[:, 0].astype(np.int64) * len(COLOURS) + self.colour[:, 0]
        if kind not in ATTRIBUTES:
            raise ValueError(
                f"jwae_ext: kind must be one of {(*ATTRIBUTES, 'shape+colour')}, got {kind!r}"
            )
        return getattr(self, kind)[:, 0].astype(np.int64)

    @staticmethod
    def class_names(kind: str = "shape") -> list[str]:
        """The names of the classes of :meth:`semantic_class` for ``kind``, in id order."""
        if kind == "shape+colour":
            return [f"{c} {s}" for s in SHAPES for c in COLOURS]
        if kind not in ATTRIBUTES:
            raise ValueError(
                f"jwae_ext: kind must be one of {(*ATTRIBUTES, 'shape+colour')}, got {kind!r}"
            )
        return list(ATTRIBUTES[kind])

    def jaccard(
        self, a: np.ndarray, b: np.ndarray, keys: Sequence[str] = ("shape", "colour")
    ) -> np.ndarray:
        """Attribute overlap of image pairs ``(a[p], b[p])``: the Jaccard index of their sets of
        objects, each object reduced to its attributes ``keys`` (e.g. ``("shape",)`` compares the
        sets of shapes). Returns float64 of the broadcast shape of ``a`` and ``b``, in [0, 1]."""
        keys = tuple(keys)
        if not keys or any(k not in ATTRIBUTES for k in keys):
            raise ValueError(f"jwae_ext: keys must be names from {tuple(ATTRIBUTES)}, got {keys}")
        code = np.zeros(self.shape.shape, dtype=np.int64)
        for k in keys:
            code = code * len(ATTRIBUTES[k]) + getattr(self, k)
        code[self.shape < 0] = -1
        ca, cb = code[np.asarray(a)], code[np.asarray(b)]  # (..., K)
        # Duplicates (two red circles) count once: compare distinct codes only.
        first_a = _first_occurrence(ca)
        first_b = _first_occurrence(cb)
        in_b = (ca[..., :, None] == cb[..., None, :]).any(-1) & first_a
        inter = in_b.sum(-1)
        union = first_a.sum(-1) + first_b.sum(-1) - inter
        return inter / union

    def describe(self, i: int) -> str:
        """A plain listing of image ``i``'s objects, e.g. ``"big red circle (top left)"``."""
        parts = []
        for k in range(self.shape.shape[1]):
            if self.shape[i, k] < 0:
                break
            parts.append(
                f"{SIZES[self.size[i, k]]} {COLOURS[self.colour[i, k]]} "
                f"{SHAPES[self.shape[i, k]]} ({POSITIONS[self.position[i, k]]})"
            )
        return "; ".join(parts)


def _first_occurrence(codes: np.ndarray) -> np.ndarray:
    """Mask of the valid entries (``>= 0``) that do not repeat an earlier entry on their row."""
    k = codes.shape[-1]
    earlier = np.tril(np.ones((k, k), dtype=bool), -1)  # earlier[j, l]: l < j
    repeats = ((codes[..., :, None] == codes[..., None, :]) & earlier).any(-1)
    return (codes >= 0) & ~repeats


class Draws:
    """Uniform numbers from one numpy ``Generator``, consumed one at a time in Python.

    Only ``Generator.random`` (53 random bits per double from PCG64) is used: it is the simplest
    and most stable of numpy's sampling routines, so the same seed gives the same scenes and
    captions on every machine and numpy version that keeps PCG64.
    """

    _BLOCK = 64

    def __init__(self, rng: np.random.Generator):
        self._rng = rng
        self._buffer: list[float] = []
        self._next = 0

    def uniform(self) -> float:
        if self._next == len(self._buffer):
            self._buffer = self._rng.random(self._BLOCK).tolist()
            self._next = 0
        self._next += 1
        return self._buffer[self._next - 1]

    def below(self, n: int) -> int:
        """An integer in ``[0, n)``."""
        return min(int(self.uniform() * n), n - 1)

    def chance(self, p: float) -> bool:
        return self.uniform() < p

    def pick(self, options: Sequence):
        """One of ``options``, uniformly."""
        return options[self.below(len(options))]

    def shuffled(self, items: Sequence) -> list:
        """A permutation of ``items`` (Fisher-Yates)."""
        items = list(items)
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]
        return items


class Choices:
    """Alternatives with (unnormalized) weights."""

    __slots__ = ("_bounds", "options", "weights")

    def __init__(self, options: Sequence, weights: Sequence[float]):
        self.options, self.weights = tuple(options), tuple(weights)
        self._bounds = list(itertools.accumulate(self.weights))

    def draw(self, draws: Draws):
        """One option, with probability proportional to its weight."""
        i = bisect.bisect_right(self._bounds, draws.uniform() * self._bounds[-1])
        return self.options[min(i, len(self.options) - 1)]


@dataclass(frozen=True)
class SceneObject:
    """One sampled object: attribute ids plus its drawing parameters (radius in pixels, centre
    offset from its grid cell's centre, colour jitter per RGB channel)."""

    shape: int
    colour: int
    size: int
    position: int
    radius: int
    offset: tuple[int, int]
    tint: tuple[int, int, int]


# Radii (pixels) per size class and the largest centre offset that keeps a shape in its cell:
# radius + offset <= 7 < 8, half the 16-pixel cell, so objects never overlap.
RADII = ((4, 5), (6, 7))
_OBJECT_COUNTS = Choices((1, 2, 3), (0.4, 0.35, 0.25))
CELL_REACH = 7
TINT = 12


def sample_scene(draws: Draws) -> list[SceneObject]:
    """Sample one scene's objects, the big ones first."""
    count = _OBJECT_COUNTS.draw(draws)
    cells = draws.shuffled(range(len(POSITIONS)))[:count]
    objects = []
    for cell in cells:
        size = draws.below(len(SIZES))
        radius = draws.pick(RADII[size])
        reach = CELL_REACH - radius
        objects.append(
            SceneObject(
                shape=draws.below(len(SHAPES)),
                colour=draws.below(len(COLOURS)),
                size=size,
                position=cell,
                radius=radius,
                offset=(draws.below(2 * reach + 1) - reach, draws.below(2 * reach + 1) - reach),
                tint=tuple(draws.below(2 * TINT + 1) - TINT for _ in range(3)),
            )
        )
    objects.sort(key=lambda o: -o.size)  # stable: the first big object is the main one
    return objects


def scene_attributes(scenes: Sequence[Sequence[SceneObject]]) -> SceneAttributes:
    """Pack sampled scenes into :class:`SceneAttributes`."""
    arrays = {name: np.full((len(scenes), MAX_OBJECTS), -1, dtype=np.int8) for name in ATTRIBUTES}
    for i, scene in enumerate(scenes):
        for k, obj in enumerate(scene):
            for name, array in arrays.items():
                array[i, k] = getattr(obj, name)
    return SceneAttributes(**arrays)
