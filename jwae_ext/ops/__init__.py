"""The compiled operators, with autograd and fake (meta) kernels registered from Python.

Each operator family has one module here, named like its C++ file in ``csrc/`` and its CUDA file
in ``csrc/cuda/``; its pure-PyTorch reference lives under the same name in
:mod:`jwae_ext.reference`.
"""

from jwae_ext import _C  # noqa: F401  (loading the library registers torch.ops.jwae_ext)
from jwae_ext.ops.hinge import mh_loss, mh_loss_from_scores
from jwae_ext.ops.linear_xent import linear_cross_entropy
from jwae_ext.ops.ranking import (
    retrieval_count_above,
    retrieval_ranks,
    retrieval_thresholds,
    topk_search,
)
from jwae_ext.ops.wae import discriminator_loss, mmd_imq, wae_loss
from jwae_ext.ops.xattn_scores import xattn_ranks, xattn_scores

__all__ = [
    "discriminator_loss",
    "linear_cross_entropy",
    "mh_loss",
    "mh_loss_from_scores",
    "mmd_imq",
    "retrieval_count_above",
    "retrieval_ranks",
    "retrieval_thresholds",
    "topk_search",
    "wae_loss",
    "xattn_ranks",
    "xattn_scores",
]
