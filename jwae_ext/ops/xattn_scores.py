"""Stacked cross-attention (SCAN) scores and exact retrieval ranks from them.

Kernels: ``csrc/xattn_scores.cpp`` (CPU) and ``csrc/cuda/xattn_scores.cu`` (CUDA); reference:
:func:`jwae_ext.reference.xattn_scores.xattn_scores`. The word-by-region products are computed
one tile (whole captions by whole images) at a time and turned into scores in the tile, with
``e.a = sum(attn * s)`` and ``|a|^2 = attn^T G attn`` (docs/design.md#scan): the attended vectors
never exist, and the backward recomputes the tiles instead of saving anything per pair. Tensor
shapes, dtypes, devices and lengths are checked in C++; the options here and there.
"""

from __future__ import annotations

import torch

from jwae_ext import reference
from jwae_ext.ops._checks import (
    check_choice,
    check_finite_number,
    check_int,
    check_same_device,
    check_tensors,
)
from jwae_ext.ops._dtypes import accumulation_dtype
from jwae_ext.ops.kernels import with_reference
from jwae_ext.ops.retrieval import Ranks
from jwae_ext.reference.xattn_scores import AGGREGATIONS, DIRECTIONS, RAW_FEATURE_NORMS

__all__ = ["xattn_ranks", "xattn_region_grams", "xattn_scores"]

_ops = torch.ops.jwae_ext


def _options(direction, lambda_softmax, agg, lambda_lse, raw_feature_norm) -> tuple:
    check_choice("direction", direction, DIRECTIONS)
    check_choice("agg", agg, AGGREGATIONS)
    check_choice("raw_feature_norm", raw_feature_norm, RAW_FEATURE_NORMS)
    lambda_softmax = check_finite_number("lambda_softmax", lambda_softmax)
    lambda_lse = check_finite_number("lambda_lse", lambda_lse)
    if agg == "lse" and lambda_lse == 0:
        raise ValueError(
            "jwae_ext: argument 'lambda_lse' must not be 0 with agg='lse' (it divides the "
            "log-sum-exp), got 0"
        )
    return direction, lambda_softmax, agg, lambda_lse, raw_feature_norm


@with_reference(reference.xattn_scores)
def xattn_scores(
    images: torch.Tensor,
    captions: torch.Tensor,
    cap_lens: torch.Tensor,
    *,
    direction: str = "t2i",
    lambda_softmax: float = 9.0,
    agg: str = "lse",
    lambda_lse: float = 6.0,
    raw_feature_norm: str = "clipped_l2norm",
    region_grams: torch.Tensor | None = None,
) -> torch.Tensor:
    """SCAN's cross-attention score of every image against every caption.

    Args:
        images: ``(n_image, R, d)`` region features (fp32/fp64; fp16/bf16 too on CUDA, accumulated
            in fp32), used as given (the model normalizes them).
        captions: ``(n_caption, L, d)`` word features, padded; same dtype and device.
        cap_lens: int64 ``(n_caption,)`` lengths in ``[1, L]``. Words past a caption's length are
            never read: they may hold anything (NaN included) and get a zero gradient.
        direction: ``"t2i"`` (each word attends over the regions; SCAN's default) or ``"i2t"``
            (each region over the words).
        lambda_softmax: the attention softmax's inverse temperature.
        agg: how the per-item cosines are pooled: ``"lse"`` (``log Σ exp(λ_lse r) / λ_lse``),
            ``"mean"``, ``"max"`` or ``"sum"``.
        lambda_lse: LogSumExp's sharpness (not 0 with ``agg="lse"``).
        raw_feature_norm: SCAN's normalization of the word-region products over the query items
            before the softmax: ``"clipped_l2norm"`` (LeakyReLU 0.1 then l2), ``"l2norm"``,
            ``"clipped"``, ``"softmax"`` or ``"no_norm"``.
        region_grams: t2i only: :func:`xattn_region_grams` of ``images``, for images scored
            again and again (a search index keeps them): the scores are then the same, bit for
            bit on CPU, without recomputing each image's Gram matrix (for a query of a few words,
            most of the work). Not differentiated (the backward recomputes them from ``images``).

    Returns:
        ``(n_image, n_caption)`` scores in the accumulation dtype (float64 for float64 inputs,
        float32 otherwise), differentiable with respect to ``images`` and ``captions``.
    """
    options = _options(direction, lambda_softmax, agg, lambda_lse, raw_feature_norm)
    check_tensors(images=images, captions=captions, cap_lens=cap_lens)
    if region_grams is not None:
        check_tensors(region_grams=region_grams)
    return _ops.xattn_scores(images, captions, cap_lens, *options, region_grams)


@with_reference(reference.xattn_region_grams)
def xattn_region_grams(images: torch.Tensor) -> torch.Tensor:
    """Each image's Gram matrix of its regions, ``images[i] @ images[i].T``: ``(n_image, R, R)``
    in the accumulation dtype, as :func:`xattn_scores` computes it (one GEMM per image on CPU,
    so an image's Gram has the same bits whatever else is in the call). Not differentiated."""
    check_tensors(images=images)
    return _ops.xattn_region_grams(images)


