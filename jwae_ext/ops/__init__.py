"""The compiled operators, with autograd and fake (meta) kernels registered from Python.

Each operator has one module here, named after it (``mh_loss`` and ``retrieval`` hold a family:
``mh_loss_from_scores``; the ranks, thresholds, counts and top-k search). The same stem names its
kernels (``csrc/STEM.cpp``, ``csrc/cuda/STEM.cu``), its pure-PyTorch reference
(:mod:`jwae_ext.reference`), its tests (``python_tests/test_STEM.py``) and its benchmark
(``benchmarks/bench_STEM.py``); see docs/design.md#where-an-operator-lives.

Every public function here runs its reference instead under ``--kernels reference`` or
``JWAE_EXT_KERNELS=reference`` (:mod:`jwae_ext.ops.kernels`; docs/info.md).
"""

from jwae_ext import _C  # noqa: F401  (loading the library registers torch.ops.jwae_ext)
from jwae_ext.ops.discriminator_loss import discriminator_loss
from jwae_ext.ops.linear_cross_entropy import linear_cross_entropy
from jwae_ext.ops.mh_loss import mh_loss, mh_loss_from_scores
from jwae_ext.ops.mmd_imq import mmd_imq
from jwae_ext.ops.retrieval import (
    Ranks,
    retrieval_count_at_least,
    retrieval_ranks,
    retrieval_thresholds,
    topk_search,
)
from jwae_ext.ops.wae_loss import wae_loss
from jwae_ext.ops.xattn_scores import xattn_ranks, xattn_region_grams, xattn_scores

__all__ = [
    "Ranks",
    "discriminator_loss",
    "linear_cross_entropy",
    "mh_loss",
    "mh_loss_from_scores",
    "mmd_imq",
    "retrieval_count_at_least",
    "retrieval_ranks",
    "retrieval_thresholds",
    "topk_search",
    "wae_loss",
    "xattn_ranks",
    "xattn_region_grams",
    "xattn_scores",
]
