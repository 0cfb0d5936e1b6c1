"""Build the real image folders the README's real-data tables were measured on.

Not part of the package: a reproducibility script. It turns image collections that Debian and npm
ship with human-written descriptions into a folder of images plus a COCO captions JSON (with a
``split`` field per image), which ``python -m jwae_ext.features`` reads:

- ``emoji-twitter`` / ``emoji-google``: the same 1900 emoji drawn by two artists (npm packages
  ``emoji-datasource-twitter`` and ``emoji-datasource-google``, 64 px PNGs), captioned with their
  Unicode/CLDR names ("grinning face with smiling eyes", "egypt flag"). Both use one split of the
  emoji *concepts*, so a twitter-trained model tested on google's test split meets emoji it never
  saw, drawn by someone else.
- ``tuxpaint``: Tux Paint's stamps (Debian ``tuxpaint-stamps-default``): photographs and drawings
  of animals, food, vehicles, ..., each with its one-sentence English description.
- ``openclipart``: Open Clip Art drawings (Debian ``openclipart-svg`` for the titles,
  ``openclipart-png`` for the pixels) of the library's categories that Tux Paint's stamps also
  cover (animals, food, plants, people, transportation, buildings, tools, recreation), whose title
  is a short phrase (collection labels, file-like and duplicated titles dropped): the
  cross-dataset test of a tuxpaint-trained model, the same kinds of things drawn by others.

    apt-get download tuxpaint-stamps-default openclipart-svg openclipart-png
    npm pack emoji-datasource-twitter emoji-datasource-google
    python tools/real_folders.py DOWNLOADS OUT [emoji|tuxpaint|openclipart ...]
    # -> OUT/<name>/images and OUT/<name>/captions.json, then for each <name>:
    python -m jwae_ext.features OUT/NAME/images --captions OUT/NAME/captions.json --out data/NAME
"""

from __future__ import annotations

import glob
import json
import random
import re
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path


def _split_of(index: int, count: int, rng_order: list[int], dev: float, test: float) -> str:
    rank = rng_order.index(index)
    if rank < round(test * count):
        return "test"
    if rank < round((test + dev) * count):
        return "dev"
    return "train"


def _write(out: Path, items: list[tuple[Path, str, str]]) -> None:
    """items: (source image, caption, split) -> OUT/images + OUT/captions.json (COCO layout)."""
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, (source, caption, split) in enumerate(items):
        name = f"{i:05d}{source.suffix.lower()}"
        shutil.copyfile(source, images_dir / name)
        images.append({"id": i, "file_name": name, "split": split})
        annotations.append({"image_id": i, "caption": caption})
    (out / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    counts = Counter(split for _, _, split in items)
    print(f"{out}: {len(items)} images {dict(counts)}")


def _unpack(archive: Path, into: Path) -> Path:
    if not into.exists():
        into.mkdir(parents=True)
        if archive.suffix == ".deb":
            subprocess.run(["dpkg", "-x", str(archive), str(into)], check=True)
        else:
            with tarfile.open(archive) as tar:
                tar.extractall(into, filter="data")
    return into


def emoji(downloads: Path, out: Path, work: Path) -> None:
    sets = {}
    for artist in ("twitter", "google"):
        archive = next(downloads.glob(f"emoji-datasource-{artist}-*.tgz"))
        sets[artist] = _unpack(archive, work / f"emoji-{artist}") / "package"
    entries = json.loads((sets["twitter"] / "emoji.json").read_text())
    entries = [
        e
        for e in entries
        if e["has_img_twitter"] and e["has_img_google"] and e["category"] != "Component"
    ]
    entries.sort(key=lambda e: e["sort_order"])
    order = list(range(len(entries)))
    random.Random(0).shuffle(order)
    splits = [_split_of(i, len(entries), order, 0.15, 0.15) for i in range(len(entries))]
    for artist, root in sets.items():
        items, kept = [], {"train": 0, "dev": 0}
        for entry, split in zip(entries, splits, strict=True):
            image = root / "img" / artist / "64" / entry["image"]
            # google is the cross-dataset test: its test split, and the first 30 train and dev
            # images because a precomp folder needs them.
            if artist == "google" and split != "test":
                if kept[split] == 30:
                    continue
                kept[split] += 1
            if image.exists():
                items.append((image, entry["name"].lower(), split))
        _write(out / f"emoji-{artist}", items)


def tuxpaint(downloads: Path, out: Path, work: Path) -> None:
    root = _unpack(next(downloads.glob("tuxpaint-stamps-default_*.deb")), work / "tuxpaint")
    items = []
    for png in sorted(glob.glob(str(root / "usr/share/tuxpaint/stamps/**/*.png"), recursive=True)):
        text = Path(png).with_suffix(".txt")
        if not text.exists():
            continue
        first = text.read_text(errors="replace").splitlines()
        caption = first[0].strip() if first else ""
        if caption and "=" not in caption:
            items.append((Path(png), caption, ""))
    order = list(range(len(items)))
    random.Random(0).shuffle(order)
    items = [
        (p, c, _split_of(i, len(items), order, 0.15, 0.15)) for i, (p, c, _) in enumerate(items)
    ]
    _write(out / "tuxpaint", items)


_NOT_A_CAPTION = re.compile(
    r"collection|theme|clipart|clip art|by |icon|http|\d{3}|_|aiga|untitled|hash|svg|\.|^\W*$", re.I
)


_SHARED_CATEGORIES = (
    "animals",
    "food",
    "plants",
    "people",
    "transportation",
    "buildings",
    "tools",
    "recreation",
)


def openclipart(downloads: Path, out: Path, work: Path, test_images: int = 600) -> None:
    svg = _unpack(next(downloads.glob("openclipart-svg_*.deb")), work / "openclipart-svg")
    png = _unpack(next(downloads.glob("openclipart-png_*.deb")), work / "openclipart-png")
    titles = {}
    root = svg / "usr/share/openclipart/svg"
    paths = [
        p for c in _SHARED_CATEGORIES for p in glob.glob(str(root / c / "**/*.svg"), recursive=True)
    ]
    for path in sorted(paths):
        match = re.search(
            r"<dc:title>(.*?)</dc:title>", Path(path).read_text(errors="ignore"), re.S
        )
        if match:
            titles[path] = " ".join(match.group(1).split())
    counts = Counter(titles.values())
    items = []
    for path, title in titles.items():
        if counts[title] > 2 or _NOT_A_CAPTION.search(title) or len(title.split()) > 8:
            continue
        image = Path(path.replace(str(svg), str(png)).replace("/svg/", "/png/")[:-4] + ".png")
        if image.exists():
            items.append((image, title, ""))
    random.Random(0).shuffle(items)
    # Only the test split is used (the cross-dataset test); train and dev hold a few images
    # because a precomp folder needs them.
    items = items[: test_images + 100]
    items = [
        (p, c, "train" if i < 50 else "dev" if i < 100 else "test")
        for i, (p, c, _) in enumerate(items)
    ]
    _write(out / "openclipart", items)


def main(argv: list[str]) -> int:
    downloads, out = Path(argv[0]), Path(argv[1])
    work = out / ".unpacked"
    for build in (emoji, tuxpaint, openclipart):
        if len(argv) < 3 or build.__name__ in argv[2:]:
            build(downloads, out, work)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
