"""Word embeddings, optionally over frozen pretrained vectors (docs/design.md, "Text encoder").

Without vectors a word's embedding is a learned table row (``nn.Embedding``). With them
(:class:`PretrainedVectors`), input ids follow :class:`jwae_ext.data.Vocabulary`'s extended
layout: ids below ``vocab_size`` are the training vocabulary's, id ``vocab_size + r`` is row ``r``
of the vectors. A word's embedding is then

    learned[id if id < vocab_size else <unk>]  +  P @ vector(id)

with ``P`` a learned linear map (no bias) and ``vector(id)`` its frozen pretrained vector (zero
for a training word the vectors lack). Words the training captions never had (or had too rarely)
keep their own vector instead of all reading as ``<unk>``. The learned table starts at zero, so
every embedding starts as the projection of its pretrained vector and the table learns only what
the training captions add.

The vectors matrix is a non-persistent buffer of one module that every embedding of a model
shares: a checkpoint never holds it, ``.to(device)`` moves it once, and the run reloads it from
its recorded source (:mod:`jwae_ext.data.word_vectors`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PAD, START, END, UNK = 0, 1, 2, 3
TEXT_ENCODERS = ("gru", "mean")


class PretrainedVectors(nn.Module):
    """Frozen word vectors ``matrix`` ``(N, D)`` and the row of each training-vocabulary id
    ``rows`` ``(vocab_size,)`` (-1 where the vectors lack the word); looks up the vector of any
    input id (zeros where there is none)."""

    def __init__(self, matrix: torch.Tensor, rows: torch.Tensor) -> None:
        super().__init__()
        if matrix.dim() != 2 or rows.dim() != 1:
            raise ValueError(
                f"PretrainedVectors: matrix must be (N, D) and rows (vocab_size,), got "
                f"{tuple(matrix.shape)} and {tuple(rows.shape)}"
            )
        if rows.numel() and not -1 <= int(rows.min()) <= int(rows.max()) < matrix.shape[0]:
            raise ValueError(f"PretrainedVectors: rows must lie in [-1, {matrix.shape[0]})")
        self.register_buffer("matrix", matrix.float(), persistent=False)
        self.register_buffer("rows", rows.long())

    @property
    def dim(self) -> int:
        return self.matrix.shape[1]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        vocab_size = self.rows.numel()
        row = torch.where(
            ids < vocab_size, self.rows[ids.clamp(max=vocab_size - 1)], ids - vocab_size
        )
        found = (row >= 0).unsqueeze(-1)
        return self.matrix[row.clamp(min=0)] * found


class WordEmbedding(nn.Embedding):
    """Token ids -> word embeddings ``(..., word_dim)``: the learned table of the training
    vocabulary (the ``weight`` of ``nn.Embedding``, so checkpoints keep their names), plus the
    projection of ``vectors`` when given (see the module docstring)."""

    def __init__(
        self, vocab_size: int, word_dim: int, vectors: PretrainedVectors | None = None
    ) -> None:
        super().__init__(vocab_size, word_dim, padding_idx=PAD)
        self.vectors = vectors
        if vectors is not None:
            if vectors.rows.numel() != vocab_size:
                raise ValueError(
                    f"WordEmbedding: vectors map {vectors.rows.numel()} training ids, the "
                    f"vocabulary has {vocab_size}"
                )
            nn.init.zeros_(self.weight)
            self.project = nn.Linear(vectors.dim, word_dim, bias=False)

    def reset_learned(self, low: float, high: float) -> None:
        """Uniform initialisation of the learned table (``<pad>`` stays zero); with vectors the
        table stays at zero (see the module docstring)."""
        if self.vectors is None:
            with torch.no_grad():
                nn.init.uniform_(self.weight, low, high)
                self.weight[PAD].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.vectors is None:
            return super().forward(ids)
        learned = torch.where(ids < self.num_embeddings, ids, torch.full_like(ids, UNK))
        return F.embedding(learned, self.weight, PAD) + self.project(self.vectors(ids))
