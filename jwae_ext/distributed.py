"""Data-parallel training and sharded evaluation under ``torchrun`` (DESIGN.md §6).

``torchrun --nproc_per_node N -m jwae_ext.train ...`` runs N copies of the trainer, one process
group (NCCL on GPUs, Gloo on CPUs). What each piece here guarantees:

- ``--batch-size`` is the *global* batch: each rank trains on its own slice of every global batch
  of the single-process run (:func:`local_batches`), so hyperparameters mean what they mean in one
  process.
- The max-of-hinges term mines hard negatives in the global batch (:func:`global_mh_loss`) and
  DDP averages the encoder/decoder gradients; the discriminator's gradients are averaged
  explicitly (:func:`average_`). One step of N processes has the gradients of one process on the
  concatenated batch (``python_tests/test_distributed.py``).
- Evaluation shards the captions over the ranks; every rank ends with the exact ranks of one
  process (:func:`evaluate_sharded`).

A single process is ``Context()``: every collective here is then the identity, and the trainer
runs the code it always ran.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from jwae_ext import ops, retrieval
from jwae_ext.data import CaptionSplit, Vocabulary
from jwae_ext.evaluate import encode_split
from jwae_ext.losses import LossConfig
from jwae_ext.models import JWAE
from jwae_ext.ops._checks import check_tensor

__all__ = [
    "AutoencoderLoss",
    "Context",
    "all_gather_rows",
    "average_",
    "caption_shard",
    "evaluate_sharded",
    "evaluate_split_sharded",
    "global_mh_loss",
    "local_batches",
    "rank_seed",
    "setup",
]


@dataclass(frozen=True)
class Context:
    """This process's place in the job. The default is one process, with no process group."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def max_int(self, value: int) -> int:
        """The largest of every rank's ``value`` (e.g. the signal that asked one rank to stop)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def gather_objects(self, obj: object) -> list | None:
        """Every rank's picklable ``obj`` on rank 0 (in rank order), None on the others."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def teardown(self) -> None:
        """Destroy the process group. Call it once the DDP modules are unreachable: their
        reference cycles are collected first, so that the group is freed here rather than during
        interpreter shutdown (where its threads abort the process)."""
        if self.enabled and dist.is_initialized():
            gc.collect()
            dist.destroy_process_group()


