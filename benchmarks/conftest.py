"""Shared benchmark machinery: time (pytest-benchmark) and peak extra memory, side by side.

Every benchmark measures one *implementation* ("ours", "reference", "gemm", ...) of one *case*
(an operator at one size) through the ``measure`` fixture. At the end of the session a summary
prints, per case, each implementation's median time and peak extra memory and its ratio to the
reference and to the bare GEMM, all measured in the same run (these machines are noisy: absolute
times drift between runs, ratios measured side by side hold).

``JWAE_BENCH_SMOKE=1`` shrinks every size (CI runs the benchmarks once, untimed, this way).
``JWAE_BENCH_DEVICE=cuda`` runs them on the GPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

SMOKE = os.environ.get("JWAE_BENCH_SMOKE", "0") == "1"
DEVICE = os.environ.get("JWAE_BENCH_DEVICE", "cpu")


def sizes(full: list, smoke: list) -> list:
    """The sizes to benchmark: ``full`` normally, ``smoke`` under ``JWAE_BENCH_SMOKE=1``."""
    return smoke if SMOKE else full


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def _release_free_heap() -> None:
    """glibc's ``malloc_trim(0)``: its free pages, in every arena, back to the system."""
    libc = ctypes.util.find_library("c")
    if libc is not None and hasattr(ctypes.CDLL(libc), "malloc_trim"):
        ctypes.CDLL(libc).malloc_trim(0)


def peak_extra_memory(fn: Callable[[], object], device: str) -> int:
    """Bytes of memory ``fn`` needs above what is allocated when it starts (its peak).

    CUDA: the caching allocator's peak. CPU: the process's peak resident set, reset through
    /proc/self/clear_refs just before the call, minus the resident set at that moment. glibc keeps
    freed memory resident and hands it out again (an earlier call's buffers would not count), so
    its free memory is returned to the system first (``malloc_trim``): memory the call touches
    counts whether it comes from the kernel or from glibc's free lists. Timing runs without this.
    """
    gc.collect()
    if device != "cuda":
        _release_free_heap()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        del out
        return torch.cuda.max_memory_allocated() - base
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    base = _rss_bytes("VmRSS")
    out = fn()
    peak = _rss_bytes("VmHWM")
    del out
    return max(peak - base, 0)


@dataclass
class Result:
    case: str
    impl: str
    seconds: float | None
    peak_bytes: int


_RESULTS: dict[str, dict[str, Result]] = defaultdict(dict)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _synced(fn: Callable[[], object]) -> Callable[[], object]:
    def timed():
        out = fn()
        _sync(DEVICE)
        return out

    return timed


@pytest.fixture
def measure(benchmark):
    """``measure(case, impl, fn, rounds=..., alongside=None)``: time ``fn`` and record its peak
    extra memory.

    ``alongside`` maps other implementations' names to functions timed in turn with ``fn``, one
    call of each before every round of ``fn`` (outside its timing): for long cases, where a
    drift of the machine between two tests minutes apart would show in their ratio.
    """

    def run(
        case: str,
        impl: str,
        fn: Callable[[], object],
        rounds: int = 3,
        alongside: dict[str, Callable[[], object]] | None = None,
    ) -> None:
        timed = _synced(fn)
        others = {name: _synced(other) for name, other in (alongside or {}).items()}
        other_seconds: dict[str, list[float]] = defaultdict(list)

        def time_others():
            for name, other in others.items():
                start = time.perf_counter()
                other()
                other_seconds[name].append(time.perf_counter() - start)

        timed()  # warm-up: first-call allocations, lazy initialisation, cuBLAS handles
        for other in others.values():
            other()
        benchmark.group = case
        benchmark.extra_info["impl"] = impl
        start = time.perf_counter()
        benchmark.pedantic(timed, setup=time_others, rounds=rounds, iterations=1)
        elapsed = time.perf_counter() - start - sum(map(sum, other_seconds.values()))
        seconds = benchmark.stats.stats.median if benchmark.stats is not None else None
        if seconds is None and not benchmark.disabled:
            seconds = elapsed / rounds
        peak = peak_extra_memory(timed, DEVICE)
        benchmark.extra_info["peak_extra_mb"] = round(peak / 2**20, 1)
        _RESULTS[case][impl] = Result(case, impl, None if benchmark.disabled else seconds, peak)
        for name, other in others.items():
            times = other_seconds[name]
            benchmark.extra_info[f"{name}_seconds"] = times
            _RESULTS[case][name] = Result(
                case,
                name,
                None if benchmark.disabled else statistics.median(times),
                peak_extra_memory(other, DEVICE),
            )

    return run


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:6.2f}x" if a and b else "     -"


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    write = terminalreporter.write_line
    write("")
    write(f"jwae_ext benchmark summary (device={DEVICE}, torch threads={torch.get_num_threads()})")
    header = f"{'case':<44} {'impl':<12} {'median s':>10} {'peak MB':>9} {'/ref':>8} {'/gemm':>8}"
    write(header)
    write("-" * len(header))
    rows = []
    for case, impls in _RESULTS.items():
        ref = impls.get("reference")
        gemm = impls.get("gemm")
        for impl, r in impls.items():
            secs = f"{r.seconds:10.4f}" if r.seconds is not None else f"{'-':>10}"
            write(
                f"{case:<44} {impl:<12} {secs} {r.peak_bytes / 2**20:9.1f} "
                f"{_ratio(r.seconds, ref and ref.seconds):>8} "
                f"{_ratio(r.seconds, gemm and gemm.seconds):>8}"
            )
            rows.append({**r.__dict__, "device": DEVICE})
    out = os.environ.get("JWAE_BENCH_JSON")
    if out:
        Path(out).write_text(json.dumps(rows, indent=1))
        write(f"summary written to {out}")
