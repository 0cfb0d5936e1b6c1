"""A collection's items packed in a few arrays on disk: what lets an index build hold a million
names and captions in memory that does not grow with their number.

A list of :class:`Item` costs some 300 bytes of Python objects per image (the item, its tuple,
its strings): 300 MB at a million images, more than the whole build's memory bound. Packed in
memory (UTF-8 bytes and 8-byte offsets) they still grow with the collection. :class:`PackedItems`
streams the names and captions into files of a scratch folder and memory-maps them: pages the
kernel reads back on demand and reclaims at will. An ``Item`` is made only when one is asked for;
a slice is a view.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_OFFSETS_PER_WRITE = 1 << 16


@dataclass(frozen=True)
class Item:
    """One image of the collection: its name (a relative path, or an id), its file when indexed
    from image files, its captions."""

    name: str
    path: Path | None
    captions: tuple[str, ...]


@dataclass(frozen=True)
class _Texts:
    """Texts end to end: text ``i`` is ``data[offsets[i]:offsets[i + 1]]`` (UTF-8)."""

    data: np.ndarray
    offsets: np.ndarray

    def __getitem__(self, i: int) -> str:
        return self.data[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8")

    def __len__(self) -> int:
        return len(self.offsets) - 1


def _spill_texts(folder: Path, name: str, texts: Iterable[str]) -> _Texts:
    """``texts`` streamed into ``folder/name.bin`` and their offsets into
    ``folder/name.offsets``, both memory-mapped."""
    data_path = folder / f"{name}.bin"
    with open(data_path, "wb") as data:
        sizes = (data.write(text.encode("utf-8")) for text in texts)
        offsets = _spill_running_sums(folder / f"{name}.offsets", sizes)
    return _Texts(_mapped(data_path, np.uint8), offsets)


def _spill_running_sums(path: Path, counts: Iterable[int]) -> np.ndarray:
    """0 and the running sums of ``counts``, streamed into ``path`` (int64), memory-mapped."""
    total, pending = 0, [0]
    with open(path, "wb") as f:
        for count in counts:
            total += count
            pending.append(total)
            if len(pending) >= _OFFSETS_PER_WRITE:
                f.write(np.asarray(pending, dtype=np.int64).tobytes())
                pending.clear()
        f.write(np.asarray(pending, dtype=np.int64).tobytes())
    return _mapped(path, np.int64)


def _mapped(path: Path, dtype: type) -> np.ndarray:
    if path.stat().st_size == 0:  # np.memmap refuses an empty file
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class PackedItems(Sequence):
    """Items without files (indexed features), or files under one folder: ``names[i]`` and the
    captions ``captions[caption_starts[i]:caption_starts[i + 1]]`` of image ``i``, and its file
    ``root / names[i]`` when ``root`` is given."""

    def __init__(self, names: _Texts, captions: _Texts, starts: np.ndarray, root: Path | None):
        self._names, self._captions, self._starts, self._root = names, captions, starts, root
        self._range = range(len(names))

    @classmethod
    def spill(
        cls,
        folder: str | Path,
        names: Iterable[str],
        captions: Iterable[str],
        captions_per_item: Iterable[int],
        root: str | Path | None = None,
    ) -> PackedItems:
        """The items streamed into files of ``folder`` (a scratch folder the caller removes):
        their ``names``, all their ``captions`` one item after the other, and how many of them
        each item has (``captions_per_item``, one count per name)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names_texts = _spill_texts(folder, "names", names)
        captions_texts = _spill_texts(folder, "captions", captions)
        starts = _spill_running_sums(folder / "starts", captions_per_item)
        if len(starts) != len(names_texts) + 1:
            raise ValueError(
                f"jwae_ext: captions_per_item must hold one count per name ({len(names_texts)}), "
                f"got {len(starts) - 1}"
            )
        if starts[-1] != len(captions_texts):
            raise ValueError(
                f"jwae_ext: captions_per_item adds up to {int(starts[-1])} captions, but "
                f"{len(captions_texts)} were given"
            )
        return cls(names_texts, captions_texts, starts, None if root is None else Path(root))

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
        name = self._names[row]
        return Item(
            name,
            None if self._root is None else self._root / name,
            tuple(self._captions[j] for j in range(first, stop)),
        )

    def __iter__(self) -> Iterator[Item]:
        return (self[i] for i in range(len(self)))

    def caption_counts(self, start: int, stop: int) -> np.ndarray:
        """How many captions each of the items ``start:stop`` has (of a view with step 1)."""
        rows = self._range[start:stop]
        if rows.step != 1:
            raise ValueError("jwae_ext: caption_counts needs a view with step 1")
        return np.diff(self._starts[rows.start : rows.stop + 1]) if rows else np.zeros(0, np.int64)

    def caption_count(self) -> int:
        """The captions of these items, without making them."""
        rows = self._range
        if not rows:
            return 0
        if rows.step == 1:
            return int(self._starts[rows.stop] - self._starts[rows.start])
        return sum(int(self._starts[r + 1] - self._starts[r]) for r in rows)
