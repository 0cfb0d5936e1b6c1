"""Search at scale (jwae_ext.search): index build throughput and query latency against the pass
over the codes that no exact search avoids (the floor), side by side, with peak extra memory.

    python -m pytest benchmarks/bench_search.py -s        # full sizes: ~3 GB of index files in /tmp
    JWAE_BENCH_SMOKE=1 python -m pytest benchmarks/bench_search.py

Pooled (d = 256, 1,000,000 images, float32): a run with a linear image encoder on 64-d features
indexes a generated precomp folder (one short caption per image) once (the 1M build, timed once:
its throughput is printed); the build case itself runs at 100,000 images. Queries go through
``Index.search_text`` (text encoding included) over the memory-mapped codes:
- one query against one bare matrix-vector product over the same memory-mapped codes (one pass);
- 1000 queries against the GEMM of the 1000 query codes by all codes, its output reused over
  chunks of 512 MB (the same FLOPs).
SCAN (20,000 images x 36 regions, d = 1024, float16 codes): one query and 100 queries through
``Index.search_text`` against the GEMM of their words by all regions (float32 region codes in
memory, chunked output: the floor without the float16 conversion the search pays per block).
faiss (the ``faiss`` extra; skipped without it): the pooled index's codes into an IVF index
(``to_faiss``, nlist 1024, build timed once and printed), the 1000 queries' caption codes searched
with a few ``nprobe``, each with its recall@10 against the exact top-10 (``dot_topk``, timed as
"exact") printed and stored in the benchmark's extra info.
"Peak MB" is the peak resident memory above what is resident when the call starts (the codes'
pages, touched in the warm-up, are already there): the memory a query adds beyond the maps.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import torch
from conftest import sizes

from jwae_ext.config import TrainConfig, resolve
from jwae_ext.search import Index, build_index, to_faiss
from jwae_ext.search.topk import dot_topk
from jwae_ext.train import Trainer

POOLED_IMAGES, BUILD_IMAGES, BATCHED = sizes([(1_000_000, 100_000, 1000)], [(20_000, 5_000, 50)])[0]
FAISS_NLIST, FAISS_NPROBES = sizes([(1024, (4, 16, 64))], [(32, (2, 8, 32))])[0]
SCAN_IMAGES, SCAN_BATCHED = sizes([(20_000, 100)], [(300, 10)])[0]
FEATURES, POOLED_DIM, SCAN_DIM, REGIONS = 64, 256, sizes([1024], [64])[0], 36
_GEMM_OUTPUT_BYTES = 512 * 2**20
WORDS = ("red", "green", "blue", "big", "small", "circle", "square", "star", "left", "right")


def _captions(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(WORDS), size=(n, 3))
    return [f"a {WORDS[a]} {WORDS[b]} {WORDS[c]}" for a, b, c in picks]


def _precomp(folder, n: int, shape: tuple[int, ...], seed: int):
    """A precomp folder with a ``test`` split of ``n`` random images (written in chunks) and one
    caption each; ``train``/``dev`` splits of 32 images for training the run."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for split, rows in (("train", 32), ("dev", 32), ("test", n)):
        ims = np.lib.format.open_memmap(
            folder / f"{split}_ims.npy", mode="w+", dtype=np.float32, shape=(rows, *shape)
        )
        for start in range(0, rows, 50_000):
            stop = min(start + 50_000, rows)
            ims[start:stop] = rng.standard_normal((stop - start, *shape), dtype=np.float32)
        ims.flush()
        text = "\n".join(_captions(rows, seed + len(split))) + "\n"
        (folder / f"{split}_caps.txt").write_text(text)
    return folder


def _run(root, data, variant: str, embed: int):
    """A run trained for one epoch on the precomp folder's 32 training images."""
    tiny = {"epochs": 1, "img_hidden": 0, "word_dim": 8, "batch_size": 16, "train_images": 32,
            "eval_images": 32, "vocab_threshold": 1, "progress": False}  # fmt: skip
    cfg = TrainConfig(
        run_dir=str(root), name=variant, data=str(data), variant=variant, embed_size=embed, **tiny
    )
    Trainer(resolve(cfg)).fit()
    return root / variant


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_search_pooled")
    data = _precomp(root / "data", POOLED_IMAGES, (FEATURES,), seed=0)
    run = _run(root / "runs", data, "vse++", POOLED_DIM)
    start = time.perf_counter()
    summary = build_index(run, root / "index", data=f"{data}:test", batch_size=4096)
    seconds = time.perf_counter() - start
    print(f"\nbuilt the pooled index of {summary.images} images in {seconds:.1f} s "
          f"({summary.images / seconds:.0f} images/s, captions included)")  # fmt: skip
    return root, run, data, Index.open(root / "index")


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_search_scan")
    data = _precomp(root / "data", SCAN_IMAGES, (REGIONS, FEATURES), seed=1)
    run = _run(root / "runs", data, "scan", SCAN_DIM)
    build_index(run, root / "index", data=f"{data}:test", dtype="float16", batch_size=1024)
    return root, Index.open(root / "index")


def _codes(index_folder) -> torch.Tensor:
    return torch.from_numpy(np.load(index_folder / "codes.npy", mmap_mode="c"))


