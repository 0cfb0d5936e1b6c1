"""``python -m jwae_ext.features``: a folder of images and captions -> a precomp folder.

    python -m jwae_ext.features IMAGES --captions CAPTIONS --out FOLDER [--backbone NAME]
        [--weights FILE] [--regions pooled|grid] [--splits 0.8 0.1 0.1] [--seed S]
        [--captions-per-image K] [--batch-size B] [--device auto|cpu|cuda] [--workers W]

The work itself is in :mod:`jwae_ext.extract`; see docs/data.md.
"""

from __future__ import annotations

import argparse
import sys

from jwae_ext.checkpoint import CheckpointError
from jwae_ext.extract import DEFAULT_BACKBONE, REGIONS, extract

PROG = "python -m jwae_ext.features"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Extract image features of a folder of captioned images into the "
        "VSE++/SCAN precomp layout that python -m jwae_ext.train --data reads.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("images", help="folder of images (searched recursively)")
    p.add_argument(
        "--captions",
        help="COCO/Karpathy JSON or Flickr-style CSV/TSV; omit for a NAME.txt beside each image",
    )
    p.add_argument("--out", required=True, help="precomp folder to write")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help="or torchvision:NAME")
    p.add_argument("--weights", help="local weights file (needed for torchvision:NAME)")
    p.add_argument(
        "--regions",
        choices=REGIONS,
        default="pooled",
        help="(N, D) pooled features or (N, R, D) grid regions",
    )
    p.add_argument(
        "--splits",
        nargs=3,
        type=float,
        metavar=("TRAIN", "DEV", "TEST"),
        help="split fractions (default: the caption file's splits, else 0.8 0.1 0.1)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split by fractions")
    p.add_argument(
        "--captions-per-image",
        type=int,
        help="k captions per image (default: the most common count)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per network pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, default=0, help="image decoding processes")
    p.add_argument(
        "--restart",
        action="store_true",
        help="discard an unfinished extraction in --out instead of continuing it",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show a progress bar",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        summary = extract(
            args.images,
            args.out,
            captions=args.captions,
            backbone=args.backbone,
            weights=args.weights,
            regions=args.regions,
            fractions=tuple(args.splits) if args.splits else None,
            seed=args.seed,
            captions_per_image=args.captions_per_image,
            batch_size=args.batch_size,
            device=args.device,
            workers=args.workers,
            progress=args.progress,
            restart=args.restart,
            log=lambda line: print(line, file=sys.stderr),
        )
    except (ValueError, OSError, ImportError, CheckpointError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    for line in summary.report:
        print(f"skipped/changed: {line}")
    sizes = ", ".join(f"{split} {n}" for split, n in summary.images.items())
    shape = "x".join(map(str, summary.feature_shape))
    print(
        f"wrote {summary.out}: {sizes} images, {summary.captions_per_image} captions each, "
        f"features {shape} per image, splits by {summary.split_source}"
    )
    if summary.seconds:
        print(f"{summary.images_per_second:.1f} images/s ({summary.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
