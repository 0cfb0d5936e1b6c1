"""Extraction from start to finish: plan, backbone, batches into the work area, final files.

The final files are written by :func:`jwae_ext.data.write_precomp_splits` in one transaction:
every ``{split}_ims.npy``, ``{split}_caps.txt``, ``{split}_ids.txt`` and ``extract.json`` (the
settings, sizes and skipped files) appear together or not at all. The features are copied from
the work area in bounded chunks, so the disk briefly holds them twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from jwae_ext.data.precomp import write_precomp_splits
from jwae_ext.extract.backbones import DEFAULT_BACKBONE, INPUT_SIZE, Backbone, load_backbone
from jwae_ext.extract.images import UnreadableImage, load_rgb
from jwae_ext.extract.partial import PartialExtraction
from jwae_ext.extract.plan import Item, Plan, Report, make_plan

REGIONS = ("pooled", "grid")
MANIFEST = "extract.json"
_FORMAT = 1  # bump when the bytes written for the same inputs change


@dataclass
class Summary:
    """What an extraction produced. ``images``: rows per split; ``seconds``/``images_per_second``:
    the network pass of this run (0 when nothing was left to do); ``resumed``: images an earlier
    run had already done; ``report``: what was skipped or changed, one line per kind."""

    out: Path
    images: dict[str, int]
    captions_per_image: int
    feature_shape: tuple[int, ...]
    split_source: str
    seconds: float
    images_per_second: float
    resumed: int
    report: list[str]


def extract(
    images: str | os.PathLike,
    out: str | os.PathLike,
    *,
    captions: str | os.PathLike | None = None,
    backbone: str | Backbone = DEFAULT_BACKBONE,
    weights: str | os.PathLike | None = None,
    regions: str = "pooled",
    fractions: tuple[float, float, float] | None = None,
    seed: int = 0,
    captions_per_image: int | None = None,
    batch_size: int = 32,
    device: str = "auto",
    workers: int = 0,
    progress: bool = True,
    restart: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> Summary:
    """Extract features of the captioned images under ``images`` into the precomp folder
    ``out`` (``python -m jwae_ext.features``; see docs/data.md). Resumes an interrupted
    extraction with the same inputs and settings; a finished one is not redone (unless its
    captions changed). ``backbone``: a name, or a :class:`Backbone` already loaded (then
    ``weights`` and ``device`` are its own)."""
    if regions not in REGIONS:
        raise ValueError(f"jwae_ext: --regions must be pooled or grid, got {regions!r}")
    for name, value, low in (("--batch-size", batch_size, 1), ("--workers", workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"jwae_ext: {name} must be an integer >= {low}, got {value!r}")
    out = Path(out)
    plan = make_plan(
        images, captions, fractions=fractions, seed=seed, captions_per_image=captions_per_image
    )
    net = backbone if isinstance(backbone, Backbone) else load_backbone(backbone, weights, device)
    shape = net.feature_shape(regions)
    fingerprint = _fingerprint(plan, net, regions)
    done = _finished(out, fingerprint, _captions_digest(plan))
    if done is not None and not restart:
        log(f"{out} already holds this extraction (nothing to do)")
        return done
    sizes = {split: len(items) for split, items in plan.splits.items()}
    shapes = {split: (n, *shape) for split, n in sizes.items()}
    work, resumed = PartialExtraction.open(out, fingerprint, shapes, restart=restart)
    already = sum(p.next for p in work.progress.values())
    if resumed:
        log(f"continuing an interrupted extraction: {already} of {sum(sizes.values())} images done")
    todo = sum(sizes.values()) - already
    start = time.perf_counter()
    with tqdm(total=todo, unit="img", disable=not progress, desc="features") as bar:
        for split, items in plan.splits.items():
            _extract_split(work, split, items, net, regions, batch_size, workers, bar)
    seconds = time.perf_counter() - start
    summary = _finish(out, work, plan, net, regions, fingerprint, seconds, todo, already)
    work.remove()
    return summary


class _Images(Dataset):
    def __init__(self, items: list[Item]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        try:
            return index, load_rgb(self.items[index].path, INPUT_SIZE), None
        except UnreadableImage as err:
            return index, None, str(err)


def _collate(samples):
    return samples  # a list of (index, pixels or None, reason or None), in plan order


def _extract_split(
    work: PartialExtraction,
    split: str,
    items: list[Item],
    net: Backbone,
    regions: str,
    batch_size: int,
    workers: int,
    bar: tqdm,
) -> None:
    start = work.progress[split].next
    # Batches start at multiples of batch_size in the plan, resumed or not (same bytes).
    batches = [
        list(range(i, min(i + batch_size, len(items))))
        for i in range(start, len(items), batch_size)
    ]
    loader = DataLoader(
        _Images(items), batch_sampler=batches, num_workers=workers, collate_fn=_collate
    )
    for samples in loader:
        pixels = [p for _, p, _ in samples if p is not None]
        skipped = [[i, items[i].name, reason] for i, p, reason in samples if p is None]
        if pixels:
            batch = torch.from_numpy(np.stack(pixels))
            work.write(split, net.features(batch, regions).cpu().numpy())
        work.commit(split, samples[-1][0] + 1, skipped)
        bar.update(len(samples))


def _fingerprint(plan: Plan, net: Backbone, regions: str) -> str:
    """What the feature bytes depend on: backbone, weights file, regions, the images per split
    (names, sizes, modification times). Not the captions: they are re-read when finishing."""

    def stat(path: Path) -> list:
        info = path.stat()
        return [info.st_size, info.st_mtime_ns]

    key = {
        "format": _FORMAT,
        "backbone": net.name,
        "weights": [str(net.weights), *stat(net.weights)],
        "regions": regions,
        "input": INPUT_SIZE,
        "splits": {s: [[i.name, *stat(i.path)] for i in items] for s, items in plan.splits.items()},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _captions_digest(plan: Plan) -> str:
    """The captions as written: a finished extraction whose captions changed is redone."""
    captions = {s: [[i.name, *i.captions] for i in items] for s, items in plan.splits.items()}
    return hashlib.sha256(json.dumps(captions, sort_keys=True).encode()).hexdigest()


def _finished(out: Path, fingerprint: str, captions: str) -> Summary | None:
    """The summary of a finished extraction of these images and captions in ``out``, if any."""
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        manifest.get("fingerprint") != fingerprint
        or manifest.get("captions") != captions
        or any(not (out / f"{split}_ims.npy").is_file() for split in manifest["images"])
    ):
        return None
    return Summary(
        out=out,
        images=manifest["images"],
        captions_per_image=manifest["captions_per_image"],
        feature_shape=tuple(manifest["feature_shape"]),
        split_source=manifest["split_source"],
        seconds=0.0,
        images_per_second=0.0,
        resumed=sum(manifest["images"].values()),
        report=Report.from_json(manifest["skipped"]).lines(),
    )


def _finish(
    out: Path,
    work: PartialExtraction,
    plan: Plan,
    net: Backbone,
    regions: str,
    fingerprint: str,
    seconds: float,
    todo: int,
    already: int,
) -> Summary:
    splits, extra, images = {}, {}, {}
    for split, items in plan.splits.items():
        skipped = work.progress[split].skipped
        plan.report.add(
            "unreadable image files (skipped)",
            [f"{name} ({reason})" for _, name, reason in skipped],
        )
        gone = {index for index, _, _ in skipped}
        kept = [item for index, item in enumerate(items) if index not in gone]
        if not kept:
            if split == "test":
                continue
            raise ValueError(f"jwae_ext: no image of the {split} split could be read")
        splits[split] = (work.features(split), [c for item in kept for c in item.captions])
        extra[f"{split}_ids.txt"] = "".join(f"{item.name}\n" for item in kept).encode("utf-8")
        images[split] = len(kept)
    summary = Summary(
        out=out,
        images=images,
        captions_per_image=plan.captions_per_image,
        feature_shape=net.feature_shape(regions),
        split_source=plan.split_source,
        seconds=seconds,
        images_per_second=todo / seconds if todo and seconds > 0 else 0.0,
        resumed=already,
        report=plan.report.lines(),
    )
    manifest = {
        "fingerprint": fingerprint,
        "captions": _captions_digest(plan),
        "backbone": net.name,
        "weights": str(net.weights),
        "regions": regions,
        "input_size": INPUT_SIZE,
        "feature_shape": list(summary.feature_shape),
        "captions_per_image": plan.captions_per_image,
        "split_source": plan.split_source,
        "images": images,
        "skipped": plan.report.to_json(),
    }
    extra[MANIFEST] = json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8")
    write_precomp_splits(out, splits, extra_files=extra)
    return summary
