"""Checks on the Python-level arguments of the public operators.

Tensor shapes, dtypes and devices are checked in C++ (``csrc/checks.h``) so that direct
``torch.ops.jwae_ext`` calls get the same messages; what only exists in Python (string options,
numbers) is checked here, naming the argument, what was expected and what was given.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


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


def check_finite_number(name: str, value: object) -> float:
    """Raise ``ValueError`` unless ``value`` is a finite real number; return it as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"jwae_ext: argument '{name}' must be a number, got {type(value).__name__}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"jwae_ext: argument '{name}' must be finite, got {value}")
    return float(value)


def check_bool(name: str, value: object) -> bool:
    """Raise ``TypeError`` unless ``value`` is a bool; return it."""
    if not isinstance(value, bool):
        raise TypeError(f"jwae_ext: argument '{name}' must be a bool, got {type(value).__name__}")
    return value


def check_int(name: str, value: object) -> int:
    """Raise ``TypeError`` unless ``value`` is an int (not a bool); return it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"jwae_ext: argument '{name}' must be an int, got {type(value).__name__}")
    return value
