"""Evaluating a localization model on a split: R@1, R@5, the upper bound, R@1 per phrase type.

R@K is the share (%) of the split's evaluated phrases for which one of the model's K
best-scored proposals has IoU >= 0.5 with the ground truth (ties: the lowest index first); a
phrase counts under each of its types.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch.utils.data import DataLoader

from jwae_ext.checkpoint import LoadedModel
from jwae_ext.data import Vocabulary
from jwae_ext.grounding.batches import GroundingDataset, collate_grounding
from jwae_ext.grounding.boxes import rank_proposals, recall_at
from jwae_ext.grounding.data import GroundingSplit
from jwae_ext.grounding.models import GroundingModel

__all__ = ["KS", "evaluate_grounding", "evaluate_loaded_grounding", "format_grounding", "localize"]

KS = (1, 5)


@torch.no_grad()
def localize(
    model: GroundingModel,
    split: GroundingSplit,
    vocab: Vocabulary,
    *,
    k: int = max(KS),
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``(n, k)`` int64: the indices of each evaluated phrase's ``k`` best proposals, best
    first, ``-1`` past an image's proposals (phrases in the order of ``split.phrases``)."""
    dataset = GroundingDataset(split, vocab, images=range(split.num_images))
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_grounding)
    was_training = model.training
    model.eval()
    chosen = []
    try:
        for batch in loader:
            if not len(batch.tokens):
                continue
            batch = batch.to(device)
            scores = model(batch)
            chosen.append(rank_proposals(scores, batch.num_boxes[batch.phrase_image], k).cpu())
    finally:
        model.train(was_training)
    return torch.cat(chosen) if chosen else torch.zeros(0, k, dtype=torch.int64)


def evaluate_grounding(
    model: GroundingModel,
    split: GroundingSplit,
    vocab: Vocabulary,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> dict:
    """R@1, R@5 (%), the upper bound (%), the number of phrases and R@1 per phrase type."""
    table = split.phrases
    chosen = localize(model, split, vocab, batch_size=batch_size, device=device)
    iou = torch.from_numpy(table.iou)
    result: dict = {"phrases": len(table), "upper_bound": split.upper_bound()}
    hits = {k: recall_at(chosen[:, :k], iou).numpy() for k in KS}
    for k in KS:
        result[f"r{k}"] = 100.0 * float(hits[k].mean()) if len(table) else 0.0
    by_type: dict[str, list[bool]] = defaultdict(list)
    for hit, types in zip(hits[1], table.types, strict=True):
        for t in types:
            by_type[t].append(bool(hit))
    result["per_type"] = {
        t: {"r1": 100.0 * float(np.mean(v)), "phrases": len(v)} for t, v in sorted(by_type.items())
    }
    return result


def evaluate_loaded_grounding(
    loaded: LoadedModel, split: GroundingSplit, *, batch_size: int = 64
) -> dict:
    """:func:`evaluate_grounding` of a model rebuilt from a checkpoint, with what it is."""
    expected = loaded.model.grounding.region_dim
    if split.feature_dim != expected:
        raise ValueError(
            f"data {split.name} has {split.feature_dim}-dimensional proposal features (with the "
            f"5 spatial values), but the model in {loaded.path} was trained on {expected}"
        )
    device = next(loaded.model.parameters()).device
    return {
        "checkpoint": str(loaded.path),
        "variant": loaded.config.get("variant"),
        "trained_on": loaded.config.get("data"),
        "data": split.name,
        **evaluate_grounding(
            loaded.model, split, loaded.vocab, batch_size=batch_size, device=device
        ),
    }


def format_grounding(result: dict) -> str:
    """The result as a small text table."""
    lines = [
        f"R@1 {result['r1']:.1f}  R@5 {result['r5']:.1f}  upper bound {result['upper_bound']:.1f}"
        f"  ({result['phrases']} phrases)",
        "R@1 per phrase type:",
    ]
    width = max((len(t) for t in result["per_type"]), default=4)
    for t, v in result["per_type"].items():
        lines.append(f"  {t:<{width}}  {v['r1']:5.1f}  ({v['phrases']} phrases)")
    return "\n".join(lines)