def _chunked_gemm(left: torch.Tensor, right: torch.Tensor):
    """``left @ right.T`` over chunks of ``right`` into one reused output (bounded memory)."""
    chunk = max(1, _GEMM_OUTPUT_BYTES // (4 * left.shape[0]))
    out = torch.empty(left.shape[0], min(chunk, right.shape[0]))

    def run():
        for start in range(0, right.shape[0], chunk):
            part = right[start : start + chunk]
            torch.mm(left, part.T, out=out[:, : part.shape[0]])
        return out

    return run


@pytest.mark.parametrize("impl", ["ours"])
def test_build(measure, impl, pooled, tmp_path):
    _, run, _, _ = pooled
    data = _precomp(tmp_path / "data", BUILD_IMAGES, (FEATURES,), seed=2)
    out = tmp_path / "index"

    def build():
        shutil.rmtree(out, ignore_errors=True)
        return build_index(run, out, data=f"{data}:test", batch_size=4096)

    measure(f"index build {BUILD_IMAGES} pooled d={POOLED_DIM}", impl, build, rounds=1)


@pytest.mark.parametrize("impl", ["ours", "gemm"])
def test_pooled_one_query(measure, impl, pooled):
    root, _, _, index = pooled
    case = f"1 query {POOLED_IMAGES} pooled d={POOLED_DIM}"
    if impl == "ours":
        fn = lambda: index.search_text(["a red circle"], k=10)  # noqa: E731
    else:
        codes, query = _codes(root / "index"), torch.randn(POOLED_DIM)
        fn = lambda: torch.mv(codes, query)  # noqa: E731
    measure(case, impl, fn, rounds=5)


@pytest.mark.parametrize("impl", ["ours", "gemm"])
def test_pooled_batched_queries(measure, impl, pooled):
    root, _, _, index = pooled
    case = f"{BATCHED} queries {POOLED_IMAGES} pooled d={POOLED_DIM}"
    if impl == "ours":
        queries = _captions(BATCHED, seed=9)
        fn = lambda: index.search_text(queries, k=10)  # noqa: E731
    else:
        fn = _chunked_gemm(torch.randn(BATCHED, POOLED_DIM), _codes(root / "index"))
    measure(case, impl, fn, rounds=3)


@pytest.mark.parametrize("queries", [1, SCAN_BATCHED])
@pytest.mark.parametrize("impl", ["ours", "gemm"])
def test_scan_queries(measure, impl, queries, scan):
    root, index = scan
    case = f"{queries} queries scan {SCAN_IMAGES}x{REGIONS}x{SCAN_DIM} fp16"
    texts = _captions(queries, seed=7)
    if impl == "ours":
        fn = lambda: index.search_text(texts, k=10)  # noqa: E731
    else:
        words = sum(len(t.split()) + 2 for t in texts)  # with <start> and <end>
        regions = _codes(root / "index").float().reshape(-1, SCAN_DIM)
        fn = _chunked_gemm(torch.randn(words, SCAN_DIM), regions)
    measure(case, impl, fn, rounds=3)


@pytest.fixture(scope="module")
def faiss_ivf(pooled):
    """The pooled index in faiss IVF, its queries (the first captions' codes) and their exact
    top-10 image ids."""
    pytest.importorskip("faiss", reason="faiss-cpu (the faiss extra) is not installed")
    root = pooled[0]
    folder = root / "index"
    queries = torch.from_numpy(
        np.array(np.load(folder / "caption_codes.npy", mmap_mode="r")[:BATCHED])
    )
    _, rows = dot_topk(queries, np.load(folder / "codes.npy", mmap_mode="c"), 10)
    exact = np.load(folder / "image_ids.npy")[rows.numpy()]
    start = time.perf_counter()
    index = to_faiss(folder, kind="ivf", nlist=FAISS_NLIST)
    print(f"\nbuilt faiss IVF (nlist {FAISS_NLIST}) over {index.ntotal} codes in "
          f"{time.perf_counter() - start:.1f} s")  # fmt: skip
    return folder, index, queries, exact


def _recall_at_10(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)]))


@pytest.mark.parametrize("nprobe", [None, *FAISS_NPROBES])
def test_faiss_recall(measure, benchmark, nprobe, faiss_ivf):
    import faiss

    folder, index, queries, exact = faiss_ivf
    case = f"{BATCHED} queries {POOLED_IMAGES} pooled d={POOLED_DIM}: faiss IVF{FAISS_NLIST}"
    if nprobe is None:
        codes = np.load(folder / "codes.npy", mmap_mode="c")
        measure(case, "exact", lambda: dot_topk(queries, codes, 10), rounds=3)
        return
    faiss.extract_index_ivf(index).nprobe = nprobe
    recall = _recall_at_10(index.search(queries.numpy(), 10)[1], exact)
    benchmark.extra_info["recall_at_10"] = recall
    print(f"\nfaiss IVF{FAISS_NLIST} nprobe {nprobe}: recall@10 {recall:.4f}")
    measure(case, f"nprobe={nprobe}", lambda: index.search(queries.numpy(), 10), rounds=3)
