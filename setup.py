"""Builds ``jwae_ext._C``: the CPU kernels always, the CUDA kernels when they can be compiled.

CUDA sources are compiled when torch has CUDA support and either a GPU is visible or
``FORCE_CUDA=1`` is set (so that GPU-less build machines can produce GPU binaries).
"""

import glob
import os
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _import_torch():
    """Import the torch the extension will run against.

    Under pip's build isolation the project's own environment is hidden from the build. A torch
    extension must be compiled against the exact torch that loads it, so rather than letting pip
    fetch a second (possibly different) torch into the isolated environment, we look up the
    interpreter's own site-packages and build against the torch installed there.
    """
    try:
        import torch

        return torch
    except ImportError:
        pass
    hidden = ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME", "PYTHONSAFEPATH")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    probe = "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))"
    found = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False
    )
    if found.returncode != 0:
        sys.exit(
            "jwae_ext is a PyTorch extension and builds against the installed torch, "
            "but none was found. Install torch first (e.g. `pip install torch==2.13.0`)."
        )
    sys.path.append(found.stdout.strip().splitlines()[-1])
    import torch

    return torch


def _cuda_archs() -> str:
    """The GPU code the CUDA build embeds (``sm_XY``, and ``compute_XY`` for PTX), as torch picks
    it from ``TORCH_CUDA_ARCH_LIST`` or the visible GPUs; ``jwae_ext.build_info()`` reports it."""
    from torch.utils.cpp_extension import _get_cuda_arch_flags

    codes = {flag.rsplit("code=", 1)[1] for flag in _get_cuda_arch_flags() if "code=" in flag}
    return ",".join(sorted(codes))


def _extension():
    torch = _import_torch()
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    with_cuda = (
        torch.version.cuda is not None
        and CUDA_HOME is not None
        and (torch.cuda.is_available() or force_cuda)
    )
    if force_cuda and not with_cuda:
        sys.exit(
            f"FORCE_CUDA=1 but CUDA cannot be built: torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}), CUDA_HOME={CUDA_HOME}"
        )

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]  # torch >= 2.14 headers need C++20
    if os.environ.get("JWAE_NATIVE", "0") == "1":
        cxx_flags.append("-march=native")
    extra = {"cxx": cxx_flags}
    macros = [("JWAE_TORCH_VERSION", f'"{torch.__version__}"')]
    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        extra["nvcc"] = ["-O3", "-std=c++20", "-lineinfo"]
        macros += [("WITH_CUDA", None), ("JWAE_CUDA_ARCHS", f'"{_cuda_archs()}"')]
        return CUDAExtension(
            "jwae_ext._C",
            sources,
            define_macros=macros,
            extra_compile_args=extra,
            # cuBLAS is not linked, as in CMakeLists.txt: GEMMs go through ATen, and the direct
            # cublasGemmEx calls (csrc/cuda/linear_cross_entropy.cu) resolve at load time against
            # the cuBLAS libtorch_cuda loads, so the module always uses torch's own cuBLAS (pip's
            # CUDA wheels ship only libcublas.so.13: "-lcublas" would not even link).
            extra_link_args=["-fopenmp"],
        )
    return CppExtension(
        "jwae_ext._C",
        sources,
        define_macros=macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


setup(ext_modules=[_extension()], cmdclass={"build_ext": _build_ext()})
