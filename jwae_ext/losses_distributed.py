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
from torch import nn

from jwae_ext import ops
from jwae_ext.distributed import Context, all_gather_rows
from jwae_ext.losses import LossConfig
from jwae_ext.models import JWAE

__all__ = ["AutoencoderLoss", "global_mh_loss"]


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
