"""A collection's items packed in a few arrays: what lets an index build hold a million names and
captions in about the size of their text.

A list of :class:`Item` costs some 300 bytes of Python objects per image
(the item, its tuple, its strings): 300 MB at a million images, more than the whole build's
memory bound. :class:`PackedItems` keeps the UTF-8 bytes of the names and captions with their
offsets (8 bytes a string) and makes an ``Item`` only when one is asked for; a slice is a view.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Item:
    """One image of the collection: its name (a relative path, or an id), its file when indexed
    from image files, its captions."""

    name: str
    path: Path | None
    captions: tuple[str, ...]


def _pack(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of ``texts`` end to end and their ``len(texts) + 1`` offsets."""
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.fromiter((len(t.encode("utf-8")) for t in texts), np.int64, len(texts)),
              out=offsets[1:])  # fmt: skip
    return np.frombuffer("".join(texts).encode("utf-8"), dtype=np.uint8), offsets


class PackedItems(Sequence):
    """Items without files (indexed features): ``names[i]`` and the captions
    ``captions[caption_starts[i]:caption_starts[i + 1]]`` of image ``i``.

    ``names``/``captions``: the texts; ``caption_starts``: ``len(names) + 1`` ascending rows."""

    def __init__(
        self, names: Sequence[str], captions: Sequence[str], caption_starts: np.ndarray
    ) -> None:
        if len(caption_starts) != len(names) + 1:
            raise ValueError(
                f"jwae_ext: caption_starts must have {len(names) + 1} entries (one per name and "
                f"one more), got {len(caption_starts)}"
            )
        self._names, self._name_offsets = _pack(names)
        self._captions, self._caption_offsets = _pack(captions)
        self._starts = np.asarray(caption_starts, dtype=np.int64)
        self._range = range(len(names))

    @classmethod
    def concat(cls, parts: Sequence[PackedItems]) -> PackedItems:
        """The items of ``parts`` one after the other (whole, not views)."""
        out = cls.__new__(cls)
        out._names, out._name_offsets = _concat([(p._names, p._name_offsets) for p in parts])
        out._captions, out._caption_offsets = _concat(
            [(p._captions, p._caption_offsets) for p in parts]
        )
        shifts = np.cumsum([0, *(p._starts[-1] for p in parts[:-1])])
        out._starts = np.concatenate(
            [[0], *(p._starts[1:] + shift for p, shift in zip(parts, shifts, strict=True))]
        ).astype(np.int64)
        out._range = range(len(out._name_offsets) - 1)
        return out

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, i):
        if isinstance(i, slice):
            view = PackedItems.__new__(PackedItems)
            view.__dict__.update(self.__dict__)
            view._range = self._range[i]
            return view
        row = self._range[i]
        first, stop = int(self._starts[row]), int(self._starts[row + 1])
        return Item(
            _text(self._names, self._name_offsets, row),
            None,
            tuple(_text(self._captions, self._caption_offsets, j) for j in range(first, stop)),
        )

    def __iter__(self) -> Iterator[Item]:
        return (self[i] for i in range(len(self)))

    def caption_count(self) -> int:
        """The captions of these items, without making them."""
        rows = self._range
        if not rows:
            return 0
        if rows.step == 1:
            return int(self._starts[rows.stop] - self._starts[rows.start])
        return int(np.diff(self._starts)[np.asarray(rows, dtype=np.int64)].sum())


def _text(data: np.ndarray, offsets: np.ndarray, row: int) -> str:
    return data[offsets[row] : offsets[row + 1]].tobytes().decode("utf-8")


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    shifts = np.cumsum([0, *(offsets[-1] for _, offsets in parts[:-1])])
    offsets = np.concatenate(
        [[0], *(o[1:] + shift for (_, o), shift in zip(parts, shifts, strict=True))]
    ).astype(np.int64)
    return np.concatenate([data for data, _ in parts]), offsets