@with_reference(reference.xattn_ranks)
def xattn_ranks(
    images: torch.Tensor,
    captions: torch.Tensor,
    cap_lens: torch.Tensor,
    cap_to_img: torch.Tensor,
    *,
    direction: str = "t2i",
    lambda_softmax: float = 9.0,
    agg: str = "lse",
    lambda_lse: float = 6.0,
    raw_feature_norm: str = "clipped_l2norm",
    part: int = 0,
    parts: int = 1,
) -> Ranks:
    """Exact i2t and t2i ranks under the cross-attention scores, without the score matrix.

    The ranks of :func:`jwae_ext.ops.retrieval_ranks` (docs/design.md#retrieval-ranks: scores at
    least as high count, a tie is never a hit; any number of captions per image, in any order;
    every image needs one) for the scores of :func:`xattn_scores` with the same options. Two
    passes over the same tiles: the own pairs' scores, then one counting pass; extra memory is a
    few tiles per thread plus O(n_image + n_caption), whatever the product n_image * n_caption.

    ``part`` of ``parts`` (``0 <= part < parts``) splits the counting pass for a distributed
    evaluation: every part computes all the thresholds (the own pairs' tiles, a small share of
    the tiles) from the same inputs, then counts only the pairs of its share of the caption
    tiles (contiguous, as even as whole tiles allow; a part may get none). The four outputs are
    that part's counts; their sums over the parts are the ranks and ties of ``parts=1``, exactly
    (every part computes a tile with the same bits). The default is the whole count.

    Returns:
        :class:`jwae_ext.ops.Ranks` ``(i2t, t2i, i2t_ties, t2i_ties)``, int64 ``(n_image,)``,
        ``(n_caption,)``, ``(n_image,)``, ``(n_caption,)``: the ranks and, per query, the other
        items tied with its ground truth's score (with ``parts > 1``: this part's share of them).
    """
    options = _options(direction, lambda_softmax, agg, lambda_lse, raw_feature_norm)
    check_tensors(images=images, captions=captions, cap_lens=cap_lens, cap_to_img=cap_to_img)
    part, parts = check_int("part", part), check_int("parts", parts)
    return Ranks(*_ops.xattn_ranks(images, captions, cap_lens, cap_to_img, *options, part, parts))


# ---- autograd: the backward recomputes the tiles ------------------------------------------------


def _setup_context(ctx, inputs, output):
    images, captions, cap_lens, *options, _region_grams = inputs
    ctx.save_for_backward(images, captions, cap_lens)
    ctx.options = options


def _backward(ctx, grad):
    images, captions, cap_lens = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:2])
    grad_images, grad_captions = _ops.xattn_scores_backward(
        grad.to(accumulation_dtype(images.dtype)), images, captions, cap_lens, *ctx.options, mask
    )
    return (
        grad_images if mask[0] else None,
        grad_captions if mask[1] else None,
        None, None, None, None, None, None, None,
    )  # fmt: skip


torch.library.register_autograd("jwae_ext::xattn_scores", _backward, setup_context=_setup_context)


# ---- fake (meta) kernels: shapes and dtypes only, for torch.compile ----------------------------


@torch.library.register_fake("jwae_ext::xattn_scores")
def _(images, captions, cap_lens, direction, lambda_softmax, agg, lambda_lse, raw_feature_norm,
      region_grams=None):  # fmt: skip
    check_same_device(
        ("images", images),
        ("captions", captions),
        ("cap_lens", cap_lens),
        ("region_grams", region_grams),
    )
    return images.new_empty(
        (images.shape[0], captions.shape[0]), dtype=accumulation_dtype(images.dtype)
    )


@torch.library.register_fake("jwae_ext::xattn_region_grams")
def _(images):
    n, regions = images.shape[0], images.shape[1]
    return images.new_empty((n, regions, regions), dtype=accumulation_dtype(images.dtype))


@torch.library.register_fake("jwae_ext::xattn_scores_backward")
def _(grad, images, captions, cap_lens, *options_and_mask):
    mask = options_and_mask[-1]
    return (
        images.new_empty(images.shape if mask[0] else (0,)),
        captions.new_empty(captions.shape if mask[1] else (0,)),
    )


@torch.library.register_fake("jwae_ext::xattn_ranks")
def _(images, captions, cap_lens, cap_to_img, *options):
    check_same_device(
        ("images", images),
        ("captions", captions),
        ("cap_lens", cap_lens),
        ("cap_to_img", cap_to_img),
    )
    per_image = images.new_empty((images.shape[0],), dtype=torch.int64)
    per_caption = captions.new_empty((captions.shape[0],), dtype=torch.int64)
    return per_image, per_caption, torch.empty_like(per_image), torch.empty_like(per_caption)
