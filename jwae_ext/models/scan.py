"""SCAN (Lee et al., ECCV 2018) and SCAN+jWAE-MH (docs/design.md, "SCAN"): region and word codes
scored by stacked cross-attention, trained with the max-of-hinges loss on the batch's score
matrix; SCAN+jWAE-MH adds the jWAE terms on those codes.

- Image: ``(B, R, D)`` region features -> ``Linear(D, d)`` per region -> l2-normalized region
  codes ``(B, R, d)``.
- Text: word embedding (:class:`~jwae_ext.models.words.WordEmbedding`) -> GRU (bi-GRU by
  default: the two directions' outputs averaged) -> one l2-normalized code per word
  ``(B, L, d)``; padding is never attended (the operator reads only each caption's first
  ``length`` words).
- Score: :func:`jwae_ext.ops.xattn_scores` with :class:`XattnConfig`'s options.
- SCAN+jWAE-MH: every region code reconstructs its region feature (L1, lambda1); the caption is
  reconstructed with shifted targets from one caption code, the mean of its word codes (lambda2);
  every region code and every real word code is a sample the shared prior is matched against
  (lambda3, lambda4). The official code's per-word caption decoder, conditioned on the code of
  the very word it predicts, would leak the answer; this does not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from jwae_ext.losses import LossConfig, xattn_mh_loss
from jwae_ext.models.parts import JointModel, ModelConfig
from jwae_ext.models.words import PretrainedVectors

XATTN_DIRECTIONS = ("t2i", "i2t")
XATTN_AGGS = ("lse", "mean", "max", "sum")
XATTN_NORMS = ("clipped_l2norm", "l2norm", "clipped", "softmax", "no_norm")


@dataclass(frozen=True)
class XattnConfig:
    """The options of SCAN's cross-attention score (SCAN's flags and defaults: t2i, lambda_softmax
    9, LogSumExp with lambda_lse 6, clipped_l2norm)."""

    direction: str = "t2i"
    lambda_softmax: float = 9.0
    agg: str = "lse"
    lambda_lse: float = 6.0
    raw_feature_norm: str = "clipped_l2norm"

    def options(self) -> dict:
        """The keywords of :func:`jwae_ext.ops.xattn_scores`."""
        return dataclasses.asdict(self)


def masked_words(words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The real word codes of ``(B, L, d)`` padded codes, ``(sum(lengths), d)``."""
    steps = torch.arange(words.shape[1], device=words.device)
    return words[steps.unsqueeze(0) < lengths.unsqueeze(1)]


class RegionEncoder(nn.Module):
    """Region features ``(B, R, D)`` -> l2-normalized region codes ``(B, R, d)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.img_dim, cfg.embed_size)
        # SCAN's initialisation: Xavier-uniform weights, zero bias.
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc(regions), dim=-1)


class WordEncoder(nn.Module):
    """Token ids ``(B, L)`` with lengths ``(B,)`` -> l2-normalized word codes ``(B, L, d)`` (the
    padding positions hold zeros)."""

    def __init__(self, cfg: ModelConfig, vectors: PretrainedVectors | None = None) -> None:
        super().__init__()
        if cfg.text_encoder != "gru":
            raise ValueError(
                f"SCAN encodes every word in context: its text encoder is a GRU, got "
                f"text_encoder={cfg.text_encoder!r}"
            )
        self.embed = cfg.word_embedding(vectors)
        self.embed.reset_learned(-0.1, 0.1)  # SCAN's initialisation
        self.gru = nn.GRU(
            cfg.word_dim, cfg.embed_size, batch_first=True, bidirectional=cfg.bidirectional
        )

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(
            self.embed(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        if self.gru.bidirectional:
            half = out.shape[-1] // 2
            out = (out[..., :half] + out[..., half:]) / 2
        return F.normalize(out, dim=-1)


class SCAN(JointModel):
    """The SCAN networks, and for SCAN+jWAE-MH the region decoder, caption decoder and
    discriminator (present in every SCAN model, trained only by ``scan-jwae-mh``)."""

    def __init__(
        self, cfg: ModelConfig, xattn: XattnConfig, vectors: PretrainedVectors | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.xattn = xattn
        self.img_enc = RegionEncoder(cfg)
        self.txt_enc = WordEncoder(cfg, vectors)
        self._add_jwae_networks(cfg, vectors)

    def encode_images(self, regions: torch.Tensor) -> torch.Tensor:
        """Region features (B, R, D) -> l2-normalized region codes (B, R, d)."""
        return self.img_enc(regions)

    def encode_captions(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) -> l2-normalized word codes (B, L, d), zeros past each length."""
        return self.txt_enc(tokens, lengths)

    def autoencoder_loss(
        self,
        regions: torch.Tensor,
        tokens: torch.Tensor,
        lengths: torch.Tensor,
        img_ids: torch.Tensor,
        cfg: LossConfig,
        hinge: Callable[..., torch.Tensor] = xattn_mh_loss,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """The loss of encoders and decoders on one batch of pairs (regions[i], tokens[i]).

        Returns the total, its unweighted terms (detached, for logging) and the codes the prior is
        matched against, ``(region codes (B*R, d), real word codes (sum(lengths), d))``, for the
        discriminator step. ``hinge`` scores the codes and returns the max-of-hinges loss (the
        signature of :func:`jwae_ext.losses.xattn_mh_loss`; distributed training passes
        :func:`jwae_ext.losses_distributed.global_xattn_mh_loss`).
        """
        v = self.encode_images(regions)
        e = self.encode_captions(tokens, lengths)
        match = hinge(
            v,
            e,
            lengths,
            xattn=self.xattn.options(),
            margin=cfg.margin,
            max_violation=not cfg.warmup,
            img_ids=img_ids,
            txt_ids=img_ids,
        )
        features, z_img, z_txt, caption_codes = self.jwae_codes(regions, v, e, lengths)
        terms = {"match": match.detach()}
        if not cfg.uses_wae:
            return match, terms, (z_img, z_txt)
        wae, wae_terms = self.jwae_terms(
            cfg, features, z_img, z_txt, caption_codes, tokens, lengths
        )
        terms.update(wae_terms)
        return match + wae, terms, (z_img, z_txt)

    def jwae_codes(
        self, regions: torch.Tensor, v: torch.Tensor, e: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        # Every region reconstructs its own feature; every region code and real word code is a
        # sample of the prior; the caption decoder reads the mean word code (padding holds zeros).
        caption_codes = e.sum(dim=1) / lengths.unsqueeze(1).to(e.dtype)
        return (
            regions.reshape(-1, regions.shape[-1]),
            v.reshape(-1, v.shape[-1]),
            masked_words(e, lengths),
            caption_codes,
        )
