"""Straightforward pure-PyTorch formulations of every operator.

They hold the full score / logit matrices the kernels avoid, and are what the property tests and
the benchmarks compare the kernels against.
"""

from jwae_ext.reference.hinge import mh_loss, mh_loss_from_scores
from jwae_ext.reference.linear_xent import linear_cross_entropy
from jwae_ext.reference.ranking import (
    retrieval_count_above,
    retrieval_ranks,
    retrieval_thresholds,
    topk_search,
)
from jwae_ext.reference.wae import discriminator_loss, mmd_imq, wae_loss
from jwae_ext.reference.xattn_scores import xattn_scores

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
    "xattn_scores",
]
