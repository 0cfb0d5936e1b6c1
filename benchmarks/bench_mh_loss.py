"""Max-of-hinges loss, forward + backward, d = 1024, fp32: ours (the fused tiled kernels), the
VSE++ reference (full score matrix) and the bare GEMM (B x d) @ (d x B) that any implementation
has to do, into a preallocated output (a fresh B x B output would time page faults), side by side
(the summary prints the ratios). The sum of hinges (max_violation=False) also times its two CPU
paths, forced: "full_matrix" (one torch.mm and the fused from-scores epilogue) and "tiled" (the
kernel that never holds the B x B matrix); "ours" is whichever ops.mh_loss's size rule picks.

    python -m pytest benchmarks/bench_mh_loss.py                          # CPU, all sizes
    JWAE_BENCH_DEVICE=cuda python -m pytest benchmarks/bench_mh_loss.py   # GPU
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, sizes

from jwae_ext import ops, reference

MH_LOSS_MODULE = importlib.import_module("jwae_ext.ops.mh_loss")

DIM = sizes([1024], [32])[0]
BATCHES = sizes([128, 1024, 4096, 16384], [64, 300])
SUM_BATCHES = sizes([1024, 2048, 4096, 8192], [300])  # sum of hinges (VSE0)
IMPLS = {"ours": ops.mh_loss, "reference": reference.mh_loss}


def _rounds(batch: int, impl: str) -> int:
    """Few rounds where one call takes seconds (the CPU reference at B = 16384 needs GBs)."""
    if DEVICE == "cuda":
        return 3 if impl == "reference" and batch >= 16384 else 10
    if batch >= 16384:
        return 1
    return 2 if batch >= 4096 and impl == "reference" else 3


def _embeddings(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm embeddings (what the loss sees in training), leaves that require grad."""
    gen = torch.Generator().manual_seed(batch)
    img, txt = F.normalize(torch.randn(2, batch, DIM, generator=gen), dim=-1)
    return img.to(DEVICE).requires_grad_(), txt.to(DEVICE).requires_grad_()


def _forward_backward(loss_fn, img, txt, **kwargs):
    def run():
        loss = loss_fn(img, txt, **kwargs)
        return torch.autograd.grad(loss, (img, txt))

    return run


def _gemm(img, txt):
    a, b = img.detach(), txt.detach()
    out = a.new_empty((a.shape[0], b.shape[0]))
    return lambda: torch.mm(a, b.t(), out=out)


def _measure(measure, case, impl, batch, **kwargs):
    img, txt = _embeddings(batch)
    fn = _gemm(img, txt) if impl == "gemm" else _forward_backward(IMPLS[impl], img, txt, **kwargs)
    measure(case, impl, fn, rounds=_rounds(batch, impl))


@pytest.mark.parametrize("impl", ["ours", "reference", "gemm"])
@pytest.mark.parametrize("batch", BATCHES)
def test_mh_loss_max_violation(measure, batch, impl):
    _measure(measure, f"mh_loss hardest fwd+bwd B={batch} d={DIM}", impl, batch)


def _on_path(path: str, fn):
    """``fn`` with the sum of hinges' CPU path forced (the size rule of ops.mh_loss otherwise)."""

    def run():
        saved = MH_LOSS_MODULE.FULL_MATRIX_MAX_BATCH
        MH_LOSS_MODULE.FULL_MATRIX_MAX_BATCH = 2**62 if path == "full_matrix" else 0
        try:
            return fn()
        finally:
            MH_LOSS_MODULE.FULL_MATRIX_MAX_BATCH = saved

    return run


@pytest.mark.parametrize("batch", SUM_BATCHES)
def test_mh_loss_sum_of_hinges(measure, batch):
    """Ours is ops.mh_loss as dispatched by its size rule; both CPU paths, the reference and the
    GEMM are timed in turn with it, round by round."""
    img, txt = _embeddings(batch)
    ours = _forward_backward(ops.mh_loss, img, txt, max_violation=False)
    others = {
        "reference": _forward_backward(reference.mh_loss, img, txt, max_violation=False),
        "gemm": _gemm(img, txt),
    }
    if DEVICE == "cpu":
        others |= {path: _on_path(path, ours) for path in ("full_matrix", "tiled")}
    case = f"mh_loss sum fwd+bwd B={batch} d={DIM}"
    measure(case, "ours", ours, rounds=_rounds(batch, "reference"), alongside=others)
