"""Exact retrieval metrics with the work sharded over the ranks of a data-parallel job
(docs/design.md, "Scale out", and docs/distributed.md).

Pooled models: every rank encodes all images (the small side) and its own contiguous share of the
captions (:func:`caption_shard`), scores only its block, and ends with the ranks, and so the
table, of one process on all captions, exactly (:func:`evaluate_sharded`). SCAN models: every rank
encodes everything (cheap beside the cross-attention) and counts the pairs of its share of the
caption tiles (:func:`evaluate_xattn_sharded`); the counts are summed, and the table is again one
process's, exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist

from jwae_ext import ops, retrieval
from jwae_ext.data import CaptionSplit, Vocabulary
from jwae_ext.distributed import Context, gather_uneven
from jwae_ext.encoding import encode_split, encode_split_xattn
from jwae_ext.models import SCAN, JointModel
from jwae_ext.ops._checks import check_tensor
from jwae_ext.ops._dtypes import accumulation_dtype

__all__ = [
    "caption_shard",
    "encode_and_rank_sharded",
    "evaluate_sharded",
    "evaluate_split_sharded",
    "evaluate_xattn_sharded",
    "summed_xattn_ranks",
]


def caption_shard(num_captions: int, chunk: int, ctx: Context) -> range:
    """This rank's captions: a contiguous run of whole ``chunk``-caption blocks (the last block may
    be short). Encoding in blocks of ``chunk`` from the shard's start then batches every caption
    exactly as one process does, so the codes, and the ranks, are bit for bit the same. A rank
    gets no captions when there are fewer blocks than ranks."""
    blocks = -(-num_captions // chunk)
    first = blocks * ctx.rank // ctx.world_size
    last = blocks * (ctx.rank + 1) // ctx.world_size
    return range(min(first * chunk, num_captions), min(last * chunk, num_captions))


def _sharded_ranks(
    img_emb: torch.Tensor, cap_emb: torch.Tensor, cap_to_img: torch.Tensor, ctx: Context
) -> ops.Ranks:
    """Exact ranks with every image on every rank and the captions sharded: the i2t ranks of all
    images and the t2i ranks of the captions of all ranks (concatenated in rank order), then
    their ties in the same order."""
    n, here = img_emb.shape[0], cap_emb.shape[0] > 0
    if here:
        img_thresholds, cap_thresholds = ops.retrieval_thresholds(img_emb, cap_emb, cap_to_img)
    else:  # the kernels refuse empty inputs; no captions here means no own score, nothing above
        img_thresholds = img_emb.new_full((n,), -torch.inf, dtype=accumulation_dtype(img_emb.dtype))
    # An image's threshold is its best own caption, wherever that caption is.
    dist.all_reduce(img_thresholds, op=dist.ReduceOp.MAX)
    if here:
        counts = ops.retrieval_count_at_least(
            img_emb, cap_emb, cap_to_img, img_thresholds, cap_thresholds
        )
    else:
        none = torch.zeros(0, dtype=torch.int64, device=img_emb.device)
        counts = ops.Ranks(none.new_zeros(n), none, none.new_zeros(n), none)
    # Captions at least as high as (and tied with) the threshold, summed over the shards.
    per_image = torch.stack([counts.i2t, counts.i2t_ties])
    dist.all_reduce(per_image)
    # A caption's rank is complete here (all images are); the tables need every rank's.
    return ops.Ranks(
        i2t=per_image[0],
        t2i=gather_uneven(counts.t2i, ctx),
        i2t_ties=per_image[1],
        t2i_ties=gather_uneven(counts.t2i_ties, ctx),
    )


def _check_shard(
    img_emb: torch.Tensor, cap_emb: torch.Tensor, cap_to_img: torch.Tensor, ctx: Context
) -> None:
    """The single-process checks on the union of the shards. The shape checks fail on the rank
    that is wrong; the id checks are reduced first so that every rank raises together (a rank
    raising alone would leave the others waiting in a collective)."""
    for name, value in (("img_emb", img_emb), ("cap_emb", cap_emb), ("cap_to_img", cap_to_img)):
        check_tensor(name, value)
    if img_emb.dim() != 2 or cap_emb.dim() != 2 or cap_emb.shape[1] != img_emb.shape[1]:
        raise ValueError(
            f"jwae_ext: 'img_emb' and 'cap_emb' must be 2-D with the same width, got shapes "
            f"{tuple(img_emb.shape)} and {tuple(cap_emb.shape)}"
        )
    if cap_to_img.dtype != torch.int64 or cap_to_img.shape != (cap_emb.shape[0],):
        raise ValueError(
            f"jwae_ext: argument 'cap_to_img' must be int64 of shape ({cap_emb.shape[0]},), got "
            f"{cap_to_img.dtype} {tuple(cap_to_img.shape)}"
        )
    n = img_emb.shape[0]
    valid = (cap_to_img >= 0) & (cap_to_img < n)
    # Per image its captions on all ranks, and in the last slot the ids out of range.
    counts = torch.bincount(torch.where(valid, cap_to_img, n), minlength=n + 1)
    dist.all_reduce(counts)
    if counts[n]:
        raise ValueError(
            f"jwae_ext: argument 'cap_to_img' must hold image ids in [0, {n}); {int(counts[n])} "
            "captions (over all ranks) do not"
        )
    uncaptioned = (counts[:n] == 0).nonzero()
    if len(uncaptioned):
        raise ValueError(
            f"jwae_ext: every image needs at least one caption in 'cap_to_img' (over all ranks), "
            f"but {len(uncaptioned)} of {n} images have none, the first is image "
            f"{uncaptioned[0].item()}"
        )


def evaluate_sharded(
    img_emb: torch.Tensor,
    cap_emb: torch.Tensor,
    cap_to_img: torch.Tensor,
    ctx: Context,
    protocol: str = "full",
) -> dict:
    """:func:`jwae_ext.retrieval.evaluate` with the captions sharded over the ranks.

    Every rank passes all images ``(N, d)`` and its own captions ``(M_r, d)`` with their images
    ``(M_r,)`` (any split of the captions; a rank may have none). Each rank scores only its
    ``N x M_r`` block: image thresholds (best own caption) are combined with a max over ranks and
    counts of captions scoring at least as high (and of ties) summed, while a caption's rank is
    complete on its own rank and the ranks are gathered for the tables. Every rank returns the
    result of one process on all captions, exactly (same GEMM scores, same integer counts).
    Collective: call it on all ranks. In one process it is :func:`jwae_ext.retrieval.evaluate`.
    """
    if not ctx.enabled:
        return retrieval.evaluate(img_emb, cap_emb, cap_to_img, protocol)
    retrieval.check_protocol(protocol, img_emb)
    _check_shard(img_emb, cap_emb, cap_to_img, ctx)
    return retrieval.protocol_tables(
        img_emb,
        cap_emb,
        cap_to_img,
        protocol,
        ranks=lambda i, c, ids: _sharded_ranks(i, c, ids, ctx),
    )


def summed_xattn_ranks(ctx: Context) -> Callable[..., ops.Ranks]:
    """:func:`jwae_ext.ops.xattn_ranks` split over the ranks: each counts its part of the pairs
    (``part=rank, parts=world_size``) and the four count vectors are summed over the ranks with
    one all_reduce. Every rank must pass the same inputs, and gets the ranks and ties of one
    process, exactly (integer counts of pairs whose scores every rank computes with the same
    bits). Collective."""

    def ranks(images, captions, cap_lens, cap_to_img, **options) -> ops.Ranks:
        part = ops.xattn_ranks(
            images, captions, cap_lens, cap_to_img,
            part=ctx.rank, parts=ctx.world_size, **options,
        )  # fmt: skip
        counts = torch.cat(list(part))
        dist.all_reduce(counts)
        return ops.Ranks(*counts.split([len(p) for p in part]))

    return ranks


def evaluate_xattn_sharded(
    images: torch.Tensor,
    captions: torch.Tensor,
    cap_lens: torch.Tensor,
    cap_to_img: torch.Tensor,
    ctx: Context,
    **kwargs,
) -> dict:
    """:func:`jwae_ext.retrieval.evaluate_xattn` (same arguments, ``kwargs`` its protocol and
    score options) with the cross-attention ranks counted in parts over the ranks
    (:func:`summed_xattn_ranks`). Every rank passes all the codes, the same on every rank, and
    returns the table of one process, exactly; each computes the own pairs' tiles (a small
    share) and ``1 / world_size`` of the others. Collective: call it on all ranks. In one process
    it is :func:`jwae_ext.retrieval.evaluate_xattn`."""
    if ctx.enabled:
        kwargs["ranks"] = summed_xattn_ranks(ctx)
    return retrieval.evaluate_xattn(images, captions, cap_lens, cap_to_img, **kwargs)


def encode_and_rank_sharded(
    model: JointModel,
    split: CaptionSplit,
    vocab: Vocabulary,
    ctx: Context,
    *,
    batch_size: int = 1024,
    protocol: str = "full",
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """:func:`jwae_ext.evaluation.encode_and_rank` with the caption encoding and the ranking
    sharded over the ranks (every rank encodes all images: the cheap side). The table is the
    same on every rank, identical to one process's; the codes are one per image and one per
    caption of this rank's shard (SCAN: the mean region / word codes of all captions, since every
    rank encodes all of them and counts its part of the cross-attention ranks,
    :func:`evaluate_xattn_sharded`)."""
    if isinstance(model, SCAN):
        codes = encode_split_xattn(model, split, vocab, device=ctx.device, batch_size=batch_size)
        ranks = summed_xattn_ranks(ctx) if ctx.enabled else ops.xattn_ranks
        table = codes.table(split.cap_to_img, protocol, model.xattn.options(), ranks)
        return table, *codes.pooled()
    shard = caption_shard(split.num_captions, batch_size, ctx)
    img_emb, cap_emb = encode_split(
        model, split, vocab, device=ctx.device, batch_size=batch_size, captions=shard
    )
    cap_to_img = torch.as_tensor(np.asarray(split.cap_to_img)[shard.start : shard.stop])
    table = evaluate_sharded(img_emb, cap_emb, cap_to_img.to(ctx.device), ctx, protocol)
    return table, img_emb, cap_emb


def evaluate_split_sharded(
    model: JointModel,
    split: CaptionSplit,
    vocab: Vocabulary,
    ctx: Context,
    *,
    batch_size: int = 1024,
    protocol: str = "full",
) -> dict:
    """The retrieval table of :func:`encode_and_rank_sharded`."""
    return encode_and_rank_sharded(
        model, split, vocab, ctx, batch_size=batch_size, protocol=protocol
    )[0]
