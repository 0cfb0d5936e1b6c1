"""The embedded dataset: rendered scenes of simple objects, fixed CNN features, five captions each.

Image ``i`` of a split is a pure function of ``(seed, style, split, i)``: its scene and captions
come from one numpy ``Generator`` seeded with that tuple, its background texture from a second
one, so the first ``n`` images of a split do not depend on how many are generated, and the same
seed gives bit-identical features and captions on every machine (see :mod:`.features`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jwae_ext.data.captions import CAPTIONS_PER_IMAGE, PHRASINGS, write_captions
from jwae_ext.data.features import extract_features
from jwae_ext.data.precomp import write_precomp_splits
from jwae_ext.data.render import IMAGE_SIZE, STYLES, render_scene
from jwae_ext.data.scenes import Draws, SceneObject, sample_scene, scene_attributes
from jwae_ext.data.shift import check_strength, shifted_phrasing, shifted_style
from jwae_ext.data.split import CaptionSplit

# Sized so the default training run fits in a few CPU minutes (25k training captions per epoch).
DEFAULT_SIZES = {"train": 5000, "dev": 500, "test": 1000}
_SPLIT_IDS = {"train": 0, "dev": 1, "test": 2}
_STYLE_IDS = {"a": 0, "b": 1}
_NOISE_BYTES = IMAGE_SIZE * IMAGE_SIZE * 3


def image_rng(seed: int, style: str, split: str, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, _STYLE_IDS[style], _SPLIT_IDS[split], index, stream])


def _noise(seed: int, style: str, split: str, index: int) -> np.ndarray:
    """Image ``index``'s background texture bytes (raw PCG64 output, little-endian)."""
    raw = image_rng(seed, style, split, index, 1).bit_generator.random_raw(-(-_NOISE_BYTES // 8))
    return raw.astype("<u8").view(np.uint8)[:_NOISE_BYTES]


def _check_args(style: str, split: str, seed: int, num_images: int | None) -> int:
    if style not in _STYLE_IDS:
        raise ValueError(f"jwae_ext: style must be one of {tuple(_STYLE_IDS)}, got {style!r}")
    if split not in _SPLIT_IDS:
        raise ValueError(
            f"jwae_ext: the embedded dataset has splits {tuple(_SPLIT_IDS)}, got {split!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"jwae_ext: seed must be a non-negative integer, got {seed!r}")
    n = DEFAULT_SIZES[split] if num_images is None else num_images
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"jwae_ext: num_images must be a positive integer, got {num_images!r}")
    return int(n)


@dataclass(frozen=True)
class Scenes:
    """The scenes of one split: each image's objects, captions and pixels, and a ``render``
    function that draws image ``i`` again without keeping all pixels."""

    objects: list[list[SceneObject]]
    captions: list[list[str]]
    pixels: np.ndarray  # (N, H, W, 3) uint8
    render: Callable[[int], np.ndarray]


def generate_scenes(
    style: str,
    split: str,
    *,
    seed: int,
    num_images: int | None,
    marked: bool = False,
    shift: float = 1.0,
) -> Scenes:
    """The scenes of ``split`` (see :func:`synthetic_split` for the arguments); ``marked``
    captions carry Flickr30k Entities markup (:func:`~jwae_ext.data.captions.write_captions`)."""
    n = _check_args(style, split, seed, num_images)
    seed = int(seed)
    if style == "a" and check_strength(shift) != 1.0:
        raise ValueError(f"jwae_ext: style 'a' is the reference and has no shift, got {shift}")
    drawing = STYLES["a"] if style == "a" else shifted_style(shift)
    phrasing = PHRASINGS["a"] if style == "a" else shifted_phrasing(shift)
    scenes: list[list[SceneObject]] = []
    captions: list[list[str]] = []
    pixels = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i in range(n):
        draws = Draws(image_rng(seed, style, split, i, 0))
        scene = sample_scene(draws)
        captions.append(write_captions(scene, phrasing, draws, marked=marked))
        scenes.append(scene)
        pixels[i] = render_scene(scene, drawing, _noise(seed, style, split, i))

    def render(index: int) -> np.ndarray:
        return render_scene(scenes[index], drawing, _noise(seed, style, split, index))

    return Scenes(scenes, captions, pixels, render)


def synthetic_split(
    style: str = "a",
    split: str = "train",
    *,
    seed: int = 0,
    num_images: int | None = None,
    shift: float = 1.0,
) -> CaptionSplit:
    """Generate one split of the embedded dataset.

    ``style``: ``"a"`` or ``"b"``; ``split``: ``"train"``, ``"dev"`` or ``"test"``;
    ``num_images``: defaults to :data:`DEFAULT_SIZES`; ``shift``: how far style "b" renders and
    phrases from style "a" (:mod:`.shift`; 1, the default, is style "b" as it is; style "a" has
    no shift). Returns a :class:`CaptionSplit` with
    ``(N, 1024)`` float32 features, ``(N, 9, 256)`` region features, ``5 N`` captions (image
    ``i`` has captions ``5i .. 5i+4``), :class:`~jwae_ext.data.scenes.SceneAttributes` and a
    renderer.
    """
    scenes = generate_scenes(style, split, seed=seed, num_images=num_images, shift=shift)
    n = len(scenes.objects)
    features, regions = extract_features(scenes.pixels, regions=True)
    return CaptionSplit(
        name=f"synthetic-{style}{'' if shift == 1.0 else f'@{shift:g}'}/{split}",
        images=features,
        regions=regions,
        captions=[c for captions in scenes.captions for c in captions],
        cap_to_img=np.arange(n * CAPTIONS_PER_IMAGE, dtype=np.int64) // CAPTIONS_PER_IMAGE,
        attributes=scene_attributes(scenes.objects),
        renderer=scenes.render,
    )


def export_precomp(
    folder: str | os.PathLike,
    style: str = "a",
    *,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    regions: bool = False,
    captions_per_image: int = CAPTIONS_PER_IMAGE,
) -> Path:
    """Write the embedded dataset's splits (``sizes``, default :data:`DEFAULT_SIZES`) as a
    precomp folder (``{split}_ims.npy``, ``{split}_caps.txt``); returns the folder.
    ``regions=True`` writes the ``(N, 9, 256)`` region features instead of the pooled ones (the
    layout of SCAN's bottom-up features; pooled models then see their mean).
    ``captions_per_image`` keeps each image's first captions (1 to 5): with small ``sizes``, the
    shape of a small photo collection with one caption per photo."""
    if not 1 <= captions_per_image <= CAPTIONS_PER_IMAGE:
        raise ValueError(
            f"jwae_ext: captions_per_image must be in [1, {CAPTIONS_PER_IMAGE}], got "
            f"{captions_per_image}"
        )
    folder = Path(folder)
    splits = {}
    for split, n in (sizes or DEFAULT_SIZES).items():
        data = synthetic_split(style, split, seed=seed, num_images=n)
        features = data.regions if regions else data.images
        captions = [
            c for k, c in enumerate(data.captions) if k % CAPTIONS_PER_IMAGE < captions_per_image
        ]
        splits[split] = (np.asarray(features), captions)
    # All splits or none: a bad size or a full disk leaves no partial folder behind.
    write_precomp_splits(folder, splits)
    return folder


def main(argv: list[str] | None = None) -> None:
    """``python -m jwae_ext.data.synthetic FOLDER``: export an embedded dataset as precomp."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m jwae_ext.data.synthetic",
        description="Write an embedded dataset as a VSE++/SCAN precomp folder.",
    )
    parser.add_argument("folder")
    parser.add_argument("--style", choices=sorted(_STYLE_IDS), default="a")
    parser.add_argument("--seed", type=int, default=0)
    for split, n in DEFAULT_SIZES.items():
        parser.add_argument(f"--{split}", type=int, default=n, metavar="N", help=f"images ({n})")
    parser.add_argument(
        "--regions", action="store_true", help="write (N, 9, 256) region features (for SCAN)"
    )
    parser.add_argument(
        "--captions-per-image",
        type=int,
        default=CAPTIONS_PER_IMAGE,
        metavar="K",
        help=f"keep each image's first K captions (1 to {CAPTIONS_PER_IMAGE})",
    )
    args = parser.parse_args(argv)
    sizes = {split: getattr(args, split) for split in DEFAULT_SIZES}
    try:
        folder = export_precomp(
            args.folder,
            args.style,
            seed=args.seed,
            sizes=sizes,
            regions=args.regions,
            captions_per_image=args.captions_per_image,
        )
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"wrote {', '.join(f'{s} ({n} images)' for s, n in sizes.items())} to {folder}")


if __name__ == "__main__":
    main()
