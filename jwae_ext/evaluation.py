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
from jwae_ext.encoding import encode_split, encode_split_xattn
from jwae_ext.models import SCAN, JointModel

__all__ = [
    "CONTINUITY_K",
    "Evaluation",
    "encode_and_rank",
    "evaluate_loaded",
    "evaluate_split",
    "result_file_name",
    "table_of_codes",
]

CONTINUITY_K = 10


def result_file_name(data: str, split: str, protocol: str = "full") -> str:
    """The file an evaluation of ``split`` of ``data`` (an embedded name or a folder: its last
    component) writes beside the checkpoint: ``eval-DATA-SPLIT.json``, with ``-PROTOCOL``
    before ``.json`` for the COCO protocols (so that they do not overwrite the full table)."""
    name = str(data).rstrip("/").rsplit("/", 1)[-1]
    suffix = "" if protocol == "full" else f"-{protocol}"
    return f"eval-{name}-{split}{suffix}.json"


def table_of_codes(
    img_codes: torch.Tensor, cap_codes: torch.Tensor, split: CaptionSplit, protocol: str = "full"
) -> dict:
    """The retrieval table of already-encoded codes of ``split``."""
    cap_to_img = torch.as_tensor(np.asarray(split.cap_to_img), device=img_codes.device)
    return retrieval.evaluate(img_codes, cap_codes, cap_to_img, protocol=protocol)


def encode_and_rank(
    model: JointModel,
    split: CaptionSplit,
    vocab: Vocabulary,
    *,
    protocol: str = "full",
    **encoding: Any,
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The retrieval table of ``model`` on ``split`` and one code per image and per caption.

    Pooled models: their codes, ranked by cosine (:func:`jwae_ext.retrieval.evaluate`). SCAN:
    region and word codes ranked by the model's cross-attention score
    (:func:`jwae_ext.retrieval.evaluate_xattn`), and the mean region / word codes as the single
    codes (:meth:`jwae_ext.encoding.XattnCodes.pooled`). ``encoding``: the ``device`` and
    ``batch_size`` of the encoding.
    """
    if isinstance(model, SCAN):
        codes = encode_split_xattn(model, split, vocab, **encoding)
        return codes.table(split.cap_to_img, protocol, model.xattn.options()), *codes.pooled()
    img, cap = encode_split(model, split, vocab, **encoding)
    return table_of_codes(img, cap, split, protocol), img, cap


def evaluate_split(
    model: JointModel,
    split: CaptionSplit,
    vocab: Vocabulary,
    *,
    protocol: str = "full",
    **encoding: Any,
) -> dict:
    """The retrieval table of ``model`` on ``split`` (see :func:`encode_and_rank`)."""
    return encode_and_rank(model, split, vocab, protocol=protocol, **encoding)[0]


@dataclass
class Evaluation:
    """What :func:`evaluate_loaded` measured: the JSON-ready ``result`` and one code per image
    and per caption (for SCAN the mean region / word codes: see :func:`encode_and_rank`)."""

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
    continuity of its image codes (``k`` neighbours); ``no_known_word``: how many of the
    split's captions have no word the model's vocabulary knows (they reach it as ``<unk>``
    only, and their codes tie)."""
    expected = loaded.model.cfg.img_dim
    regions = isinstance(loaded.model, SCAN)
    given = split.require_regions().shape[-1] if regions else split.feature_dim
    if given != expected:
        kind = "region" if regions else "image"
        raise ValueError(
            f"data {split.name} has {given}-dimensional {kind} features, but the model "
            f"in {loaded.path} was trained on {expected}-dimensional ones"
        )
    device = next(loaded.model.parameters()).device
    table, img, cap = encode_and_rank(
        loaded.model, split, loaded.vocab, protocol=protocol, device=device, batch_size=batch_size
    )
    result = {
        "checkpoint": str(loaded.path),
        "variant": loaded.config.get("variant"),
        "trained_on": loaded.config.get("data"),
        "data": split.name,
        "protocol": protocol,
        "images": split.num_images,
        "captions": split.num_captions,
        "no_known_word": loaded.vocab.captions_without_known_word(split.captions),
        **table,
        "continuity": None if split.attributes is None else continuity(img, split.attributes, k),
    }
    return Evaluation(result, img, cap, split)
