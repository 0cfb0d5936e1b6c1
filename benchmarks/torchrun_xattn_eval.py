"""Wall time of SCAN's exact evaluation in one process and split over the processes of a torchrun
job (retrieval_sharded.evaluate_xattn_sharded, docs/distributed.md), on the codes of
bench_xattn_scores.py (unit-norm, R = 36, lengths 8..16, d = 1024, COCO caption order).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/torchrun_xattn_eval.py 300 1500 3
    OMP_NUM_THREADS=1 PYTHONPATH=. torchrun --standalone --nproc_per_node 2 \\
        benchmarks/torchrun_xattn_eval.py 300 1500 3

(``PYTHONPATH=.``: this checkout's jwae_ext rather than an installed one.) Arguments: images,
captions, calls (default 3).

Rank 0 prints one JSON line: the processes, the seconds of each call (after a barrier, so every
rank starts together; the all_reduce of the counts included) and the table's rsum, which is the
same whatever the number of processes.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from bench_xattn_scores import _inputs

from jwae_ext import distributed
from jwae_ext.retrieval_sharded import evaluate_xattn_sharded


def main(n_images: int, n_captions: int, calls: int = 3) -> None:
    ctx = distributed.setup(torch.device("cpu"))
    try:
        images, captions, lengths, cap_to_img = _inputs(n_images, n_captions)
        seconds = []
        for _ in range(calls):
            ctx.barrier()
            start = time.perf_counter()
            table = evaluate_xattn_sharded(images, captions, lengths, cap_to_img, ctx)
            seconds.append(round(time.perf_counter() - start, 3))
        if ctx.is_main:
            print(json.dumps({
                "processes": ctx.world_size, "threads": torch.get_num_threads(),
                "size": [n_images, n_captions], "seconds": seconds, "rsum": table["rsum"],
            }))  # fmt: skip
    finally:
        ctx.teardown()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
