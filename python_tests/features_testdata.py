"""Image collections for the feature-extraction tests, drawn with PIL (nothing downloaded).

Each image shows one shape of one colour at one of nine places on a plain background; its
captions name the shape, the colour, the size and the place, in five phrasings.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 20),
    "purple": (140, 40, 170),
    "orange": (250, 140, 0),
    "white": (250, 250, 250),
}
PLACES = (
    "top left",
    "top",
    "top right",
    "left",
    "centre",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
PHRASINGS = (
    "a {size} {colour} {shape} in the {place}",
    "there is a {colour} {shape} at the {place} of the picture",
    "{size} {shape} coloured {colour} , {place}",
    "the image shows one {colour} {shape}",
    "a {shape} that is {colour} near the {place}",
)


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    place: int
    big: bool

    def captions(self, count: int = 5) -> list[str]:
        words = {
            "size": "big" if self.big else "small",
            "colour": self.colour,
            "shape": self.shape,
            "place": PLACES[self.place],
        }
        return [PHRASINGS[i % len(PHRASINGS)].format(**words) for i in range(count)]


def scenes(n: int, seed: int = 0) -> list[Scene]:
    """``n`` scenes, distinct while ``n`` <= 756, in a seeded order."""
    rng = np.random.default_rng(seed)
    combos = [
        (s, c, p, b) for s in SHAPES for c in COLOURS for p in range(9) for b in (False, True)
    ]
    order = rng.permutation(len(combos))
    return [Scene(*combos[order[i % len(combos)]]) for i in range(n)]


def draw(scene: Scene, width: int = 96, height: int = 96) -> Image.Image:
    """The scene as an RGB image of the given size."""
    image = Image.new("RGB", (width, height), (70, 80, 90))
    d = ImageDraw.Draw(image)
    row, col = divmod(scene.place, 3)
    cx, cy = (col + 0.5) * width / 3, (row + 0.5) * height / 3
    r = min(width, height) / (6.5 if scene.big else 11)
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif scene.shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif scene.shape == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif scene.shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif scene.shape == "cross":
        t = r / 3
        d.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        d.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    else:
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r / 2.5)
        d.polygon(
            [(cx + q * np.cos(a), cy - q * np.sin(a)) for q, a in zip(radii, angles, strict=True)],
            fill=fill,
        )
    return image


def write_collection(
    folder: Path,
    n: int,
    *,
    layout: str = "sidecar",
    captions_per_image: int = 5,
    seed: int = 0,
    mixed: bool = False,
) -> tuple[list[str], Path | None]:
    """Write ``n`` images (``img000.png`` ...) and their captions in ``layout`` (``sidecar``,
    ``coco``, ``karpathy``, ``tsv`` (``image#k<TAB>caption``), ``csv`` (with a header)).
    ``mixed``: varied sizes and formats (JPEG, grey, palette, RGBA). Returns the image names and
    the caption file (``None`` for sidecar)."""
    folder.mkdir(parents=True, exist_ok=True)
    names, captions = [], {}
    for i, scene in enumerate(scenes(n, seed)):
        size = (64 + 37 * (i % 5), 48 + 29 * (i % 4)) if mixed else (96, 96)
        image = draw(scene, *size)
        name = f"img{i:03d}.png"
        if mixed and i % 4 == 1:
            name = f"img{i:03d}.jpg"
            image.save(folder / name, quality=92)
        elif mixed and i % 4 == 2:
            image.convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(folder / name)
        elif mixed and i % 4 == 3:
            image.convert("RGBA").save(folder / name)
        else:
            image.save(folder / name)
        names.append(name)
        captions[name] = scene.captions(captions_per_image)
    return names, write_captions(folder, captions, layout)


def write_captions(folder: Path, captions: dict[str, list[str]], layout: str) -> Path | None:
    """Write ``captions`` (image name -> captions) in ``layout``; see :func:`write_collection`."""
    if layout == "sidecar":
        for name, caps in captions.items():
            (folder / name).with_suffix(".txt").write_text("\n".join(caps) + "\n")
        return None
    path = folder.parent / f"captions.{layout}"
    if layout == "coco":
        images = [{"id": 100 + i, "file_name": n} for i, n in enumerate(captions)]
        annotations = [
            {"image_id": 100 + i, "id": 7 * i + k, "caption": c}
            for i, caps in enumerate(captions.values())
            for k, c in enumerate(caps)
        ]
        path.write_text(json.dumps({"images": images, "annotations": annotations}))
    elif layout == "karpathy":
        images = [
            {"filename": n, "sentences": [{"raw": c} for c in caps]} for n, caps in captions.items()
        ]
        path.write_text(json.dumps({"images": images}))
    elif layout == "tsv":
        path.write_text(
            "".join(f"{n}#{k}\t{c}\n" for n, caps in captions.items() for k, c in enumerate(caps))
        )
    elif layout == "csv":
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "caption"])
            w.writerows([n, c] for n, caps in captions.items() for c in caps)
    else:
        raise ValueError(layout)
    return path


def truncated_copy(source: Path, target: Path) -> None:
    """``target``: the first half of the bytes of ``source`` (a truncated image)."""
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
