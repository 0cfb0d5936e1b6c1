"""Process-group plumbing for data-parallel jobs under ``torchrun`` (docs/design.md, "Scale out").

``torchrun --nproc_per_node N -m jwae_ext.train ...`` runs N copies of the trainer, one process
group (NCCL on GPUs, Gloo on CPUs). This module holds what every distributed piece shares: the
process's place in the job (:class:`Context`, :func:`setup`), its slice of every global batch
(:func:`local_batches`), its random streams (:func:`rank_seed`) and the collectives
(:func:`all_gather_rows`, :func:`gather_uneven`, :func:`average_`). The cross-rank training losses
are in :mod:`jwae_ext.losses_distributed`, the sharded evaluation in
:mod:`jwae_ext.retrieval_sharded`.

``--batch-size`` is the *global* batch: each rank trains on its own slice of every global batch of
the single-process run, so hyperparameters mean what they mean in one process. A single process
is ``Context()``: every collective is then the identity, and the trainer runs the code it always
ran.
"""

from __future__ import annotations

import gc
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

__all__ = [
    "Context",
    "all_gather_rows",
    "average_",
    "gather_uneven",
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
    back to this rank's ``x``: the sum over ranks of the gradient of its rows. Integer tensors
    (e.g. ids) are gathered the same way, without gradient."""
    return _GatherRows.apply(x)


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


def gather_uneven(x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Every rank's 1-D ``x`` (any length, a rank's may be empty) concatenated in rank order,
    on every rank."""
    sizes = [torch.zeros(1, dtype=torch.int64, device=x.device) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.cat([x, x.new_zeros(longest - x.shape[0])])
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])
