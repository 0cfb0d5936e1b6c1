"""Stacked cross-attention (SCAN) scores, fp32: ours against SCAN's formulation (the reference, its
loop over captions with the attended vectors) and the bare GEMM of all real words by all regions
(the floor: no exact method avoids it), side by side (the summary prints the ratios).

    python -m pytest benchmarks/bench_xattn_scores.py                   # CPU, full sizes
    JWAE_BENCH_SMOKE=1 python -m pytest benchmarks/bench_xattn_scores.py

Cases (R = 36 regions, caption lengths 8..16 with L = 16, d = 1024, as SCAN on COCO):
- training: a batch of 128 images x 128 captions, scores forward + backward for both inputs;
- evaluation: exact ranks of both directions for 1000 images x 5000 captions (a COCO 1K fold),
  t2i LSE and i2t LSE (lambda_softmax 4, lambda_lse 5, SCAN's i2t setting), against the GEMM
  floor (timed in turn with ours, round by round); the reference (the full score matrix, then
  ranks) at 200 x 1000, beside ours and the floor at that size. The floor's output is
  preallocated and reused over word chunks of at most 512 MB (all its outputs would be 8.6 GB at
  1000 x 5000), the same FLOPs.
- distributed evaluation: what one rank of a 2-process evaluation computes (its part of the
  count, ``part=r, parts=2``, thresholds included) beside the whole count, t2i at 300 x 1500,
  timed in turn round by round (docs/distributed.md).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, sizes

from jwae_ext import ops, reference
from jwae_ext.reference.xattn_scores import xattn_scores as reference_scores

REGIONS, MAX_WORDS, DIM = sizes([(36, 16, 1024)], [(6, 5, 32)])[0]
TRAIN_BATCH = sizes([128], [16])[0]
EVAL_SIZES = sizes([(1000, 5000), (200, 1000)], [(40, 200), (20, 100)])
PARTS_SIZE = sizes([(300, 1500)], [(40, 400)])[0]
REFERENCE_EVAL_SIZE = EVAL_SIZES[1]
DIRECTIONS = {
    "t2i": {"direction": "t2i"},
    "i2t": {"direction": "i2t", "lambda_softmax": 4.0, "lambda_lse": 5.0},
}
_GEMM_OUTPUT_BYTES = 512 * 2**20


def _inputs(n_images: int, n_captions: int, requires_grad: bool = False):
    """Unit-norm region and word codes (what the model gives), lengths 8..16 (L = 16)."""
    g = torch.Generator().manual_seed(n_images * 7919 + n_captions)
    images = F.normalize(torch.randn(n_images, REGIONS, DIM, generator=g), dim=-1)
    captions = F.normalize(torch.randn(n_captions, MAX_WORDS, DIM, generator=g), dim=-1)
    lengths = torch.randint(MAX_WORDS // 2, MAX_WORDS + 1, (n_captions,), generator=g)
    cap_to_img = torch.arange(n_captions) * n_images // n_captions  # grouped, COCO order
    images, captions = images.to(DEVICE), captions.to(DEVICE)
    if requires_grad:
        images.requires_grad_()
        captions.requires_grad_()
    return images, captions, lengths.to(DEVICE), cap_to_img.to(DEVICE)


def _floor(images: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor):
    """The GEMM of every real word by every region, into one preallocated output."""
    words = torch.cat([captions[c, :n] for c, n in enumerate(lengths.tolist())])
    regions = images.reshape(-1, images.shape[-1])
    chunk = max(1, min(len(words), _GEMM_OUTPUT_BYTES // (4 * regions.shape[0])))
    out = torch.empty(chunk, regions.shape[0], device=regions.device, dtype=regions.dtype)

    def run():
        for part in words.split(chunk):
            torch.mm(part, regions.T, out=out[: part.shape[0]])
        return out

    return run


@pytest.mark.parametrize("impl", ["ours", "reference", "gemm"])
def test_training_forward_backward(measure, impl):
    images, captions, lengths, _ = _inputs(TRAIN_BATCH, TRAIN_BATCH, requires_grad=True)
    case = f"xattn t2i fwd+bwd B={TRAIN_BATCH} R={REGIONS} d={DIM}"
    if impl == "gemm":
        fn = _floor(images.detach(), captions.detach(), lengths)
    else:
        scores_fn = ops.xattn_scores if impl == "ours" else reference_scores

        def fn():
            scores = scores_fn(images, captions, lengths)
            return torch.autograd.grad(scores.sum(), (images, captions))

    measure(case, impl, fn, rounds=3)


@pytest.mark.parametrize("impl", ["ours", "reference"])
@pytest.mark.parametrize("direction", list(DIRECTIONS))
@pytest.mark.parametrize(("n_images", "n_captions"), EVAL_SIZES)
def test_evaluation_ranks(measure, n_images, n_captions, direction, impl):
    if impl == "reference" and (n_images, n_captions) != REFERENCE_EVAL_SIZE:
        pytest.skip("the reference (hours at full size) runs at the smaller evaluation size")
    images, captions, lengths, cap_to_img = _inputs(n_images, n_captions)
    options = DIRECTIONS[direction]
    case = f"xattn ranks {direction} {n_images}x{n_captions} R={REGIONS} d={DIM}"
    if impl == "ours":

        def fn():
            return ops.xattn_ranks(images, captions, lengths, cap_to_img, **options)

        # Tens of seconds per call at full size: the floor is timed in turn with ours, round by
        # round, so that the machine's drift cannot make the ratio.
        measure(case, impl, fn, rounds=3, alongside={"gemm": _floor(images, captions, lengths)})
        return
    eye = torch.eye(n_captions, device=images.device)

    def fn():
        with torch.no_grad():
            scores = reference_scores(images, captions, lengths, **options)
        return reference.retrieval_ranks(scores, eye, cap_to_img)

    measure(case, impl, fn, rounds=1 if n_images * n_captions >= 10**6 else 3)


def test_evaluation_rank_parts(measure):
    n_images, n_captions = PARTS_SIZE
    images, captions, lengths, cap_to_img = _inputs(n_images, n_captions)
    case = f"xattn ranks t2i parts of 2 {n_images}x{n_captions}"

    def part(p: int, parts: int):
        return lambda: ops.xattn_ranks(images, captions, lengths, cap_to_img, part=p, parts=parts)

    measure(case, "whole", part(0, 1), rounds=3,
            alongside={"part 0 of 2": part(0, 2), "part 1 of 2": part(1, 2)})  # fmt: skip
