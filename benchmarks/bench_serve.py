"""Load on ``python -m jwae_ext.serve`` over loopback: concurrent clients sending mixed text
and image queries to a real server over a generated 100,000-image index; no errors allowed,
p50 / p99 latency and requests/s reported, and the server's memory after 5,000 requests within
10 % of its memory after the first 100.

    python benchmarks/bench_serve.py --work /tmp/serve-load          # the full run, ~minutes
    JWAE_BENCH_SMOKE=1 python -m pytest benchmarks/bench_serve.py    # CI: tiny, untimed

The index is real: a tiny model trained on drawn images (python_tests/serve_testdata.py), and
a generated precomp folder of N images (the drawn images' extracted features plus seeded noise,
one drawn-scene caption each, the training folder's extract.json so image queries run the same
extraction) indexed with ``python -m jwae_ext.index``'s library. Image queries upload drawn
images (PNG), which the server decodes, checks and runs through the backbone.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from conftest import SMOKE

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python_tests"))
from features_testdata import draw, scenes
from serve_testdata import Server, serving, trained_collection

from jwae_ext.data import load_precomp, write_precomp_splits
from jwae_ext.search import build_index

K = 10
IMAGE_SHARE = 3  # one request in three uploads an image


@dataclass(frozen=True)
class Load:
    images: int
    clients: int
    requests_per_client: int
    early: int  # memory is read after this many requests ...
    late: int  # ... and after this many
    between: tuple[int, ...] = ()  # (and after these, to see its course)


FULL = Load(100_000, clients=16, requests_per_client=320, early=100, late=5_000,
            between=(500, 1_000, 2_000, 3_000, 4_000))  # fmt: skip
SMALL = Load(images=2_000, clients=4, requests_per_client=15, early=10, late=50)


def generated_index(work: Path, images: int) -> Path:
    """An index of ``images`` generated images (see the module docstring), built once."""
    collection = trained_collection(work / "collection")
    index = work / f"index-{images}"
    if (index / "manifest.json").exists():
        return index
    source = collection.run.parent.parent / "precomp"
    real = np.concatenate([load_precomp(source, s).images[:] for s in ("train", "dev", "test")])
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(real), images)
    noise = rng.normal(0, 0.1 * float(real.std()), (images, real.shape[1])).astype(np.float32)
    features = real[rows] + noise
    captions = [scene.captions(1)[0] for scene in scenes(images, seed=1)]
    data = work / f"precomp-{images}"
    write_precomp_splits(
        data,
        {"test": (features, captions)},
        extra_files={"extract.json": (source / "extract.json").read_bytes()},
    )
    build_index(collection.run, index, data=str(data), batch_size=4096)
    return index


def queries(count: int, seed: int) -> list[tuple[str, bytes | str]]:
    """``count`` requests: a drawn-scene caption, or (one in ``IMAGE_SHARE``) a drawn PNG."""
    out = []
    for i, scene in enumerate(scenes(count, seed=seed)):
        if i % IMAGE_SHARE == IMAGE_SHARE - 1:
            png = io.BytesIO()
            draw(scene, 160, 120).save(png, "PNG")
            out.append(("image", png.getvalue()))
        else:
            out.append(("text", scene.captions(5)[i % 5]))
    return out


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS missing")


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def run_load(server: Server, load: Load) -> dict:
    """Every client sends its requests one after another; all clients at once."""
    latencies: list[float] = []
    by_kind: dict[str, list[float]] = {"text": [], "image": []}
    searching: dict[str, list[float]] = {"text": [], "image": []}  # the server's took_ms
    failures: list[str] = []
    memory: dict[int, int] = {}
    lock = threading.Lock()

    def client(number: int) -> None:
        for kind, query in queries(load.requests_per_client, seed=number):
            start = time.perf_counter()
            if kind == "text":
                status, answer = server.post_json("/api/search", {"text": query, "k": K})
            else:
                status, answer = server.upload(query, "query.png", k=K)
            took = time.perf_counter() - start
            ok = status == 200 and len(answer["results"]) == K
            with lock:
                latencies.append(took)
                by_kind[kind].append(took)
                if not ok:
                    failures.append(f"{kind} {status}: {answer}")
                else:
                    searching[kind].append(answer["took_ms"])
                for mark in (load.early, *load.between, load.late):
                    if len(latencies) == mark:
                        memory[mark] = rss_bytes(server.process.pid)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(load.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "images": load.images,
        "clients": load.clients,
        "requests": len(latencies),
        "errors": len(failures),
        "first_errors": failures[:3],
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "requests_per_s": len(latencies) / wall,
        **{
            f"{kind}_{name}": value
            for kind in by_kind
            for name, value in [
                ("requests", len(by_kind[kind])),
                ("p50_ms", percentile(by_kind[kind], 50) * 1000),
                ("p99_ms", percentile(by_kind[kind], 99) * 1000),
                ("search_p50_ms", statistics.median(searching[kind])),
            ]
        },
        f"rss_mb_after_{load.early}": memory[load.early] / 2**20,
        f"rss_mb_after_{load.late}": memory[load.late] / 2**20,
        "rss_growth": memory[load.late] / memory[load.early] - 1,
        "rss_mb_course": {mark: round(rss / 2**20, 1) for mark, rss in sorted(memory.items())},
    }


def measure(work: Path, load: Load) -> dict:
    index = generated_index(work, load.images)
    with serving(str(index)) as server:
        # One warm-up query of each kind: the first image query loads the backbone.
        server.post_json("/api/search", {"text": "a red circle", "k": K})
        server.upload(queries(IMAGE_SHARE, seed=99)[-1][1], "warm.png", k=K)
        return run_load(server, load)


def test_serve_under_load(tmp_path_factory):
    load = SMALL if SMOKE else FULL
    result = measure(tmp_path_factory.mktemp("serve-load"), load)
    print(json.dumps(result, indent=1))
    assert result["errors"] == 0, result["first_errors"]
    assert result["requests"] == load.clients * load.requests_per_client
    if not SMOKE:
        assert abs(result["rss_growth"]) <= 0.10, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, help="folder for the run and index (kept; default temp)")
    p.add_argument("--images", type=int, default=FULL.images)
    p.add_argument("--clients", type=int, default=FULL.clients)
    p.add_argument("--requests-per-client", type=int, default=FULL.requests_per_client)
    p.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = p.parse_args()
    load = Load(args.images, args.clients, args.requests_per_client, FULL.early, FULL.late,
                FULL.between)  # fmt: skip
    work = args.work or Path(tempfile.mkdtemp(prefix="serve-load-"))
    try:
        result = measure(work, load)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
