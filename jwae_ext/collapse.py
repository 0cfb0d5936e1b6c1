"""Collapse of a model's codes: how far apart its l2-normalized codes are.

A model whose codes all point one way ranks at chance, whatever its losses say. The pair MSE of
``jwae-mse`` is minimised by mapping every code to one point, and the hardest-negative hinge
can do the same from a random start (docs/design.md, "The jWAE model"); the trainer measures
:func:`code_spread` on the dev codes every epoch, logs it and warns once when codes collapse.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "COLLAPSED_SHARE",
    "NEAR_DUPLICATE_COSINE",
    "Spread",
    "code_spread",
    "collapse_message",
]

# Two codes this close in direction are the same point for ranking purposes.
NEAR_DUPLICATE_COSINE = 0.99
# Codes count as collapsed when at least this share of their pairs are near duplicates: then
# most queries have no distinct answer. (A trained model's share is ~0; a collapsed one's ~1.)
COLLAPSED_SHARE = 0.5
# The pairwise cosines of at most this many codes (evenly spaced): a 1000 x 1000 matrix.
_MOST_PAIRED = 1000


@dataclass(frozen=True)
class Spread:
    """The spread of a set of codes (rows), measured on their l2-normalized directions.

    ``std``: mean over dimensions of the per-dimension standard deviation; ``isotropic_std``:
    the same for directions spread evenly over the sphere, ``1/sqrt(d)``; ``near_duplicates``:
    the share of pairs of distinct codes with cosine > :data:`NEAR_DUPLICATE_COSINE`.
    """

    std: float
    isotropic_std: float
    near_duplicates: float

    @property
    def collapsed(self) -> bool:
        return self.near_duplicates >= COLLAPSED_SHARE

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@torch.no_grad()
def code_spread(codes: torch.Tensor) -> Spread:
    """The :class:`Spread` of ``codes`` (N, d) with N >= 2; any norm (they are normalized here)."""
    if codes.dim() != 2 or codes.shape[0] < 2:
        raise ValueError(
            f"jwae_ext: code_spread needs codes of shape (N >= 2, d), got {tuple(codes.shape)}"
        )
    unit = F.normalize(codes.double(), dim=1)
    picked = unit[torch.linspace(0, len(unit) - 1, min(len(unit), _MOST_PAIRED)).long()]
    cosines = picked @ picked.T
    distinct = ~torch.eye(len(picked), dtype=torch.bool, device=codes.device)
    return Spread(
        std=float(unit.std(dim=0).mean()),
        isotropic_std=codes.shape[1] ** -0.5,
        near_duplicates=float((cosines[distinct] > NEAR_DUPLICATE_COSINE).double().mean()),
    )


def collapse_message(epoch: int, spreads: dict[str, Spread]) -> str | None:
    """A warning naming the epoch and which codes (``spreads``: name -> :class:`Spread`)
    collapsed, or None when none did."""
    collapsed = {name: s for name, s in spreads.items() if s.collapsed}
    if not collapsed:
        return None
    details = "; ".join(
        f"{name} codes: {s.near_duplicates:.0%} of pairs have cosine > {NEAR_DUPLICATE_COSINE}, "
        f"mean per-dimension std {s.std:.2g} (isotropic {s.isotropic_std:.2g})"
        for name, s in collapsed.items()
    )
    return (
        f"warning: epoch {epoch}: the {' and '.join(collapsed)} codes collapsed to one direction "
        f"({details}); retrieval with them is near chance"
    )
