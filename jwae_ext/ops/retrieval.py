"""Exact retrieval ranks and top-k search (kernels: ``csrc/retrieval.cpp``,
``csrc/cuda/retrieval.cu``).

Scores are dot products ``S = img_emb @ cap_emb.T``, computed one GEMM tile at a time: the N x M
score matrix is never held. fp32/fp64 on CPU; fp32/fp64/fp16/bf16 on CUDA, where fp16/bf16 are
accumulated (and returned) in fp32. Shapes, dtypes, devices, ids and ``k`` are checked in C++, so
``torch.ops.jwae_ext.*`` called directly raises the same errors.

The tie rule (DESIGN.md §3.3): a rank counts the other items scoring *at least* as high as the
ground truth, so a tie is never a hit (a model that gives several captions one code cannot rank
them first). Each query's ties, the other items scoring exactly as high, come with its rank.
"""

from __future__ import annotations

import torch

from jwae_ext import reference
from jwae_ext.ops._checks import check_int, check_same_device, check_tensor
from jwae_ext.ops._dtypes import accumulation_dtype
from jwae_ext.ops.kernels import with_reference
from jwae_ext.reference.retrieval import Ranks

__all__ = [
    "Ranks",
    "retrieval_count_at_least",
    "retrieval_ranks",
    "retrieval_thresholds",
    "topk_search",
]

_ops = torch.ops.jwae_ext


@with_reference(reference.retrieval_ranks)
def retrieval_ranks(
    img_emb: torch.Tensor, cap_emb: torch.Tensor, cap_to_img: torch.Tensor
) -> Ranks:
    """Exact image-to-text and text-to-image ranks, without the N x M score matrix.

    Args:
        img_emb: image embeddings, (N, d).
        cap_emb: caption embeddings, (M, d), same dtype and device.
        cap_to_img: int64 (M,), the image of each caption; every image needs at least one
            caption, any number of them, in any order.

    Returns:
        :class:`Ranks` ``(i2t, t2i, i2t_ties, t2i_ties)``, int64 (N,), (M,), (N,), (M,). The i2t
        rank of image i is the number of captions of other images scoring at least as high as the
        best of its own captions; the t2i rank of caption j is the number of other images scoring
        at least as high as its own image. 0 is a hit at the top; a tie counts against the query.
        ``i2t_ties[i]`` / ``t2i_ties[j]``: how many of those score exactly as high.
    """
    for name, value in (("img_emb", img_emb), ("cap_emb", cap_emb), ("cap_to_img", cap_to_img)):
        check_tensor(name, value)
    return Ranks(*_ops.retrieval_ranks(img_emb, cap_emb, cap_to_img))


