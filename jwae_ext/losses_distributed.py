"""The training loss of a data-parallel step: hard negatives from every rank's batch, and the
module that DDP wraps (docs/design.md, "Scale out").

The max-of-hinges term mines hard negatives in the global batch (:func:`global_mh_loss`) and DDP
averages the encoder/decoder gradients (:class:`AutoencoderLoss`); the trainer averages the
discriminator's explicitly (:func:`jwae_ext.distributed.average_`). One step of N processes has
the gradients of one process on the concatenated batch (``python_tests/test_distributed.py``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from jwae_ext import ops
from jwae_ext.distributed import Context, all_gather_rows
from jwae_ext.losses import LossConfig, xattn_mh_loss
from jwae_ext.models import SCAN, JointModel, PretrainedVectors

__all__ = ["AutoencoderLoss", "global_mh_loss", "global_xattn_mh_loss"]


def global_mh_loss(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    *,
    img_ids: torch.Tensor | None = None,
    txt_ids: torch.Tensor | None = None,
    **options: float | bool,
) -> torch.Tensor:
    """This rank's share of the max-of-hinges loss of the global batch, scaled for DDP.

    Every rank's pairs are gathered (:func:`all_gather_rows`); :func:`jwae_ext.ops.mh_loss` with
    ``reduction="none"`` scores this rank's images and captions as queries against the whole
    global batch, so hard negatives come from every rank and their gradients reach the rank that
    owns them. ``img_ids``/``txt_ids`` must be global (dataset) ids so that pairs of one image on
    two ranks are not negatives. The sum of this rank's costs is multiplied by the world size:
    DDP *averages* gradients over ranks while the loss is a *sum* over queries, so the averaged
    gradient is then that of one process on the concatenated batch (and the mean over ranks of
    the returned values is that process's loss). ``options`` (``margin``, ``max_violation``,
    ``normalize``) are those of :func:`jwae_ext.ops.mh_loss`.
    """
    world, rank, rows = dist.get_world_size(), dist.get_rank(), img_emb.shape[0]
    ids = {}
    if img_ids is not None and txt_ids is not None:
        ids = {"img_ids": all_gather_rows(img_ids), "txt_ids": all_gather_rows(txt_ids)}
    costs = ops.mh_loss(
        all_gather_rows(img_emb),
        all_gather_rows(txt_emb),
        reduction="none",
        **ids,
        **options,
    )  # (2, world * rows): i2t per image, t2i per caption
    return costs[:, rank * rows : (rank + 1) * rows].sum() * world


def global_xattn_mh_loss(
    regions: torch.Tensor,
    words: torch.Tensor,
    cap_lens: torch.Tensor,
    *,
    xattn: dict,
    img_ids: torch.Tensor,
    txt_ids: torch.Tensor,
    **options: float | bool,
) -> torch.Tensor:
    """This rank's share of SCAN's max-of-hinges loss of the global batch, scaled for DDP as
    :func:`global_mh_loss` is.

    A query's cost reads one row (an image against every caption) or one column (a caption
    against every image) of the global score matrix, so this rank computes only its rows, its
    images against every rank's captions, and its columns, every rank's images against its
    captions: two cross-attention blocks of ``b x B`` instead of the ``B x B`` matrix. Codes are
    gathered with their gradient (:func:`~jwae_ext.distributed.all_gather_rows`; word codes
    padded to the longest caption of the global batch first). ``options``: ``margin``,
    ``max_violation`` of :func:`jwae_ext.ops.mh_loss_from_scores`.
    """
    world, rank, b = dist.get_world_size(), dist.get_rank(), regions.shape[0]
    longest = torch.tensor([words.shape[1]], device=words.device)
    dist.all_reduce(longest, op=dist.ReduceOp.MAX)
    words = F.pad(words, (0, 0, 0, int(longest) - words.shape[1]))
    all_lens = all_gather_rows(cap_lens)
    rows = ops.xattn_scores(regions, all_gather_rows(words), all_lens, **xattn)  # (b, B)
    cols = ops.xattn_scores(all_gather_rows(regions), words, cap_lens, **xattn)  # (B, b)
    mine = slice(rank * b, (rank + 1) * b)
    # The other entries are never read by this rank's queries: zeros, without gradient.
    scores = torch.cat(
        [
            rows.new_zeros(rank * b, world * b),
            rows,
            rows.new_zeros((world - rank - 1) * b, world * b),
        ]
    )
    scores = torch.cat([scores[:, : mine.start], cols, scores[:, mine.stop :]], dim=1)
    costs = ops.mh_loss_from_scores(
        scores,
        reduction="none",
        img_ids=all_gather_rows(img_ids),
        txt_ids=all_gather_rows(txt_ids),
        **options,
    )  # (2, world * b): i2t per image, t2i per caption
    return costs[:, mine].sum() * world


class AutoencoderLoss(nn.Module):
    """A :class:`~jwae_ext.models.JointModel`'s ``autoencoder_loss`` as a module: what DDP
    wraps, holding only what that loss trains.

    DDP needs a ``forward`` to hook into and expects a gradient for every parameter it holds, so
    the discriminator (evaluated without gradient in this loss) is not registered here, nor are
    the decoders of the variants without jWAE terms. In one process the module is called as is.
    """

    def __init__(self, model: JointModel, loss_cfg: LossConfig, ctx: Context) -> None:
        super().__init__()
        self.img_enc, self.txt_enc = model.img_enc, model.txt_enc
        if loss_cfg.uses_wae:
            self.img_dec, self.txt_dec = model.img_dec, model.txt_dec
        self._model = (model,)  # a tuple keeps the whole model (and its discriminator) unregistered
        self._loss_cfg = dataclasses.replace(loss_cfg, ranks=ctx.world_size)
        if isinstance(model, SCAN):
            self._hinge = global_xattn_mh_loss if ctx.enabled else xattn_mh_loss
        else:
            self._hinge = global_mh_loss if ctx.enabled else ops.mh_loss

    def forward(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        lengths: torch.Tensor,
        img_ids: torch.Tensor,
        warmup: bool,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """The loss, terms and codes of the model's ``autoencoder_loss``; ``warmup`` selects the sum
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
        # The frozen word vectors are read from the same files on every rank: broadcasting their
        # matrix (80 MB for GloVe) before every step would only cost time.
        frozen = [
            f"{name}.matrix" for name, m in self.named_modules() if isinstance(m, PretrainedVectors)
        ]
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            self, frozen
        )
        return nn.parallel.DistributedDataParallel(
            self, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
