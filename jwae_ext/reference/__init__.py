"""Straightforward pure-PyTorch formulations of every operator.

They hold the full score / logit matrices the kernels avoid, and are what the property tests and
the benchmarks compare the kernels against.
"""

__all__: list[str] = []

# linear_xent and wae: the jWAE regularizer
from jwae_ext.reference import linear_xent, wae

__all__ += ["linear_xent", "wae"]
