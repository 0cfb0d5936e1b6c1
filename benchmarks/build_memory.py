"""Peak memory of an index build at several collection sizes: does it grow with N?

    python benchmarks/build_memory.py /tmp/build-memory 100000 300000 [--batch-size 4096]

Builds the pooled index (bench_search.py's generated precomp folders and run: d = 256 from 64-d
features, one caption per image) of each size in a fresh process, sampling /proc/self/status
every 5 ms: the peak anonymous memory (the process's own: model, batches, names and captions)
and the peak of file-backed pages (the memory-mapped features and codes, which the kernel
reclaims at will) above what the process holds before ``build_index`` (torch and jwae_ext
imported). Loading the run is inside the build, and counted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

FIELDS = ("RssAnon", "RssFile")
REPO = Path(__file__).resolve().parents[1]


def _resident_mb() -> dict[str, int]:
    with open("/proc/self/status") as status:
        rows = (line.split() for line in status)
        return {row[0][:-1]: int(row[1]) // 1024 for row in rows if row[0][:-1] in FIELDS}


def _build(root: Path, n: int, batch_size: int) -> dict:
    """Build the index of ``n`` images in this process; its peaks above the start, in MB."""
    import shutil

    sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # this tree's jwae_ext and helpers
    import bench_search as bench

    from jwae_ext.search import build_index

    if not (root / "runs").exists():
        bench._run(root / "runs", bench._precomp(root / "train", 32, (bench.FEATURES,), 0),
                   "vse++", bench.POOLED_DIM)  # fmt: skip
    data = root / f"data{n}"
    if not data.exists():
        bench._precomp(data, n, (bench.FEATURES,), seed=2)
    out = root / f"index{n}"
    shutil.rmtree(out, ignore_errors=True)
    base = _resident_mb()
    peak, done = dict(base), threading.Event()

    def sample() -> None:
        while not done.is_set():
            for key, value in _resident_mb().items():
                peak[key] = max(peak[key], value)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    build_index(root / "runs" / "vse++", out, data=f"{data}:test", batch_size=batch_size)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return {"images": n, "seconds": round(seconds, 1), "batch_size": batch_size,
            **{f"peak_{k}_mb": peak[k] - base[k] for k in FIELDS}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, help="work folder (data, run, indexes)")
    parser.add_argument("sizes", type=int, nargs="+")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # one size, in this process
        print(json.dumps(_build(args.root, args.sizes[0], args.batch_size)), flush=True)
        return
    # each size in a fresh process: memory freed by an earlier build would hide this one's
    for n in args.sizes:
        command = [sys.executable, __file__, str(args.root), str(n), "--one",
                   "--batch-size", str(args.batch_size)]  # fmt: skip
        subprocess.run(command, check=True, cwd=REPO)


if __name__ == "__main__":
    main()
