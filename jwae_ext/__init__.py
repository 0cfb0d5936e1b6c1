"""jwae_ext: Joint Wasserstein Autoencoders for image-text retrieval.

The package reads top-down: :mod:`jwae_ext.ops` (the compiled kernels) -> ``losses`` ->
``models`` -> ``data`` -> ``train`` / ``evaluate``. Importing the package loads the compiled
operators into ``torch.ops.jwae_ext``.
"""

from __future__ import annotations

import torch

from jwae_ext import _C, ops

__version__ = "0.1.0"
__all__ = ["__version__", "build_info", "ops"]


def build_info() -> dict:
    """Which backends were compiled in, and the torch/CUDA versions of the build and the runtime.

    Returns a dict with ``backends`` (``["cpu"]`` or ``["cpu", "cuda"]``), ``torch_version`` (the
    torch the extension was compiled against), ``torch_runtime`` (the torch that loaded it),
    ``cuda_version`` (the CUDA toolkit of the build, or ``None``), ``cuda_available`` (whether a
    GPU is visible now) and ``openmp``.
    """
    info = dict(_C.build_info())
    info["torch_runtime"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    return info
