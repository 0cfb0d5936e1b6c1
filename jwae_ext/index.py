"""``python -m jwae_ext.index RUN --out INDEX``: index a collection with a trained run.

The command line of :func:`jwae_ext.search.build_index` (docs/search.md): ``--data`` indexes
features (a precomp folder, all splits or ``FOLDER:SPLIT``, or an embedded dataset),
``--images`` a folder of image files through the run's recorded feature extraction.
"""

from __future__ import annotations

import argparse
import sys

from jwae_ext.checkpoint import CheckpointError
from jwae_ext.ops.kernels import add_kernels_option
from jwae_ext.search import build_index
from jwae_ext.search.layout import DTYPES

PROG = "python -m jwae_ext.index"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Index images (features or files) with a trained run, for "
        "python -m jwae_ext.search.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="run folder (its best.pt) or checkpoint file")
    p.add_argument("--out", required=True, metavar="INDEX", help="index folder to write")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data",
        metavar="DATA[:SPLIT]",
        help="precomp folder (all splits, or one) or embedded dataset name",
    )
    source.add_argument("--images", metavar="FOLDER", help="folder of image files")
    p.add_argument(
        "--captions",
        metavar="FILE",
        help="with --images: captions of the images (any layout python -m jwae_ext.features reads)",
    )
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="storage of the codes")
    p.add_argument("--shard", default="0/1", metavar="I/N", help="build the I-th of N shards")
    p.add_argument(
        "--batch-size", type=int, default=256, help="images per committed batch (lost at most)"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--restart", action="store_true", help="discard an unfinished or other index")
    add_kernels_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        summary = build_index(
            args.run,
            args.out,
            data=args.data,
            images=args.images,
            captions=args.captions,
            dtype=args.dtype,
            shard=args.shard,
            batch_size=args.batch_size,
            device=args.device,
            restart=args.restart,
            progress=not args.no_progress,
            log=lambda line: print(line, file=sys.stderr),
        )
    except (ValueError, OSError, ImportError, CheckpointError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    for line in summary.skipped:
        print(f"skipped: {line}", file=sys.stderr)
    rate = f", {summary.images_per_second:.0f} images/s" if summary.images_per_second else ""
    print(
        f"indexed {summary.images} images and {summary.captions} captions into {summary.out}{rate}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
