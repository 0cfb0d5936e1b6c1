"""A model's codes of a whole split: what evaluation, figures and sharded validation rank
(:func:`encode_split` for the pooled models, :func:`encode_split_xattn` for SCAN)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from jwae_ext import retrieval
from jwae_ext.data import CaptionSplit, Vocabulary, pad_captions
from jwae_ext.models import JWAE, SCAN

__all__ = [
    "XattnCodes",
    "caption_codes",
    "encode_split",
    "encode_split_xattn",
    "image_codes",
    "mean_region_codes",
    "word_codes",
]


@torch.no_grad()
def image_codes(
    model: JWAE | SCAN, features: np.ndarray, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The l2-normalized codes of one batch of image features: pooled models ``(B, D)`` ->
    ``(B, d)``, SCAN region features ``(B, R, D)`` -> region codes ``(B, R, d)``. What every
    encoding of images goes through (evaluation, an index, a query), so all have the same bits.
    The model must be in eval mode."""
    feats = torch.from_numpy(np.array(features, dtype=np.float32)).to(device)
    if isinstance(model, SCAN):
        return model.encode_images(feats)  # normalized per region by the model
    return F.normalize(model.encode_images(feats), dim=1)


def mean_region_codes(regions: torch.Tensor) -> torch.Tensor:
    """One l2-normalized code per image ``(B, d)``, the mean of its region codes ``(B, R, d)``:
    SCAN's single image vector (continuity, figures, image-to-image search), not its score."""
    return F.normalize(regions.mean(dim=1), dim=1)


@torch.no_grad()
def caption_codes(
    model: JWAE, vocab: Vocabulary, captions: list[str], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The l2-normalized codes ``(B, d)`` of one batch of captions of a pooled model (words
    unknown to ``vocab`` become ``<unk>``); eval mode, as :func:`image_codes`."""
    tokens, lengths = pad_captions([vocab.encode(c) for c in captions])
    return F.normalize(model.encode_captions(tokens.to(device), lengths.to(device)), dim=1)


@torch.no_grad()
def word_codes(
    model: SCAN, vocab: Vocabulary, captions: list[str], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """A SCAN model's word codes ``(B, L, d)`` (zeros past each length) and lengths ``(B,)`` of
    one batch of captions, ``L`` its longest; eval mode, as :func:`image_codes`."""
    tokens, lengths = pad_captions([vocab.encode(c) for c in captions])
    return model.encode_captions(tokens.to(device), lengths.to(device)), lengths.to(device)


@torch.no_grad()
def encode_split(
    model: JWAE,
    split: CaptionSplit,
    vocab: Vocabulary,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
    captions: range | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """l2-normalized codes of every image (N, d) and every caption (M, d) of ``split``.

    Words unknown to ``vocab`` become ``<unk>``. The model is put in eval mode. ``captions``
    (a step-1 range, possibly empty) encodes only those captions, in batches starting at its
    first: a shard of a distributed evaluation.
    """
    model.eval()
    chosen = range(split.num_captions) if captions is None else captions
    images = [
        image_codes(model, split.images[start : start + batch_size], device)
        for start in range(0, split.num_images, batch_size)
    ]
    codes = [
        caption_codes(
            model, vocab, split.captions[start : min(start + batch_size, chosen.stop)], device
        )
        for start in range(chosen.start, chosen.stop, batch_size)
    ]
    img_emb = torch.cat(images)
    return img_emb, torch.cat(codes) if codes else img_emb.new_empty(0, img_emb.shape[1])


@dataclass
class XattnCodes:
    """A SCAN model's codes of a split: l2-normalized region codes ``regions`` (N, R, d), word
    codes ``words`` (M, L, d) padded with zeros past ``lengths`` (M,) int64."""

    regions: torch.Tensor
    words: torch.Tensor
    lengths: torch.Tensor

    def table(self, cap_to_img: np.ndarray, protocol: str, xattn: dict) -> dict:
        """The exact retrieval table of these codes under the cross-attention score with the
        options ``xattn`` (:func:`jwae_ext.retrieval.evaluate_xattn`)."""
        ids = torch.as_tensor(np.asarray(cap_to_img), device=self.regions.device)
        return retrieval.evaluate_xattn(
            self.regions, self.words, self.lengths, ids, protocol=protocol, **xattn
        )

    def pooled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One l2-normalized code per image and per caption, the mean of its region or word
        codes: for what needs a single vector (continuity, latent-space figures), not retrieval."""
        mean_words = self.words.sum(dim=1) / self.lengths.unsqueeze(1).to(self.words.dtype)
        return mean_region_codes(self.regions), F.normalize(mean_words, dim=1)


@torch.no_grad()
def encode_split_xattn(
    model: SCAN,
    split: CaptionSplit,
    vocab: Vocabulary,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
) -> XattnCodes:
    """The region and word codes of every image and caption of ``split`` (which needs region
    features). The model is put in eval mode."""
    model.eval()
    features = split.require_regions()
    regions = [
        image_codes(model, features[start : start + batch_size], device)
        for start in range(0, split.num_images, batch_size)
    ]
    tokens, lengths = pad_captions([vocab.encode(c) for c in split.captions])
    words = torch.zeros(tokens.shape[0], tokens.shape[1], model.cfg.embed_size, device=device)
    for start in range(0, split.num_captions, batch_size):
        chunk = slice(start, start + batch_size)
        longest = int(lengths[chunk].max())
        words[chunk, :longest] = model.encode_captions(
            tokens[chunk, :longest].to(device), lengths[chunk].to(device)
        )
    return XattnCodes(torch.cat(regions), words, lengths.to(device))