def setup(device: torch.device) -> Context:
    """The context ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), with the default process group initialised;
    one process when ``WORLD_SIZE`` is unset or 1.

    On CUDA each process takes ``cuda:LOCAL_RANK`` (``device`` without an index, or that index)
    and the backend is NCCL; on CPU it is Gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Context(device=device)
    missing = [
        v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ
    ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: start distributed runs with "
            "torchrun (see docs/distributed.md)"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if device.index not in (None, local_rank):
            raise ValueError(
                f"--device {device}: under torchrun every process uses cuda:LOCAL_RANK (this one "
                f"cuda:{local_rank}); pass --device cuda"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank=rank, world_size=world, device=device)


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of one rank's random streams (word dropout, prior samples): fixed by
    ``(seed, rank, step)``, different for every rank. ``step`` re-derives streams on resume when
    the number of processes changed."""
    digest = hashlib.sha256(f"jwae_ext/{seed}/{rank}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ---- training ------------------------------------------------------------------------------------


def local_batches(batches: list[list[int]], ctx: Context) -> list[list[int]]:
    """This rank's part of each global batch: the ``len(batch) // world_size`` pairs at position
    ``rank``. The global batches are the single-process ones (``--batch-size`` is global, and must
    be divisible by the world size); a last, short batch loses its final ``len % world_size``
    pairs, and is dropped if that leaves nothing, so every rank runs the same steps on equal
    local batches (the jWAE terms are per-rank means, averaged by DDP)."""
    parts = []
    for batch in batches:
        size = len(batch) // ctx.world_size
        if size:
            parts.append(batch[ctx.rank * size : (ctx.rank + 1) * size])
    return parts


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank's loss reads every rank's rows: sum the gradients over ranks *before* taking
        # this rank's rows. Slicing first would drop what the other ranks' queries send here,
        # e.g. through a hardest negative that this rank owns. (Cloned: all_reduce is in place.)
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        first = dist.get_rank() * ctx.rows
        return total[first : first + ctx.rows]


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` (same shape on all ranks) stacked by rows in rank order, with a gradient
    back to this rank's ``x``: the sum over ranks of the gradient of its rows."""
    return _GatherRows.apply(x)


def _gather_ids(ids: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(ids) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, ids.contiguous())
    return torch.cat(parts)


def global_mh_loss(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    *,
    margin: float = 0.2,
    max_violation: bool = True,
    img_ids: torch.Tensor | None = None,
    txt_ids: torch.Tensor | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """This rank's share of the max-of-hinges loss of the global batch, scaled for DDP.

    Every rank's pairs are gathered (:func:`all_gather_rows`); :func:`jwae_ext.ops.mh_loss` with
    ``reduction="none"`` scores this rank's images and captions as queries against the whole
    global batch, so hard negatives come from every rank and their gradients reach the rank that
    owns them. ``img_ids``/``txt_ids`` must be global (dataset) ids so that pairs of one image on
    two ranks are not negatives. The sum of this rank's costs is multiplied by the world size:
    DDP *averages* gradients over ranks while the loss is a *sum* over queries, so the averaged
    gradient is then that of one process on the concatenated batch (and the mean over ranks of
    the returned values is that process's loss).
    """
    world, rank, rows = dist.get_world_size(), dist.get_rank(), img_emb.shape[0]
    ids = {}
    if img_ids is not None and txt_ids is not None:
        ids = {"img_ids": _gather_ids(img_ids), "txt_ids": _gather_ids(txt_ids)}
    costs = ops.mh_loss(
        all_gather_rows(img_emb),
        all_gather_rows(txt_emb),
        margin=margin,
        max_violation=max_violation,
        normalize=normalize,
        reduction="none",
        **ids,
    )  # (2, world * rows): i2t per image, t2i per caption
    return costs[:, rank * rows : (rank + 1) * rows].sum() * world


class AutoencoderLoss(nn.Module):
    """``JWAE.autoencoder_loss`` as a module: what DDP wraps, holding only what that loss trains.

    DDP needs a ``forward`` to hook into and expects a gradient for every parameter it holds, so
    the discriminator (evaluated without gradient in this loss) is not registered here, nor are
    the decoders of the variants without jWAE terms. In one process the module is called as is.
    """

    def __init__(self, model: JWAE, loss_cfg: LossConfig, ctx: Context) -> None:
        super().__init__()
        self.img_enc, self.txt_enc = model.img_enc, model.txt_enc
        if loss_cfg.uses_wae:
            self.img_dec, self.txt_dec = model.img_dec, model.txt_dec
        self._model = (model,)  # a tuple keeps the whole model (and its discriminator) unregistered
        self._loss_cfg = loss_cfg
        self._hinge = global_mh_loss if ctx.enabled else ops.mh_loss

    def forward(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        lengths: torch.Tensor,
        img_ids: torch.Tensor,
        warmup: bool,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """The loss, terms and codes of :meth:`JWAE.autoencoder_loss`; ``warmup`` selects the sum
        of hinges of the warm-up epochs."""
        cfg = dataclasses.replace(self._loss_cfg, warmup=warmup)
        return self._model[0].autoencoder_loss(images, tokens, lengths, img_ids, cfg, self._hinge)

    def wrapped(self, ctx: Context) -> nn.Module:
        """This module under DDP when distributed (itself otherwise); the discriminator, outside
        DDP, is broadcast from rank 0 so that every rank starts from the same one."""
        if not ctx.enabled:
            return self
        for p in self._model[0].disc.parameters():
            dist.broadcast(p.data, src=0)
        return nn.parallel.DistributedDataParallel(
            self, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )


def average_(tensors: Sequence[torch.Tensor], ctx: Context) -> None:
    """Replace every tensor (one dtype and device) by its mean over ranks, in place, with one
    all_reduce. Used for the discriminator's gradients: an explicit average instead of DDP,
    because the discriminator runs three times per step (twice without gradient inside the
    autoencoder loss) and DDP's reducer expects one forward per backward; it is one bucket's worth
    of parameters, so nothing is lost to DDP's overlap of communication with the backward."""
    if not ctx.enabled or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


# ---- sharded evaluation --------------------------------------------------------------------------


def caption_shard(num_captions: int, chunk: int, ctx: Context) -> range:
    """This rank's captions: a contiguous run of whole ``chunk``-caption blocks (the last block may
    be short). Encoding in blocks of ``chunk`` from the shard's start then batches every caption
    exactly as one process does, so the codes, and the ranks, are bit for bit the same. A rank
    gets no captions when there are fewer blocks than ranks."""
    blocks = -(-num_captions // chunk)
    first = blocks * ctx.rank // ctx.world_size
    last = blocks * (ctx.rank + 1) // ctx.world_size
    return range(min(first * chunk, num_captions), min(last * chunk, num_captions))


def _score_dtype(emb: torch.Tensor) -> torch.dtype:
    return torch.float32 if emb.dtype in (torch.float16, torch.bfloat16) else emb.dtype


def _sharded_ranks(
    img_emb: torch.Tensor, cap_emb: torch.Tensor, cap_to_img: torch.Tensor, ctx: Context
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ranks with every image on every rank and the captions sharded: the i2t ranks of all
    images and the t2i ranks of the captions of all ranks (concatenated in rank order)."""
    n, here = img_emb.shape[0], cap_emb.shape[0] > 0
    if here:
        img_thresholds, cap_thresholds = ops.retrieval_thresholds(img_emb, cap_emb, cap_to_img)
    else:  # the kernels refuse empty inputs; no captions here means no own score, nothing above
        img_thresholds = img_emb.new_full((n,), -torch.inf, dtype=_score_dtype(img_emb))
    # An image's threshold is its best own caption, wherever that caption is.
    dist.all_reduce(img_thresholds, op=dist.ReduceOp.MAX)
    if here:
        img_counts, cap_counts = ops.retrieval_count_above(
            img_emb, cap_emb, cap_to_img, img_thresholds, cap_thresholds
        )
    else:
        img_counts = torch.zeros(n, dtype=torch.int64, device=img_emb.device)
        cap_counts = torch.zeros(0, dtype=torch.int64, device=img_emb.device)
    dist.all_reduce(img_counts)  # captions above the threshold, summed over the shards
    # A caption's rank is complete here (all images are); the tables need every rank's.
    return img_counts, _gather_uneven(cap_counts, ctx)


def _gather_uneven(x: torch.Tensor, ctx: Context) -> torch.Tensor:
    sizes = [torch.zeros(1, dtype=torch.int64, device=x.device) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.cat([x, x.new_zeros(longest - x.shape[0])])
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])


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
    counts of higher-scoring captions summed, while a caption's rank is complete on its own rank
    and the ranks are gathered for the tables. Every rank returns the result of one process on
    all captions, exactly (same GEMM scores, same integer counts). Collective: call it on all
    ranks. In one process it is :func:`jwae_ext.retrieval.evaluate`.
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


def evaluate_split_sharded(
    model: JWAE,
    split: CaptionSplit,
    vocab: Vocabulary,
    ctx: Context,
    *,
    batch_size: int = 1024,
    protocol: str = "full",
) -> dict:
    """:func:`jwae_ext.evaluate.evaluate_split` with the caption encoding and the ranking sharded
    over the ranks (every rank encodes all images: the cheap side). Same result on every rank,
    identical to one process's."""
    shard = caption_shard(split.num_captions, batch_size, ctx)
    img_emb, cap_emb = encode_split(
        model, split, vocab, device=ctx.device, batch_size=batch_size, captions=shard
    )
    cap_to_img = torch.as_tensor(np.asarray(split.cap_to_img)[shard.start : shard.stop])
    return evaluate_sharded(img_emb, cap_emb, cap_to_img.to(ctx.device), ctx, protocol)
