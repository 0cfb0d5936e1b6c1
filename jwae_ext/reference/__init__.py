"""Straightforward pure-PyTorch formulations of every operator.

They hold the full score / logit matrices the kernels avoid, and are what the property tests and
the benchmarks compare the kernels against, and what every operator runs under
``--kernels reference`` (:mod:`jwae_ext.ops.kernels`). They import nothing of :mod:`jwae_ext.ops`
(which imports them). Each module has the name of its operator's module in
:mod:`jwae_ext.ops`.
"""

from jwae_ext.reference.discriminator_loss import discriminator_loss
from jwae_ext.reference.linear_cross_entropy import linear_cross_entropy
from jwae_ext.reference.mh_loss import mh_loss, mh_loss_from_scores
from jwae_ext.reference.mmd_imq import mmd_imq
from jwae_ext.reference.retrieval import (
    retrieval_count_at_least,
    retrieval_ranks,
    retrieval_thresholds,
    topk_search,
)
from jwae_ext.reference.wae_loss import wae_loss
from jwae_ext.reference.xattn_scores import xattn_ranks, xattn_region_grams, xattn_scores

__all__ = [
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
