"""Max-of-hinges loss, the straightforward way: VSE++'s ``ContrastiveLoss`` on the full B x B score
matrix, with the positives of ``img_ids``/``txt_ids`` masked out. What the kernels are tested and
benchmarked against (same signatures as :mod:`jwae_ext.ops.mh_loss`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    """VSE++ contrastive loss of a square score matrix (image i paired with caption i)."""
    diagonal = scores.diag().view(-1, 1)
    cost_caption = (margin + scores - diagonal).clamp(min=0)  # i2t: image i against caption j
    cost_image = (margin + scores - diagonal.t()).clamp(min=0)  # t2i: caption j against image i
    positive = torch.eye(scores.size(0), dtype=torch.bool, device=scores.device)
    if img_ids is not None:
        positive = positive | (img_ids.view(-1, 1) == txt_ids.view(1, -1))
    cost_caption = cost_caption.masked_fill(positive, 0)
    cost_image = cost_image.masked_fill(positive, 0)
    if max_violation:
        cost_i2t, cost_t2i = cost_caption.max(1)[0], cost_image.max(0)[0]
    else:
        cost_i2t, cost_t2i = cost_caption.sum(1), cost_image.sum(0)
    terms = {"both": (cost_i2t, cost_t2i), "i2t": (cost_i2t,), "t2i": (cost_t2i,)}[direction]
    if reduction == "none":  # per-query costs: (2, B) for both directions, (B,) for one
        return terms[0] if len(terms) == 1 else torch.stack(terms)
    reduce = torch.sum if reduction == "sum" else torch.mean
    return sum(reduce(t) for t in terms)


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
    """VSE++ contrastive loss of paired embeddings through the full score matrix."""
    if normalize:
        img_emb, txt_emb = F.normalize(img_emb, dim=1), F.normalize(txt_emb, dim=1)
    return mh_loss_from_scores(
        img_emb @ txt_emb.t(),
        margin=margin,
        max_violation=max_violation,
        img_ids=img_ids,
        txt_ids=txt_ids,
        reduction=reduction,
        direction=direction,
    )
