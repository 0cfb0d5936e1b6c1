"""Retrieval ranks (both directions) and top-k search: ours against the reference (full score
matrix + sort), the bare GEMM, and faiss-cpu ``IndexFlatIP`` when installed (``.[faiss]``).

    python -m pytest benchmarks/bench_retrieval.py          # CPU; JWAE_BENCH_DEVICE=cuda for GPU

"gemm" is ``img @ cap.T``, the work no exact method avoids; where its N x M output would pass
512 MB (the scale case: 8 GB) it runs in caption chunks into one reused output, the same FLOPs.
The reference holds the whole score matrix and runs when the machine has room for it (twice the
matrix free); on CPU at the scale case (8 GB, minutes per run) only with
``JWAE_BENCH_FULL_REFERENCE=1``, and is skipped with a note otherwise. faiss answers top-10
queries (R@1/5/10 only: no median or mean rank), both directions.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import DEVICE, sizes

from jwae_ext import ops
from jwae_ext.reference import retrieval as reference

_GEMM_OUTPUT_BYTES = 512 * 2**20
FULL_REFERENCE = os.environ.get("JWAE_BENCH_FULL_REFERENCE", "0") == "1"
# JWAE_BENCH_DTYPE=bfloat16 (or float16) with JWAE_BENCH_DEVICE=cuda: the H200 target's inputs.
DTYPE = getattr(torch, os.environ.get("JWAE_BENCH_DTYPE", "float32"))

RANK_CASES = sizes(
    full=[("coco5k", 5000, 25000, 1024), ("scale", 20000, 100000, 256)],
    smoke=[("coco5k", 200, 1000, 64), ("scale", 300, 1500, 32)],
)
TOPK_CASES = sizes(
    full=[("coco5k", 5000, 25000, 1024, 1024)], smoke=[("coco5k", 200, 1500, 64, 1024)]
)


def _inputs(n_images: int, n_captions: int, d: int):
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(n_images, d, generator=g), dim=1)
    cap = torch.nn.functional.normalize(torch.randn(n_captions, d, generator=g), dim=1)
    cap_to_img = torch.arange(n_captions) * n_images // n_captions  # grouped, COCO order
    return img.to(DEVICE, DTYPE), cap.to(DEVICE, DTYPE), cap_to_img.to(DEVICE)


def _bare_gemm(img: torch.Tensor, cap: torch.Tensor):
    chunk = max(1, min(cap.shape[0], _GEMM_OUTPUT_BYTES // (img.element_size() * img.shape[0])))
    out = torch.empty(img.shape[0], chunk, device=img.device, dtype=img.dtype)

    def run():
        for part in cap.split(chunk):
            torch.mm(img, part.T, out=out[:, : part.shape[0]])
        return out

    return run


def _free_bytes() -> int:
    if DEVICE == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _skip_reference_without_room(n_rows: int, n_cols: int) -> None:
    need = 2 * 4 * n_rows * n_cols  # the score matrix, and as much again for sorting it in chunks
    if _free_bytes() < need:
        pytest.skip(
            f"reference needs ~{need / 2**30:.1f} GB for its {n_rows} x {n_cols} score matrix "
            f"and sort buffers; {_free_bytes() / 2**30:.1f} GB free"
        )


def _faiss_search(queries: torch.Tensor, gallery: torch.Tensor, k: int):
    faiss = pytest.importorskip("faiss", reason="faiss-cpu not installed (pip install '.[faiss]')")
    if DEVICE != "cpu":
        pytest.skip("faiss-cpu runs on the CPU")
    q = queries.contiguous().numpy()
    g = gallery.contiguous().numpy()

    def run():
        index = faiss.IndexFlatIP(g.shape[1])
        index.add(g)
        return index.search(q, k)

    return run


IMPLS = ["ours", "reference", "gemm", "faiss"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("name", "n_images", "n_captions", "d"), RANK_CASES)
def test_retrieval_ranks(measure, impl, name, n_images, n_captions, d):
    img, cap, cap_to_img = _inputs(n_images, n_captions, d)
    case = f"ranks {name} {n_images}x{n_captions}x{d} {str(DTYPE)[6:]}"
    rounds = 3
    if impl == "ours":
        fn = lambda: ops.retrieval_ranks(img, cap, cap_to_img)  # noqa: E731
    elif impl == "reference":
        if n_images * n_captions > 10**9 and DEVICE == "cpu" and not FULL_REFERENCE:
            pytest.skip(
                "the reference at the scale case sorts an 8 GB score matrix for minutes per run; "
                "JWAE_BENCH_FULL_REFERENCE=1 runs it (once) when there is room"
            )
        _skip_reference_without_room(n_images, n_captions)
        fn = lambda: reference.retrieval_ranks(img, cap, cap_to_img)  # noqa: E731
        rounds = 1 if n_images * n_captions > 10**9 else 3
    elif impl == "gemm":
        fn = _bare_gemm(img, cap)
    else:
        i2t, t2i = _faiss_search(img, cap, 10), _faiss_search(cap, img, 10)
        fn = lambda: (i2t(), t2i())  # noqa: E731
    measure(case, impl, fn, rounds=rounds)


@pytest.mark.parametrize("impl", ["ours", "reference", "faiss"])
@pytest.mark.parametrize(("name", "n_queries", "n_gallery", "d", "k"), TOPK_CASES)
def test_topk_search(measure, impl, name, n_queries, n_gallery, d, k):
    """Ours is timed with the GEMM floor in turn, round by round (the ratio the target is on)."""
    queries, gallery, _ = _inputs(n_queries, n_gallery, d)
    case = f"topk{k} {name} {n_queries}x{n_gallery}x{d} {str(DTYPE)[6:]}"
    alongside = None
    if impl == "ours":
        fn = lambda: ops.topk_search(queries, gallery, k)  # noqa: E731
        alongside = {"gemm": _bare_gemm(queries, gallery)}
    elif impl == "reference":
        _skip_reference_without_room(n_queries, n_gallery)
        fn = lambda: reference.topk_search(queries, gallery, k)  # noqa: E731
    else:
        fn = _faiss_search(queries, gallery, k)
    measure(case, impl, fn, rounds=5 if impl == "ours" else 3, alongside=alongside)
