"""``python -m jwae_ext.search INDEX [INDEX ...] QUERY``: the k best images for a text query.

``--image FILE`` queries by an image, ``--queries FILE`` by many text queries (one per line),
``--captions`` ranks the indexed captions instead of the images, ``--json`` prints for machines.
Several INDEX folders are the shards of one collection: one exact answer. See docs/search.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from jwae_ext.checkpoint import CheckpointError
from jwae_ext.data.precomp import read_captions
from jwae_ext.ops.kernels import add_kernels_option
from jwae_ext.search.index import Hit, Index, TextResult

PROG = "python -m jwae_ext.search"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Query an index (python -m jwae_ext.index) by text or by image.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "args",
        nargs="+",
        metavar="INDEX [INDEX ...] QUERY",
        help="index folders (the shards of one collection), then the text query (none with "
        "--image or --queries)",
    )
    p.add_argument("-k", type=int, default=10, help="results per query")
    p.add_argument("--image", metavar="FILE", help="query by this image file")
    p.add_argument("--queries", metavar="FILE", help="text queries, one per line")
    p.add_argument("--captions", action="store_true", help="rank the indexed captions")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    add_kernels_option(p)
    return p


def run(args: argparse.Namespace) -> list[dict]:
    """The answers, one dict per query: ``query``, ``unknown_words``, ``hits``."""
    if args.image is not None and args.queries is not None:
        raise ValueError("jwae_ext: give --image or --queries, not both")
    indexes, queries = list(args.args), []
    if args.image is None and args.queries is None:
        if len(indexes) < 2:
            raise ValueError("jwae_ext: QUERY: give INDEX and then the text query (or --image)")
        queries = [indexes.pop()]
    elif args.queries is not None:
        queries = read_captions(args.queries)
    target = "captions" if args.captions else "images"
    index = Index.open(indexes, device=args.device)
    if args.image is not None:
        hits = index.search_image([args.image], k=args.k, target=target)[0]
        return [{"query": args.image, "unknown_words": [], "hits": hits}]
    results: list[TextResult] = index.search_text(queries, k=args.k, target=target)
    return [
        {"query": q, "unknown_words": r.unknown_words, "hits": r.hits}
        for q, r in zip(queries, results, strict=True)
    ]


def _line(rank: int, hit: Hit) -> str:
    where = hit.path or hit.name
    text = f"{rank:3d}  {hit.score:8.4f}  {where}"
    return text + (f'  "{hit.caption}"' if hit.caption is not None else "")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        answers = run(args)
    except (ValueError, OSError, CheckpointError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([{**a, "hits": [asdict(h) for h in a["hits"]]} for a in answers]))
        return 0
    for answer in answers:
        print(f"query: {answer['query']}")
        if answer["unknown_words"]:
            print(f"not in the vocabulary: {', '.join(answer['unknown_words'])}")
        for rank, hit in enumerate(answer["hits"], start=1):
            print(_line(rank, hit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
