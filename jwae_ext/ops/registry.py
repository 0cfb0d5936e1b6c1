"""What is registered under ``torch.ops.jwae_ext``, for the build checks in tests and CI, the
errors for a device without kernels and ``python -m jwae_ext.info``."""

from __future__ import annotations

import torch

NAMESPACE = "jwae_ext"


def operator_names() -> list[str]:
    """Qualified names (``jwae_ext::op``) of every operator the loaded library defines."""
    prefix = f"{NAMESPACE}::"
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith(prefix))


def missing_kernels(dispatch_keys: list[str]) -> list[str]:
    """``op (KEY)`` for every operator lacking a kernel for one of ``dispatch_keys``."""
    return [
        f"{name} ({key})"
        for name in operator_names()
        for key in dispatch_keys
        if not torch._C._dispatch_has_kernel_for_dispatch_key(name, key)
    ]


BACKENDS = ("CPU", "CUDA")


def kernel_backends(name: str) -> list[str]:
    """The backends (of :data:`BACKENDS`) for which the operator ``name`` has a kernel."""
    return [key for key in BACKENDS if torch._C._dispatch_has_kernel_for_dispatch_key(name, key)]