@with_reference(reference.retrieval_thresholds)
def retrieval_thresholds(
    img_emb: torch.Tensor, cap_emb: torch.Tensor, cap_to_img: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The own scores that ranks are counted against, taken from the GEMM tiles.

    Returns ``(img_thresholds, cap_thresholds)`` in the score dtype: for image i the best score of
    its own captions (``-inf`` if it has none here, e.g. in a shard of the captions), for caption
    j the score of its own image ``S[cap_to_img[j], j]``. Together with
    :func:`retrieval_count_at_least` this splits :func:`retrieval_ranks` so that a gallery can be
    sharded: reduce the image thresholds with a max and the counts (and ties) with a sum.
    """
    for name, value in (("img_emb", img_emb), ("cap_emb", cap_emb), ("cap_to_img", cap_to_img)):
        check_tensor(name, value)
    return _ops.retrieval_thresholds(img_emb, cap_emb, cap_to_img)


@with_reference(reference.retrieval_count_at_least)
def retrieval_count_at_least(
    img_emb: torch.Tensor,
    cap_emb: torch.Tensor,
    cap_to_img: torch.Tensor,
    img_thresholds: torch.Tensor,
    cap_thresholds: torch.Tensor,
) -> Ranks:
    """Per query, the gallery items scoring at least a given threshold, own items excluded, and
    those scoring exactly the threshold.

    Args:
        img_emb, cap_emb: (N, d) and (M, d) embeddings.
        cap_to_img: int64 (M,), each caption's image in ``[0, N)``, or -1 when its image is not
            among ``img_emb`` (a shard); an own pair is never counted.
        img_thresholds, cap_thresholds: (N,) and (M,) in the score dtype (that of the embeddings;
            float32 for float16/bfloat16), not NaN.

    Returns:
        :class:`Ranks` ``(img_counts, cap_counts, img_ties, cap_ties)``, int64:
        ``img_counts[i] = #{j : cap_to_img[j] != i, S[i, j] >= img_thresholds[i]}``,
        ``cap_counts[j] = #{i != cap_to_img[j] : S[i, j] >= cap_thresholds[j]}``, and the ties
        the same with ``==``. One tiled pass over the GEMM for all four.
    """
    for name, value in (
        ("img_emb", img_emb),
        ("cap_emb", cap_emb),
        ("cap_to_img", cap_to_img),
        ("img_thresholds", img_thresholds),
        ("cap_thresholds", cap_thresholds),
    ):
        check_tensor(name, value)
    return Ranks(
        *_ops.retrieval_count_at_least(img_emb, cap_emb, cap_to_img, img_thresholds, cap_thresholds)
    )


@with_reference(reference.topk_search)
def topk_search(
    queries: torch.Tensor, gallery: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of the gallery by dot product for every query, at bounded memory.

    Args:
        queries: (Q, d). gallery: (G, d), same dtype and device. k: 1 <= k <= G.

    Returns:
        ``(scores, indices)``, (Q, k): scores in the score dtype (float32 for float16/bfloat16
        inputs), sorted descending, ties broken by lower gallery index; int64 indices. Scores are
        differentiable with respect to both inputs.
    """
    check_tensor("queries", queries)
    check_tensor("gallery", gallery)
    return _ops.topk_search(queries, gallery, check_int("k", k))


# ---- fake kernels: shapes and dtypes only, for torch.compile and meta tensors ----------------


def _check_devices(img_emb, cap_emb, cap_to_img, img_thresholds=None, cap_thresholds=None):
    check_same_device(
        ("img_emb", img_emb),
        ("cap_emb", cap_emb),
        ("cap_to_img", cap_to_img),
        ("img_thresholds", img_thresholds),
        ("cap_thresholds", cap_thresholds),
    )


def _fake_counts(img_emb, cap_emb):
    """Empty int64 (N,), (M,), (N,), (M,): ranks or counts, then their ties."""
    per_image = img_emb.new_empty((img_emb.shape[0],), dtype=torch.int64)
    per_caption = cap_emb.new_empty((cap_emb.shape[0],), dtype=torch.int64)
    return per_image, per_caption, torch.empty_like(per_image), torch.empty_like(per_caption)


@torch.library.register_fake("jwae_ext::retrieval_ranks")
def _(img_emb, cap_emb, cap_to_img):
    _check_devices(img_emb, cap_emb, cap_to_img)
    return _fake_counts(img_emb, cap_emb)


@torch.library.register_fake("jwae_ext::retrieval_thresholds")
def _(img_emb, cap_emb, cap_to_img):
    _check_devices(img_emb, cap_emb, cap_to_img)
    dtype = accumulation_dtype(img_emb.dtype)
    return (
        img_emb.new_empty((img_emb.shape[0],), dtype=dtype),
        cap_emb.new_empty((cap_emb.shape[0],), dtype=dtype),
    )


@torch.library.register_fake("jwae_ext::retrieval_count_at_least")
def _(img_emb, cap_emb, cap_to_img, img_thresholds, cap_thresholds):
    _check_devices(img_emb, cap_emb, cap_to_img, img_thresholds, cap_thresholds)
    return _fake_counts(img_emb, cap_emb)


@torch.library.register_fake("jwae_ext::topk_search")
def _(queries, gallery, k):
    check_same_device(("queries", queries), ("gallery", gallery))
    return (
        queries.new_empty((queries.shape[0], k), dtype=accumulation_dtype(queries.dtype)),
        queries.new_empty((queries.shape[0], k), dtype=torch.int64),
    )


# ---- autograd ---------------------------------------------------------------------------------

# Ranks, counts and thresholds are not differentiated: their outputs do not require grad, even for
# inputs that do (e.g. evaluation inside a training step), so autograd falls through to the kernel.
_AUTOGRAD = torch.library.Library("jwae_ext", "IMPL")
for _name in ("retrieval_ranks", "retrieval_thresholds", "retrieval_count_at_least"):
    _AUTOGRAD.impl(_name, torch.library.fallthrough_kernel, "Autograd")


# Top-k scores are dot products of the selected pairs.


def _topk_setup_context(ctx, inputs, output):
    queries, gallery, _k = inputs
    _scores, indices = output
    ctx.save_for_backward(queries, gallery, indices)
    ctx.mark_non_differentiable(indices)


def _topk_backward(ctx, grad_scores, _grad_indices):
    queries, gallery, indices = ctx.saved_tensors
    grad_queries = grad_gallery = None
    weights = grad_scores.to(queries.dtype)
    if ctx.needs_input_grad[0]:
        # grad_queries[q] = sum_t grad[q, t] * gallery[indices[q, t]]: one bag of k per query.
        grad_queries = torch.nn.functional.embedding_bag(
            indices, gallery, per_sample_weights=weights, mode="sum"
        )
    if ctx.needs_input_grad[1]:
        # grad_gallery[g] = sum over (q, t) with indices[q, t] == g of grad[q, t] * queries[q]:
        # the pairs grouped by gallery item form one bag per item (empty bags give zero rows).
        flat = indices.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=gallery.shape[0])
        offsets = torch.cumsum(counts, 0) - counts
        query_of_pair = torch.div(order, indices.shape[1], rounding_mode="floor")
        grad_gallery = torch.nn.functional.embedding_bag(
            query_of_pair,
            queries,
            offsets,
            per_sample_weights=weights.reshape(-1)[order],
            mode="sum",
        )
    return grad_queries, grad_gallery, None


torch.library.register_autograd(
    "jwae_ext::topk_search", _topk_backward, setup_context=_topk_setup_context
)
