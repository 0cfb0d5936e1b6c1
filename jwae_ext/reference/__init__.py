"""Straightforward pure-PyTorch formulations of every operator.

They hold the full score / logit matrices the kernels avoid, and are what the property tests and
the benchmarks compare the kernels against.
"""

from jwae_ext.reference.hinge import mh_loss, mh_loss_from_scores
from jwae_ext.reference.ranking import (
    retrieval_count_above,
    retrieval_ranks,
    retrieval_thresholds,
    topk_search,
)

__all__ = [
    "mh_loss",
    "mh_loss_from_scores",
    "retrieval_count_above",
    "retrieval_ranks",
    "retrieval_thresholds",
    "topk_search",
]
