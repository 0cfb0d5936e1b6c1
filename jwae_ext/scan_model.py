"""SCAN (Lee et al., ECCV 2018) and SCAN+jWAE-MH (docs/design.md, "SCAN"): region and word codes
scored by stacked cross-attention, trained with the max-of-hinges loss on the batch's score
matrix; SCAN+jWAE-MH adds the jWAE terms on those codes.

- Image: ``(B, R, D)`` region features -> ``Linear(D, d)`` per region -> l2-normalized region
  codes ``(B, R, d)``.
- Text: word embedding -> GRU (bi-GRU by default: the two directions' outputs averaged) -> one
  l2-normalized code per word ``(B, L, d)``; padding is never attended (the operator reads only
  each caption's first ``length`` words).
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

from jwae_ext import ops
from jwae_ext.losses import LossConfig
from jwae_ext.models import PAD, Discriminator, ModelConfig, TextDecoder, _mlp

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

    def scores(
        self, regions: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """``(N_i, N_c)`` scores of every image's region codes against every caption's words."""
        return ops.xattn_scores(regions, words, lengths, **dataclasses.asdict(self))


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

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.word_dim, padding_idx=PAD)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)  # SCAN's initialisation
        with torch.no_grad():
            self.embed.weight[PAD].zero_()
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


class SCAN(nn.Module):
    """The SCAN networks, and for SCAN+jWAE-MH the region decoder, caption decoder and
    discriminator (present in every SCAN model, trained only by ``scan-jwae-mh``)."""

    def __init__(self, cfg: ModelConfig, xattn: XattnConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.xattn = xattn
        self.img_enc = RegionEncoder(cfg)
        self.txt_enc = WordEncoder(cfg)
        self.img_dec = _mlp([cfg.embed_size, cfg.img_hidden, cfg.img_dim])
        self.txt_dec = TextDecoder(cfg)
        self.disc = Discriminator(cfg)

    def autoencoder_parameters(self) -> list[nn.Parameter]:
        """Everything the main optimizer trains: encoders and decoders, not the discriminator."""
        return [p for name, p in self.named_parameters() if not name.startswith("disc.")]

    def sample_prior(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """n samples of the shared prior N(0, sigma^2 I_d), on ``like``'s device and dtype."""
        return (
            torch.randn(n, self.cfg.embed_size, device=like.device, dtype=like.dtype)
            * self.cfg.sigma
        )

    def encode_images(self, regions: torch.Tensor) -> torch.Tensor:
        return self.img_enc(regions)

    def encode_captions(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.txt_enc(tokens, lengths)

    def autoencoder_loss(
        self,
        regions: torch.Tensor,
        tokens: torch.Tensor,
        lengths: torch.Tensor,
        img_ids: torch.Tensor,
        cfg: LossConfig,
        score_loss: Callable[..., torch.Tensor] = ops.mh_loss_from_scores,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """The loss of encoders and decoders on one batch of pairs (regions[i], tokens[i]).

        Returns the total, its unweighted terms (detached, for logging) and the codes the prior is
        matched against, ``(region codes (B*R, d), real word codes (sum(lengths), d))``, for the
        discriminator step. ``score_loss`` turns the batch's codes into the max-of-hinges loss
        (keywords of :func:`jwae_ext.ops.mh_loss_from_scores`); distributed training passes one
        that scores local captions against every rank's images and the reverse.
        """
        v = self.encode_images(regions)
        e = self.encode_captions(tokens, lengths)
        match = score_loss(
            self.xattn.scores(v, e, lengths),
            margin=cfg.margin,
            max_violation=not cfg.warmup,
            img_ids=img_ids,
            txt_ids=img_ids,
        )
        z_img, z_txt = v.reshape(-1, v.shape[-1]), masked_words(e, lengths)
        terms = {"match": match.detach()}
        if not cfg.uses_wae:
            return match, terms, (z_img, z_txt)

        caption_codes = e.sum(dim=1) / lengths.unsqueeze(1).to(e.dtype)  # padding holds zeros
        states, targets = self.txt_dec(caption_codes, tokens, lengths)
        w_rec, w_nll, w_img, w_txt = cfg.weights
        gan = cfg.prior == "gan"
        logits_img, logits_txt = (self.disc(z_img), self.disc(z_txt)) if gan else (None, None)
        features = regions.reshape(-1, regions.shape[-1])
        wae, wae_terms = ops.wae_loss(
            features,
            self.img_dec(z_img),
            states,
            self.txt_dec.vocab.weight,
            targets,
            logits_img,
            logits_txt,
            vocab_bias=self.txt_dec.vocab.bias,
            batch_size=regions.shape[0],
            weights=(w_rec, w_nll, w_img, w_txt) if gan else (w_rec, w_nll, 0.0, 0.0),
            recon=cfg.recon,
            ignore_index=PAD,
        )
        total = match + wae
        terms.update(wae_terms)
        if cfg.prior == "mmd":
            mmd_img = ops.mmd_imq(z_img, self.sample_prior(z_img.shape[0], z_img))
            mmd_txt = ops.mmd_imq(z_txt, self.sample_prior(z_txt.shape[0], z_txt))
            total = total + w_img * mmd_img + w_txt * mmd_txt
            terms.update(mmd_img=mmd_img.detach(), mmd_txt=mmd_txt.detach())
        return total, terms, (z_img, z_txt)

    def discriminator_loss(self, z_img: torch.Tensor, z_txt: torch.Tensor) -> torch.Tensor:
        """The discriminator's own loss: prior samples are real, the detached codes fake."""
        fake = torch.cat([z_img.detach(), z_txt.detach()])
        real = self.sample_prior(fake.shape[0], fake)
        return ops.discriminator_loss(self.disc(real), self.disc(fake))
