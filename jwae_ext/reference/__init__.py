"""Straightforward pure-PyTorch formulations of every operator.

They hold the full score / logit matrices the kernels avoid, and are what the property tests and
the benchmarks compare the kernels against.
"""

from jwae_ext.reference.hinge import mh_loss, mh_loss_from_scores

__all__: list[str] = [
    "mh_loss",  # hinge
    "mh_loss_from_scores",  # hinge
]
