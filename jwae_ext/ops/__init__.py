"""The compiled operators, with autograd and fake (meta) kernels registered from Python.

Each operator family has one module here, named like its C++ file in ``csrc/`` and its CUDA file
in ``csrc/cuda/``; its pure-PyTorch reference lives under the same name in
:mod:`jwae_ext.reference`.
"""

from jwae_ext import _C  # noqa: F401  (loading the library registers torch.ops.jwae_ext)

__all__: list[str] = []

# linear_xent and wae: the jWAE regularizer (csrc/linear_xent.cpp, csrc/wae.cpp)
from jwae_ext.ops.linear_xent import linear_cross_entropy
from jwae_ext.ops.wae import discriminator_loss, mmd_imq, wae_loss

__all__ += ["discriminator_loss", "linear_cross_entropy", "mmd_imq", "wae_loss"]
