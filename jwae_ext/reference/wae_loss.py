"""Reference for :func:`jwae_ext.ops.wae_loss`, composed from standard torch ops (the full
``T x V`` logits among them, which the operator never holds)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from jwae_ext.reference.linear_cross_entropy import linear_cross_entropy

DEFAULT_WEIGHTS = (0.05, 0.005, 0.01, 0.01)  # lambda_1..4 of the official code
TERM_NAMES = ("recon", "nll", "adv_img", "adv_txt")


def wae_loss(
    img_feat: torch.Tensor,
    img_rec: torch.Tensor,
    dec_hidden: torch.Tensor,
    vocab_weight: torch.Tensor,
    targets: torch.Tensor,
    d_logits_img: torch.Tensor | None,
    d_logits_txt: torch.Tensor | None,
    *,
    vocab_bias: torch.Tensor | None = None,
    batch_size: int,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    recon: str = "l1",
    ignore_index: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``F.l1_loss``/``F.mse_loss`` (sum) + ``F.linear`` + ``F.cross_entropy`` (sum) +
    ``F.binary_cross_entropy_with_logits`` against label 1 (0 without logits), weighted."""
    recon_fn = F.l1_loss if recon == "l1" else F.mse_loss
    hidden = dec_hidden.reshape(-1, dec_hidden.shape[-1])
    nll = linear_cross_entropy(
        hidden, vocab_weight, targets.reshape(-1), vocab_bias,
        ignore_index=ignore_index, reduction="sum",
    )  # fmt: skip
    terms = [
        recon_fn(img_rec, img_feat, reduction="sum") / batch_size,
        nll / batch_size,
        *(
            F.binary_cross_entropy_with_logits(d, torch.ones_like(d))
            if d is not None
            else torch.zeros((), device=hidden.device)
            for d in (d_logits_img, d_logits_txt)
        ),
    ]
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in terms) else torch.float32
    terms = [t.to(dtype) for t in terms]
    total = sum(w * t for w, t in zip(weights, terms, strict=True))
    return total, dict(zip(TERM_NAMES, (t.detach() for t in terms), strict=True))
