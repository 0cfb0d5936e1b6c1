"""Checks on the Python-level arguments of the public operators.

Tensor shapes, dtypes and devices are checked in C++ (``csrc/checks.h``) so that direct
``torch.ops.jwae_ext`` calls get the same messages; what only exists in Python (string options,
numbers) is checked here, naming the argument, what was expected and what was given. The fake
(meta) kernels check devices with :func:`check_same_device`: a call mixing a real device with
``meta`` is dispatched to them, not to a C++ kernel.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import torch

_INT64 = (-(2**63), 2**63 - 1)


def check_choice(name: str, value: object, choices: Iterable[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"jwae_ext: argument '{name}' must be one of {choices}, got {value!r}")


def check_tensor(name: str, value: object) -> torch.Tensor:
    """Raise ``TypeError`` unless ``value`` is a tensor; return it."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"jwae_ext: argument '{name}' must be a torch.Tensor, got {type(value).__name__}"
        )
    return value


def check_tensors(**named: object) -> None:
    """:func:`check_tensor` on every keyword argument (its name is the argument's)."""
    for name, value in named.items():
        check_tensor(name, value)


def check_finite_number(name: str, value: object) -> float:
    """Raise unless ``value`` is a finite real number (numpy scalars included); return a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"jwae_ext: argument '{name}' must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"jwae_ext: argument '{name}' must be finite, got {value}")
    return number


def check_numbers(name: str, values: object) -> list[float]:
    """Raise unless ``values`` is an iterable of finite numbers; return them as floats."""
    if isinstance(values, (str, bytes, torch.Tensor)) or not isinstance(values, Iterable):
        raise TypeError(
            f"jwae_ext: argument '{name}' must be a sequence of numbers, got "
            f"{type(values).__name__}"
        )
    return [check_finite_number(name, v) for v in values]


def check_bool(name: str, value: object) -> bool:
    """Raise ``TypeError`` unless ``value`` is a bool; return it."""
    if not isinstance(value, bool):
        raise TypeError(f"jwae_ext: argument '{name}' must be a bool, got {type(value).__name__}")
    return value


def check_int(name: str, value: object) -> int:
    """Raise unless ``value`` is an integer (not a bool; numpy integers too) that fits in int64,
    the operators' integer type; return it as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"jwae_ext: argument '{name}' must be an int, got {type(value).__name__}")
    number = int(value)
    if not _INT64[0] <= number <= _INT64[1]:
        raise ValueError(
            f"jwae_ext: argument '{name}' must fit in int64 [{_INT64[0]}, {_INT64[1]}], "
            f"got {number}"
        )
    return number


def check_same_device(*named: tuple[str, torch.Tensor | None]) -> None:
    """Raise ``ValueError`` unless every given tensor is on the device of the first one."""
    present = [(name, t) for name, t in named if t is not None]
    first_name, first = present[0]
    for name, t in present[1:]:
        if t.device != first.device:
            raise ValueError(
                f"jwae_ext: arguments '{first_name}' and '{name}' must be on the same device, "
                f"got {first.device} and {t.device}"
            )
