"""What will be extracted: images matched with their captions, one caption count, the splits.

Matching: a caption file's image name is looked up as a path relative to the image folder, then
by its base name when that is unique there. Images without captions and captions of missing
images are counted and named in the :class:`Report`, and skipped.

Captions per image: the precomp layout holds a fixed ``k`` per split (``lines / N``). ``k`` is
the most common caption count (the larger on a tie) unless given; an image with more captions
keeps its first ``k`` (as VSE++ does with COCO's 6- and 7-caption images), one with fewer repeats
its captions in order up to ``k``, so no image and no caption of a typical image is lost. Both are
counted in the report.

Splits: by image (all captions of an image in one split). The caption file's own split fields
(COCO/Karpathy ``split``) are kept when present, unless fractions are given; otherwise a seeded
permutation assigns ``round(fraction * N)`` images to ``dev`` and ``test`` and the rest to
``train``. Within a split images keep the order of the source (caption file order, or sorted
paths for ``NAME.txt`` captions).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jwae_ext.extract.caption_files import CaptionSource, read_caption_file, read_sidecar
from jwae_ext.extract.images import find_images

SPLITS = ("train", "dev", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
SHOWN = 5  # names shown per kind of problem


@dataclass(frozen=True)
class Item:
    """One image to extract: its name (written to ``{split}_ids.txt``), file and ``k`` captions."""

    name: str
    path: Path
    captions: tuple[str, ...]


@dataclass
class Report:
    """What was skipped or changed, by kind: a count and the first few names of each."""

    problems: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, names: list[str], count: int | None = None) -> None:
        """Record ``count`` (default ``len(names)``) cases of ``kind``, naming the first few."""
        count = len(names) if count is None else count
        if count:
            self.counts[kind] = self.counts.get(kind, 0) + count
            shown = self.problems.setdefault(kind, [])
            shown.extend(names[: SHOWN - len(shown)])

    def lines(self) -> list[str]:
        return [
            f"{self.counts[kind]} {kind}" + (f" (first: {', '.join(names)})" if names else "")
            for kind, names in self.problems.items()
        ]

    @classmethod
    def from_json(cls, data: dict) -> Report:
        return cls(
            problems={kind: list(v["first"]) for kind, v in data.items()},
            counts={kind: int(v["count"]) for kind, v in data.items()},
        )

    def to_json(self) -> dict:
        return {
            kind: {"count": self.counts[kind], "first": names}
            for kind, names in self.problems.items()
        }


@dataclass
class Plan:
    splits: dict[str, list[Item]]
    captions_per_image: int
    split_source: str  # "caption file" or "seed S, fractions a b c"
    report: Report


def make_plan(
    images: str | os.PathLike,
    captions: str | os.PathLike | None = None,
    *,
    fractions: tuple[float, float, float] | None = None,
    seed: int = 0,
    captions_per_image: int | None = None,
) -> Plan:
    """Match the images under ``images`` with ``captions`` (a caption file, or ``None`` for a
    ``NAME.txt`` beside each image) and split them; see the module docstring."""
    report = Report()
    on_disk = find_images(images)
    if captions is None:
        source = _sidecar_source(Path(images), on_disk, report)
    else:
        source = read_caption_file(captions)
        report.add("captions of unknown COCO image ids (skipped)", source.unknown_ids)
        report.add("caption rows with too few columns (skipped)", source.malformed)
    report.add("empty captions (skipped)", [], source.empty)
    matched = _match(source, on_disk, report)
    if not matched:
        raise ValueError(
            f"jwae_ext: no image under {images} has a caption"
            + (f" in {captions}" if captions is not None else " (no NAME.txt beside any image)")
        )
    k = captions_per_image or _common_count(matched)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"jwae_ext: --captions-per-image must be an integer >= 1, got {k!r}")
    report.add(
        f"images with more than {k} captions (kept the first {k})",
        [n for n, (_, c) in matched.items() if len(c) > k],
    )
    report.add(
        f"images with fewer than {k} captions (repeated to {k})",
        [n for n, (_, c) in matched.items() if len(c) < k],
    )
    items = {
        name: Item(name, path, tuple(caps[i % len(caps)] for i in range(k)))
        for name, (path, caps) in matched.items()
    }
    if fractions is None and source.splits is not None:
        assignment = {name: source.splits[name] for name in items}
        split_source = "caption file"
    else:
        fractions = fractions or DEFAULT_FRACTIONS
        assignment = _split_by_ratio(list(items), fractions, seed)
        split_source = f"seed {seed}, fractions {' '.join(f'{f:g}' for f in fractions)}"
    splits = {s: [items[n] for n in items if assignment[n] == s] for s in SPLITS}
    for needed in ("train", "dev"):
        if not splits[needed]:
            raise ValueError(
                f"jwae_ext: the {needed} split is empty ({split_source}); the trainer needs "
                "train and dev images"
            )
    return Plan({s: v for s, v in splits.items() if v}, k, split_source, report)


def _sidecar_source(folder: Path, on_disk: dict[str, Path], report: Report) -> CaptionSource:
    source = CaptionSource(captions={})
    stems = set()
    for name, path in on_disk.items():
        text = path.with_suffix(".txt")
        stems.add(text)
        if text.is_file():
            source.captions[name] = read_sidecar(text)
    orphans = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*.txt")
        if p not in stems and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    report.add("caption files without an image (skipped)", orphans)
    return source


def image_finder(on_disk: dict[str, Path]) -> Callable[[str], str | None]:
    """A caption file's image name -> the name of its file in ``on_disk`` (the same relative
    path, else the one file with that base name), or None."""
    by_base: dict[str, list[str]] = {}
    for name in on_disk:
        by_base.setdefault(name.rsplit("/", 1)[-1], []).append(name)

    def find(name: str) -> str | None:
        if name in on_disk:
            return name
        same_base = by_base.get(name.rsplit("/", 1)[-1], ())
        return same_base[0] if len(same_base) == 1 else None

    return find


def _match(
    source: CaptionSource, on_disk: dict[str, Path], report: Report
) -> dict[str, tuple[Path, list[str]]]:
    find = image_finder(on_disk)
    matched, missing, captioned = {}, [], set()
    for name, caps in source.captions.items():
        found = find(name)
        if found is None:
            missing.append(name)
            continue
        captioned.add(found)
        if caps:
            matched[name] = (on_disk[found], caps)
    report.add("captioned images missing from the image folder (skipped)", missing)
    report.add(
        "images without captions (skipped)",
        [n for n in on_disk if n not in captioned]
        + [n for n, caps in source.captions.items() if not caps and n not in missing],
    )
    return matched


def _common_count(matched: dict[str, tuple[Path, list[str]]]) -> int:
    counts = Counter(len(caps) for _, caps in matched.values())
    return max(counts, key=lambda k: (counts[k], k))


def _split_by_ratio(names: list[str], fractions: tuple[float, ...], seed: int) -> dict[str, str]:
    if (
        len(fractions) != 3
        or any(not np.isfinite(f) or f < 0 for f in fractions)
        or abs(sum(fractions) - 1) > 1e-6
    ):
        raise ValueError(
            f"jwae_ext: --splits must be three fractions (train dev test) >= 0 summing to 1, "
            f"got {' '.join(map(str, fractions))}"
        )
    n = len(names)
    sizes = [max(1, round(f * n)) if f > 0 else 0 for f in fractions[1:]]
    if n - sum(sizes) < 1:
        raise ValueError(
            f"jwae_ext: {n} captioned images are too few for --splits "
            f"{' '.join(map(str, fractions))} (train would be empty)"
        )
    order = np.random.default_rng(seed).permutation(n)
    labels = ["dev"] * sizes[0] + ["test"] * sizes[1]
    labels += ["train"] * (n - len(labels))
    return {names[i]: labels[rank] for rank, i in enumerate(order)}
