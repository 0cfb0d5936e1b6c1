"""The work area of an extraction in progress: ``OUT/.extract-partial/`` (an index build uses the
same machinery in ``INDEX/.index-partial/``: see :mod:`jwae_ext.search.build`).

Features stream into one memory-mapped ``{split}.npy`` per split (per array: an index has its image
codes and its caption codes), sized for every planned image (a sparse file: disk is used as rows
are written), so memory stays bounded whatever the collection. Rows are packed: an unreadable image
takes no row. After each batch the maps are flushed, then ``state.json`` (written atomically)
records, per split, the next planned image, the rows written and the images skipped; a run killed
at any point loses at most the batch in flight, and the next run with the same inputs and settings
(the same fingerprint) continues from there. Batches are cut at fixed positions of the plan, so a
resumed run feeds the network the same batches as an uninterrupted one and writes the same bytes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jwae_ext.checkpoint import write_text_atomic

WORK_DIR = ".extract-partial"
_STATE = "state.json"


@dataclass
class SplitProgress:
    """``next``: planned images done; ``rows``: feature rows written; ``skipped``: ``[index,
    name, reason]`` of the planned images that could not be read."""

    next: int = 0
    rows: int = 0
    skipped: list[list] = field(default_factory=list)


class PartialExtraction:
    """Open with :meth:`open`; write rows with :meth:`rows`, record with :meth:`commit`."""

    def __init__(self, folder: Path, fingerprint: str, progress: dict[str, SplitProgress]):
        self.folder = folder
        self.fingerprint = fingerprint
        self.progress = progress
        self.arrays = {
            split: np.lib.format.open_memmap(folder / f"{split}.npy", mode="r+")
            for split in progress
        }

    @classmethod
    def open(
        cls,
        out: Path,
        fingerprint: str,
        shapes: dict[str, tuple[int, ...]],
        *,
        dtype: np.dtype | type = np.float32,
        dtypes: dict[str, np.dtype | type] | None = None,
        restart: bool = False,
        work_dir: str = WORK_DIR,
        what: str = "extraction",
    ) -> tuple[PartialExtraction, bool]:
        """Continue the extraction in ``out`` with this ``fingerprint``, or start one; return it
        and whether it was resumed. ``shapes``: the full shape of each array (planned rows
        first), of ``dtype`` unless ``dtypes`` names another for it. Another unfinished
        extraction (other inputs or settings) is an error unless ``restart`` discards it;
        ``work_dir`` and ``what`` name the work area and the kind of work in it."""
        folder = out / work_dir
        state = _read_state(folder)
        if state is not None and state.get("fingerprint") == fingerprint and not restart:
            progress = {s: SplitProgress(**p) for s, p in state["splits"].items()}
            return cls(folder, fingerprint, progress), True
        if state is not None and not restart:
            raise ValueError(
                f"jwae_ext: {out} holds an unfinished {what} of other images or with other "
                f"settings ({folder}); run with the same arguments to continue it, or pass "
                "--restart to discard it"
            )
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for split, shape in shapes.items():
            np.lib.format.open_memmap(
                folder / f"{split}.npy",
                mode="w+",
                dtype=(dtypes or {}).get(split, dtype),
                shape=shape,
            ).flush()
        extraction = cls(folder, fingerprint, {s: SplitProgress() for s in shapes})
        extraction._write_state()
        return extraction, False

    def write(self, split: str, features: np.ndarray) -> None:
        """Append ``features`` (rows of successive readable images) to ``split``."""
        rows = self.progress[split].rows
        self.arrays[split][rows : rows + len(features)] = features
        self.progress[split].rows += len(features)

    def commit(self, split: str, next_image: int, skipped: list[list]) -> None:
        """Record that the planned images before ``next_image`` are done (after flushing)."""
        self.commit_many({split: (next_image, skipped)})

    def commit_many(self, done: dict[str, tuple[int, list[list]]]) -> None:
        """:meth:`commit` of several arrays (``{split: (next_image, skipped)}``) in one state
        write: arrays that advance together are never recorded at different places."""
        for split, (next_image, skipped) in done.items():
            self.arrays[split].flush()
            self.progress[split].next = next_image
            self.progress[split].skipped.extend(skipped)
        self._write_state()

    def features(self, split: str) -> np.ndarray:
        """The rows written for ``split`` (a memory-mapped view)."""
        return self.arrays[split][: self.progress[split].rows]

    def remove(self) -> None:
        self.arrays.clear()
        shutil.rmtree(self.folder)

    def _write_state(self) -> None:
        state = {
            "fingerprint": self.fingerprint,
            "splits": {s: vars(p) for s, p in self.progress.items()},
        }
        write_text_atomic(self.folder / _STATE, json.dumps(state))


def _read_state(folder: Path) -> dict | None:
    """The saved state, or ``None`` when there is none (or it is unreadable: a run killed before
    its first state write has nothing worth keeping)."""
    try:
        return json.loads((folder / _STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
