"""``python -m jwae_ext.info``: what was built, what this machine has, and whether every kernel
agrees with its reference here (docs/info.md).

Prints the build (compiled backends, CUDA architectures, the torch and CUDA versions of the build
and of the runtime, the BLAS), the visible devices and the kernel mode, then runs the self-test of
:mod:`jwae_ext.selftest`: one row per operator, device and dtype with the largest error against
its tolerance, forward and backward, pass or FAIL, and the kernel's time. Exits 1 when any row
fails; ``--json`` prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import torch

import jwae_ext
from jwae_ext import selftest
from jwae_ext.ops.kernels import ENV_VAR, kernel_mode


def blas() -> str:
    """The BLAS torch was built with, from ``torch.__config__.show()`` (``BLAS_INFO=...``)."""
    found = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    return found[1] if found else "unknown"


def devices() -> list[dict]:
    """The CPU (threads, SIMD level) and every visible CUDA device (name, capability, memory)."""
    cpu = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "capability": torch.backends.cpu.get_cpu_capability(),
    }
    gpus = []
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(index)
        gpus.append({
            "device": f"cuda:{index}",
            "name": props.name,
            "capability": f"sm_{props.major}{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
        })  # fmt: skip
    return [cpu, *gpus]


def environment() -> dict:
    """Everything ``info`` reports before the self-test."""
    build = jwae_ext.build_info()
    return {
        "jwae_ext": jwae_ext.__version__,
        "location": os.path.dirname(jwae_ext.__file__),
        "build": {
            "backends": build["backends"],
            "cuda_archs": build["cuda_archs"],
            "torch": build["torch_version"],
            "cuda": build["cuda_version"],
            "openmp": build["openmp"],
        },
        "runtime": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "torch_cuda_archs": torch.cuda.get_arch_list() if torch.cuda.is_available() else [],
            "blas": blas(),
        },
        "devices": devices(),
        "kernels": {"mode": kernel_mode(), ENV_VAR: os.environ.get(ENV_VAR)},
    }


def _comparison(c: selftest.Comparison | None) -> str:
    return "-" if c is None else f"{c.error:.1e} / {c.allowed:.1e}"


def table(rows: list[selftest.Row]) -> str:
    """The self-test as an aligned text table (the result last: a failure carries its message)."""
    lines = [("operator", "device", "dtype", "forward err / tol", "backward err / tol", "ms",
              "result")]  # fmt: skip
    for row in rows:
        result = "pass" if row.passed else "FAIL" + (f": {row.error}" if row.error else "")
        lines.append((row.operator, row.device, row.dtype, _comparison(row.forward),
                      _comparison(row.backward), f"{1000 * row.seconds:.1f}", result))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(6)]
    return "\n".join(
        "  ".join(
            [
                *(cell.ljust(w) for cell, w in zip(line[:5], widths, strict=False)),
                line[5].rjust(widths[5]),
                line[6],
            ]
        )
        for line in lines
    )


def report(env: dict) -> str:
    build, runtime = env["build"], env["runtime"]
    archs = ", ".join(build["cuda_archs"]) if build["cuda_archs"] else "unknown"
    cuda = f"CUDA {build['cuda']} (archs: {archs})" if "cuda" in build["backends"] else "no CUDA"
    lines = [
        f"jwae_ext {env['jwae_ext']} ({env['location']})",
        f"  built: kernels for {', '.join(build['backends'])}; {cuda}; against torch "
        f"{build['torch']}; OpenMP {'on' if build['openmp'] else 'off'}",
        f"  runtime: torch {runtime['torch']}, CUDA {runtime['cuda'] or 'none'}, "
        f"BLAS {runtime['blas']}",
        f"  kernels mode: {env['kernels']['mode']} "
        f"({ENV_VAR}={env['kernels'][ENV_VAR] or 'unset'})",
        "  devices:",
    ]
    for dev in env["devices"]:
        details = ", ".join(f"{k} {v}" for k, v in dev.items() if k != "device")
        lines.append(f"    {dev['device']}: {details}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jwae_ext.info",
        description="The build, the devices, and every operator checked against its reference "
        "on every available device and dtype (exit 1 when one fails).",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument(
        "--devices", nargs="+", choices=("cpu", "cuda"), help="test only these (default: all)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.devices and "cuda" in args.devices and not torch.cuda.is_available():
        print("python -m jwae_ext.info: error: --devices cuda: no CUDA device is visible",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        env = environment()
    except ValueError as error:  # a bad JWAE_EXT_KERNELS
        print(f"python -m jwae_ext.info: error: {error}", file=sys.stderr)
        return 2
    if not args.json:
        print(report(env), flush=True)
    started = time.perf_counter()
    rows = selftest.run(args.devices)
    seconds = time.perf_counter() - started
    failed = sum(not row.passed for row in rows)
    if args.json:
        summary = {"rows": len(rows), "failed": failed, "seconds": seconds}
        print(json.dumps({**env, "selftest": [r.as_dict() for r in rows], "summary": summary},
                         indent=1))  # fmt: skip
    else:
        print(f"\nself-test: every operator against its reference (float64, CPU) on the same "
              f"inputs, forward and backward\n{table(rows)}")  # fmt: skip
        verdict = f"{failed} of {len(rows)} FAILED" if failed else f"all {len(rows)} passed"
        print(f"\n{verdict} in {seconds:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
