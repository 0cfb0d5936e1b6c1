"""Evaluating a trained model on a split: its retrieval table and the continuity of its codes.

The library side of ``python -m jwae_ext.evaluate`` (and of the poster's experiments): a model
comes from a checkpoint (:func:`jwae_ext.checkpoint.load_model`) or is in hand, its codes from
:func:`jwae_ext.encoding.encode_split`, the metrics from :mod:`jwae_ext.retrieval` and
:mod:`jwae_ext.continuity`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from jwae_ext import retrieval
from jwae_ext.checkpoint import LoadedModel
from jwae_ext.continuity import continuity
from jwae_ext.data import CaptionSplit, Vocabulary
from jwae_ext.encoding import encode_split
from jwae_ext.models import JWAE

__all__ = ["CONTINUITY_K", "Evaluation", "evaluate_loaded", "evaluate_split", "table_of_codes"]

CONTINUITY_K = 10


def table_of_codes(
    img_codes: torch.Tensor, cap_codes: torch.Tensor, split: CaptionSplit, protocol: str = "full"
) -> dict:
    """The retrieval table of already-encoded codes of ``split``."""
    cap_to_img = torch.as_tensor(np.asarray(split.cap_to_img), device=img_codes.device)
    return retrieval.evaluate(img_codes, cap_codes, cap_to_img, protocol=protocol)


def evaluate_split(
    model: JWAE, split: CaptionSplit, vocab: Vocabulary, *, protocol: str = "full", **encoding: Any
) -> dict:
    """The retrieval table of ``model`` on ``split`` (see :func:`jwae_ext.retrieval.evaluate`);
    ``encoding``: the ``device`` and ``batch_size`` of :func:`jwae_ext.encoding.encode_split`."""
    img_emb, cap_emb = encode_split(model, split, vocab, **encoding)
    return table_of_codes(img_emb, cap_emb, split, protocol)


@dataclass
class Evaluation:
    """What :func:`evaluate_loaded` measured: the JSON-ready ``result`` and the codes behind it."""

    result: dict
    img_codes: torch.Tensor
    cap_codes: torch.Tensor
    split: CaptionSplit


def evaluate_loaded(
    loaded: LoadedModel,
    split: CaptionSplit,
    *,
    protocol: str = "full",
    batch_size: int = 1024,
    k: int = CONTINUITY_K,
) -> Evaluation:
    """The retrieval table of ``loaded`` on ``split`` and, when the split has attributes, the
    continuity of its image codes (``k`` neighbours)."""
    expected = loaded.model.cfg.img_dim
    if split.feature_dim != expected:
        raise ValueError(
            f"data {split.name} has {split.feature_dim}-dimensional image features, but the model "
            f"in {loaded.path} was trained on {expected}-dimensional ones"
        )
    device = next(loaded.model.parameters()).device
    img, cap = encode_split(loaded.model, split, loaded.vocab, device=device, batch_size=batch_size)
    result = {
        "checkpoint": str(loaded.path),
        "variant": loaded.config.get("variant"),
        "trained_on": loaded.config.get("data"),
        "data": split.name,
        "protocol": protocol,
        "images": split.num_images,
        "captions": split.num_captions,
        **table_of_codes(img, cap, split, protocol),
        "continuity": None if split.attributes is None else continuity(img, split.attributes, k),
    }
    return Evaluation(result, img, cap, split)
