"""Which implementation the public operators run: the compiled kernels or the pure-PyTorch
references (``--kernels compiled|reference``, or the environment variable ``JWAE_EXT_KERNELS``).

``reference`` routes every public function of :mod:`jwae_ext.ops` to its formulation in
:mod:`jwae_ext.reference`, on whatever device torch supports: a user whose build lacks kernels
for their device, or who suspects a kernel, is never blocked (at the references' cost in time and
memory: they hold the full score and logit matrices). The mode lives in the environment variable,
read at every call, so that processes started from a command line (``torchrun`` workers, the
runs of ``experiments``) inherit it.

Every command line adds the option with :func:`add_kernels_option`; a library caller uses
:func:`use_kernels` or the :func:`kernels` context manager.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
from collections.abc import Callable, Iterator
from typing import TypeVar

from jwae_ext.ops.registry import NAMESPACE, kernel_backends

ENV_VAR = "JWAE_EXT_KERNELS"
MODES = ("compiled", "reference")
REBUILD_WITH_CUDA = "FORCE_CUDA=1 pip install --no-build-isolation ."

_F = TypeVar("_F", bound=Callable)
# The dispatcher's error for a backend without a kernel: the operator and the backend.
_NO_KERNEL = re.compile(
    rf"Could not run '{NAMESPACE}::(\w+)' with arguments from the '(\w+)' backend"
)


def _checked(mode: object, source: str) -> str:
    if mode not in MODES:
        raise ValueError(f"jwae_ext: {source} must be one of {MODES}, got {mode!r}")
    return mode


def kernel_mode() -> str:
    """The current mode: ``JWAE_EXT_KERNELS`` when set (checked), else ``"compiled"``."""
    value = os.environ.get(ENV_VAR)
    return "compiled" if value is None else _checked(value, f"environment variable {ENV_VAR}")


def use_kernels(mode: str) -> None:
    """Run every operator call from now on (in this process and its children) in ``mode``."""
    os.environ[ENV_VAR] = _checked(mode, "argument 'mode'")


@contextlib.contextmanager
def kernels(mode: str) -> Iterator[None]:
    """Run the calls inside the ``with`` block in ``mode``; the previous setting is restored."""
    before = os.environ.get(ENV_VAR)
    use_kernels(mode)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = before


class _UseKernels(argparse.Action):
    """Applies the mode as soon as the option is parsed; adds nothing to the namespace, so a
    parser whose namespace becomes a config object takes the option unchanged."""

    def __call__(self, parser, namespace, values, option_string=None):
        use_kernels(values)


def add_kernels_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--kernels compiled|reference`` to a command line; parsing it applies the mode."""
    parser.add_argument(
        "--kernels",
        choices=MODES,
        action=_UseKernels,
        default=argparse.SUPPRESS,
        help=(
            "compiled: the C++/CUDA kernels; reference: every operator through its pure-PyTorch "
            f"reference, on any device torch supports (slower, more memory). Default: ${ENV_VAR}, "
            "else compiled"
        ),
    )


def no_kernel_message(function: str, backend: str) -> str:
    """What a call of ``function`` on tensors of ``backend`` that this build has no kernel for
    reports: the two ways out."""
    built = kernel_backends(f"{NAMESPACE}::{function}") or ["none"]
    return (
        f"jwae_ext.{function}: this build of jwae_ext has no kernel for tensors on the "
        f"'{backend}' backend (its kernels: {', '.join(built)}). Either rebuild it with kernels "
        f"for your device (for CUDA: `{REBUILD_WITH_CUDA}` with the CUDA toolkit of your torch), "
        "or run every operator through its pure-PyTorch reference, on any device torch "
        f"supports: `--kernels reference` on the command line, or {ENV_VAR}=reference"
    )


def with_reference(reference: Callable) -> Callable[[_F], _F]:
    """Decorate a public operator function: in ``reference`` mode it calls ``reference`` (same
    arguments) instead, and in ``compiled`` mode the dispatcher's error for a device without a
    kernel becomes :func:`no_kernel_message`."""

    def decorate(compiled: _F) -> _F:
        @functools.wraps(compiled)
        def call(*args, **kwargs):
            if kernel_mode() == "reference":
                return reference(*args, **kwargs)
            try:
                return compiled(*args, **kwargs)
            except NotImplementedError as error:
                found = _NO_KERNEL.search(str(error))
                if found is None:
                    raise
                raise NotImplementedError(no_kernel_message(found[1], found[2])) from error

        return call  # type: ignore[return-value]

    return decorate
