"""jwae_ext: Joint Wasserstein Autoencoders for image-text retrieval.

The package reads bottom-up, each module importing only those before it (docs/design.md,
"Layers"; ``python_tests/test_import_graph.py`` keeps it so):

- :mod:`jwae_ext.ops` (the compiled operators) and ``data`` (datasets, vocabulary);
- ``losses``, ``models``, ``encoding`` (a model's codes of a split), ``retrieval`` and
  ``continuity`` (the metrics), ``config``, ``checkpoint`` (what a checkpoint holds),
  ``metrics_log``, ``figures``;
- ``distributed`` (process groups), ``losses_distributed``, ``retrieval_sharded``, ``evaluation``;
- the command lines on top, imported by none of the above: ``train``, ``evaluate``,
  ``experiments``.

Importing the package loads the compiled operators into ``torch.ops.jwae_ext``.
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
    ``cuda_version`` (the CUDA toolkit of the build, or ``None``), ``cuda_archs`` (the GPU code it
    embeds, e.g. ``["sm_90"]``; ``None`` when unknown: no CUDA, or a build that did not record
    it), ``cuda_available`` (whether a GPU is visible now) and ``openmp``.
    """
    info = dict(_C.build_info())
    info["cuda_archs"] = info["cuda_archs"].split(",") if "cuda_archs" in info else None
    info["torch_runtime"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    return info
