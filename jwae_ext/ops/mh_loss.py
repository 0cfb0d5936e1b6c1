"""Max-of-hinges hard-negative loss (VSE++), fused with the similarity GEMM.

The Python side of ``torch.ops.jwae_ext.mh_loss*`` (kernels in ``csrc/mh_loss.cpp`` and
``csrc/cuda/mh_loss.cu``): argument checks, the reduction over queries and directions, autograd and
fake kernels. The operators return per-query costs of both directions plus a per-query *support*
(the hardest negative's index, -1 where the cost is 0, with ``max_violation``; the number of
active hinges without) that the backward operators consume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from jwae_ext import reference
from jwae_ext.ops._checks import (
    check_bool,
    check_choice,
    check_finite_number,
    check_same_device,
    check_tensor,
)
from jwae_ext.ops.kernels import with_reference

REDUCTIONS = ("sum", "mean", "none")
DIRECTIONS = ("both", "i2t", "t2i")

# The sum of hinges on the CPU up to this batch goes through the full score matrix: one torch.mm,
# then the fused epilogue on its scores (mh_loss_from_scores), 3 GEMMs in all with the backward's
# two. The tiled kernel never holds a B x B matrix but computes its tiles three times (5 GEMMs):
# measured side by side (docs/performance.md), it takes 0.5x-1.0x the reference's time
# at B = 1024-8192, the full-matrix path 0.3x-0.6x. So the full matrix while its two B x B
# matrices (scores and their gradient) stay within 512 MB in fp32 (the reference holds about
# three times as much), the tiled kernel above, where memory decides.
FULL_MATRIX_MAX_BATCH = 8192


def sum_of_hinges_uses_full_matrix(img_emb: torch.Tensor, txt_emb: torch.Tensor) -> bool:
    """Whether :func:`mh_loss` with ``max_violation=False`` takes the full-score-matrix path.

    Only for a well-formed pair (CPU, 2-D, same shape and dtype, fp32/fp64, non-empty): anything
    else goes to the tiled operator, whose checks name the faulty argument.
    """
    return (
        img_emb.device.type == "cpu"
        and txt_emb.device.type == "cpu"
        and img_emb.dim() == 2
        and img_emb.shape == txt_emb.shape
        and img_emb.dtype == txt_emb.dtype
        and img_emb.dtype in (torch.float32, torch.float64)
        and 0 < img_emb.shape[0] <= FULL_MATRIX_MAX_BATCH
        and img_emb.shape[1] > 0
    )


@with_reference(reference.mh_loss)
def mh_loss(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    *,
    margin: float = 0.2,
    max_violation: bool = True,
    img_ids: torch.Tensor | None = None,
    txt_ids: torch.Tensor | None = None,
    reduction: str = "sum",
    direction: str = "both",
    normalize: bool = False,
) -> torch.Tensor:
    """Max-of-hinges (VSE++) loss of paired image and caption embeddings.

    With ``S = img_emb @ txt_emb.T`` (row ``i`` of ``img_emb`` paired with row ``i`` of
    ``txt_emb``), image ``i`` costs ``max_j [margin + S[i, j] - S[i, i]]_+`` (i2t, caption
    retrieval) and caption ``j`` costs ``max_i [margin + S[i, j] - S[j, j]]_+`` (t2i), both over
    negatives only: every off-diagonal pair, except pairs with ``img_ids[i] == txt_ids[j]`` when ids
    are given (a COCO batch may hold two captions of one image). A query without negatives costs 0.

    Args:
        img_emb, txt_emb: ``(B, d)`` float tensors on one device (fp32/fp64; also fp16/bf16 on CUDA,
            accumulated in fp32). Any strides.
        margin: the hinge margin, any finite number (negative margins are allowed).
        max_violation: hardest negative per query (VSE++); ``False`` sums the hinges over all
            negatives (VSE0, the two-branch embedding network loss).
        img_ids, txt_ids: optional int64 ``(B,)`` ids, both or neither; equal ids mark positives.
        reduction: ``"sum"`` over queries (the default: VSE++'s convention, kept on purpose
            rather than PyTorch's usual ``"mean"``, since the margin and learning rates of VSE++
            and jWAE are tuned for it), ``"mean"`` (each direction averaged
            over its ``B`` queries, then the directions added) or ``"none"``: the per-query costs,
            ``(2, B)`` for ``direction="both"`` (row 0 i2t, i.e. per image; row 1 t2i, per
            caption) and ``(B,)`` for one direction. Their gradient may weight every query
            differently (e.g. only a rank's own queries in distributed training).
        direction: ``"both"`` (i2t + t2i), ``"i2t"`` or ``"t2i"``.
        normalize: l2-normalize both embeddings first (cosine similarity), with its gradient.

    The score matrix is never held whole: it is computed tile by tile and only per-row and
    per-column results are kept (except for the sum of hinges on the CPU at batches up to
    ``FULL_MATRIX_MAX_BATCH``, where one ``torch.mm`` and the fused epilogue on its scores are
    faster). With ``max_violation`` the backward is a gather over the saved
    hardest negatives, O(B*d), without a second GEMM. Ties between equal negatives go to the lowest
    index. A NaN in the scores gives a NaN loss.
    """
    img_ids, txt_ids = _check_options(margin, max_violation, img_ids, txt_ids, reduction, direction)
    check_tensor("img_emb", img_emb)
    check_tensor("txt_emb", txt_emb)
    if check_bool("normalize", normalize):
        img_emb, txt_emb = F.normalize(img_emb, dim=-1), F.normalize(txt_emb, dim=-1)
    if not max_violation and sum_of_hinges_uses_full_matrix(img_emb, txt_emb):
        return mh_loss_from_scores(
            img_emb @ txt_emb.t(), margin=margin, max_violation=False, img_ids=img_ids,
            txt_ids=txt_ids, reduction=reduction, direction=direction,
        )  # fmt: skip
    cost_i2t, cost_t2i, _, _ = torch.ops.jwae_ext.mh_loss(
        img_emb, txt_emb, float(margin), max_violation, img_ids, txt_ids
    )
    return _reduce(cost_i2t, cost_t2i, reduction, direction)


@with_reference(reference.mh_loss_from_scores)
def mh_loss_from_scores(
    scores: torch.Tensor,
    *,
    margin: float = 0.2,
    max_violation: bool = True,
    img_ids: torch.Tensor | None = None,
    txt_ids: torch.Tensor | None = None,
    reduction: str = "sum",
    direction: str = "both",
) -> torch.Tensor:
    """The loss of :func:`mh_loss` on a precomputed square score matrix (e.g. cross-attention).

    ``scores[i, j]`` scores image ``i`` against caption ``j``; the diagonal holds the positives.
    The other arguments are those of :func:`mh_loss`. The gradient w.r.t. ``scores`` is dense but
    nonzero only at the positives and at the hardest negatives (``max_violation``) or at the active
    hinges (sum of hinges).
    """
    img_ids, txt_ids = _check_options(margin, max_violation, img_ids, txt_ids, reduction, direction)
    check_tensor("scores", scores)
    cost_i2t, cost_t2i, _, _ = torch.ops.jwae_ext.mh_loss_from_scores(
        scores, float(margin), max_violation, img_ids, txt_ids
    )
    return _reduce(cost_i2t, cost_t2i, reduction, direction)


def _check_options(margin, max_violation, img_ids, txt_ids, reduction, direction):
    check_finite_number("margin", margin)
    check_bool("max_violation", max_violation)
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("direction", direction, DIRECTIONS)
    if (img_ids is None) != (txt_ids is None):
        given = "img_ids" if txt_ids is None else "txt_ids"
        raise ValueError(
            f"jwae_ext: arguments 'img_ids' and 'txt_ids' must be given together, got only "
            f"'{given}'"
        )
    if img_ids is not None:
        check_tensor("img_ids", img_ids)
        check_tensor("txt_ids", txt_ids)
    return img_ids, txt_ids


def _reduce(cost_i2t: torch.Tensor, cost_t2i: torch.Tensor, reduction: str, direction: str):
    if direction == "i2t":
        costs = (cost_i2t,)
    elif direction == "t2i":
        costs = (cost_t2i,)
    else:
        costs = (cost_i2t, cost_t2i)
    if reduction == "none":
        return costs[0] if len(costs) == 1 else torch.stack(costs)
    reduce = torch.sum if reduction == "sum" else torch.mean
    return sum(reduce(c) for c in costs)


# ---- autograd ----------------------------------------------------------------------------------


def _setup_mh_loss(ctx, inputs, output):
    img_emb, txt_emb, margin, max_violation, img_ids, txt_ids = inputs
    ctx.save_for_backward(img_emb, txt_emb, img_ids, txt_ids, output[2], output[3])
    ctx.margin, ctx.max_violation = margin, max_violation


def _backward_mh_loss(ctx, grad_i2t, grad_t2i, _grad_support_i2t, _grad_support_t2i):
    img_emb, txt_emb, img_ids, txt_ids, support_i2t, support_t2i = ctx.saved_tensors
    grad_img, grad_txt = torch.ops.jwae_ext.mh_loss_backward(
        grad_i2t, grad_t2i, img_emb, txt_emb, ctx.margin, ctx.max_violation,
        img_ids, txt_ids, support_i2t, support_t2i,
    )  # fmt: skip
    return grad_img, grad_txt, None, None, None, None


def _setup_from_scores(ctx, inputs, output):
    scores, margin, max_violation, img_ids, txt_ids = inputs
    ctx.save_for_backward(scores, img_ids, txt_ids, output[2], output[3])
    ctx.margin, ctx.max_violation = margin, max_violation


def _backward_from_scores(ctx, grad_i2t, grad_t2i, _grad_support_i2t, _grad_support_t2i):
    scores, img_ids, txt_ids, support_i2t, support_t2i = ctx.saved_tensors
    grad_scores = torch.ops.jwae_ext.mh_loss_from_scores_backward(
        grad_i2t, grad_t2i, scores, ctx.margin, ctx.max_violation,
        img_ids, txt_ids, support_i2t, support_t2i,
    )  # fmt: skip
    return grad_scores, None, None, None, None


torch.library.register_autograd(
    "jwae_ext::mh_loss", _backward_mh_loss, setup_context=_setup_mh_loss
)
torch.library.register_autograd(
    "jwae_ext::mh_loss_from_scores", _backward_from_scores, setup_context=_setup_from_scores
)


# ---- fake (meta) kernels: shapes and dtypes only, for torch.compile ----------------------------


def _per_query(like: torch.Tensor):
    batch = like.shape[0]
    costs = (like.new_empty(batch), like.new_empty(batch))
    supports = (like.new_empty(batch, dtype=torch.long), like.new_empty(batch, dtype=torch.long))
    return (*costs, *supports)


@torch.library.register_fake("jwae_ext::mh_loss")
def _fake_mh_loss(img_emb, txt_emb, margin, max_violation, img_ids, txt_ids):
    check_same_device(
        ("img_emb", img_emb), ("txt_emb", txt_emb), ("img_ids", img_ids), ("txt_ids", txt_ids)
    )
    return _per_query(img_emb)


@torch.library.register_fake("jwae_ext::mh_loss_backward")
def _fake_mh_loss_backward(grad_i2t, grad_t2i, img_emb, txt_emb, *_):
    return img_emb.new_empty(img_emb.shape), txt_emb.new_empty(txt_emb.shape)


@torch.library.register_fake("jwae_ext::mh_loss_from_scores")
def _fake_mh_loss_from_scores(scores, margin, max_violation, img_ids, txt_ids):
    check_same_device(("scores", scores), ("img_ids", img_ids), ("txt_ids", txt_ids))
    return _per_query(scores)


@torch.library.register_fake("jwae_ext::mh_loss_from_scores_backward")
def _fake_mh_loss_from_scores_backward(grad_i2t, grad_t2i, scores, *_):
    return scores.new_empty(scores.shape)
