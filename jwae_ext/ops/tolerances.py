"""How close an operator's result must be to its reference, per dtype: one table for the tests
and for the self-test of ``python -m jwae_ext.info``.

The reference runs in float64 on the same input values, so the error is what the operator's own
arithmetic adds: float32 accumulation (float32 kernels and the fp32 accumulation of fp16/bf16),
and for fp16/bf16 the rounding of the gradients returned in the input dtype. The half-precision
bounds are relative to the largest value compared (``atol = rtol * max|expected|``), as the CUDA
tests compare them: 1e-2 for fp16 (``test_mh_loss``), 3e-2 for bf16 (``test_xattn_scores``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Tolerance(NamedTuple):
    """``|got - expected| <= atol + rtol * |expected|`` elementwise (``torch.testing`` style);
    ``scaled``: atol is multiplied by ``max|expected|``."""

    rtol: float
    atol: float
    scaled: bool = False

    def bound(self, expected: torch.Tensor) -> torch.Tensor:
        """The largest error allowed at each element of ``expected``."""
        scale = expected.abs()
        atol = self.atol * float(scale.max()) if self.scaled and scale.numel() else self.atol
        return atol + self.rtol * scale

    def kwargs(self, expected: torch.Tensor | None = None) -> dict[str, float]:
        """``rtol``/``atol`` for ``torch.testing.assert_close`` (``expected`` for scaled ones)."""
        if self.scaled:
            if expected is None:
                raise ValueError("a scaled tolerance needs 'expected' for its atol")
            return {"rtol": self.rtol, "atol": self.atol * float(expected.abs().max())}
        return {"rtol": self.rtol, "atol": self.atol}


TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(rtol=1e-9, atol=1e-11),
    torch.float32: Tolerance(rtol=1e-4, atol=1e-5),
    torch.float16: Tolerance(rtol=1e-2, atol=1e-2, scaled=True),
    torch.bfloat16: Tolerance(rtol=3e-2, atol=3e-2, scaled=True),
}


def tolerance(dtype: torch.dtype) -> Tolerance:
    """The tolerance of results computed from inputs of ``dtype``."""
    try:
        return TOLERANCES[dtype]
    except KeyError:
        raise ValueError(
            f"jwae_ext: no tolerance for dtype {dtype}; known: {sorted(map(str, TOLERANCES))}"
        ) from None
