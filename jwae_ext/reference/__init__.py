"""Straightforward pure-PyTorch formulations of every operator.

They hold the full score / logit matrices the kernels avoid, and are what the property tests and
the benchmarks compare the kernels against.
"""

__all__: list[str] = []

# ranking: the full score matrix, sorted per query (VSE++)
from jwae_ext.reference import ranking

__all__ += ["ranking"]
# end ranking
