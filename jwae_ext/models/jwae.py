"""The pooled jWAE networks (docs/design.md, "The jWAE model"): one code per image from its pooled
features, one per caption from a GRU, with the shared decoders and discriminator of
:class:`~jwae_ext.models.parts.JointModel`. Variants ``jwae-mh``, ``jwae-mse``, ``vse++``,
``vse0``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from jwae_ext import ops
from jwae_ext.losses import LossConfig, matching_loss
from jwae_ext.models.parts import JointModel, ModelConfig, _Perceptron, image_layers
from jwae_ext.models.words import PretrainedVectors


class ImageEncoder(_Perceptron):
    """f_v: precomputed image features (B, D) -> codes z_v (B, d), unnormalized."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(image_layers(cfg))


class TextEncoder(nn.Module):
    """f_t: token ids (B, L) with true lengths (B,) -> codes z_t (B, d), unnormalized.

    ``text_encoder="gru"``: a word embedding feeds a one-layer GRU with hidden size d; the code is
    the GRU state at each caption's last real token (a bi-GRU averages the final states of its two
    directions). ``"mean"``: the mean of the word embeddings over the caption's true length
    (``<start>`` and ``<end>`` included), mapped to d by one linear layer: a bag-of-words encoder
    with far fewer weights, for training sets of a few thousand captions.
    """

    def __init__(self, cfg: ModelConfig, vectors: PretrainedVectors | None = None) -> None:
        super().__init__()
        self.embed = cfg.word_embedding(vectors)
        self.kind = cfg.text_encoder
        if self.kind == "mean":
            self.mean_fc = nn.Linear(cfg.word_dim, cfg.embed_size)
        else:
            self.gru = nn.GRU(
                cfg.word_dim, cfg.embed_size, batch_first=True, bidirectional=cfg.bidirectional
            )

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.kind == "mean":
            real = torch.arange(tokens.shape[1], device=tokens.device) < lengths.unsqueeze(1)
            summed = (self.embed(tokens) * real.unsqueeze(-1)).sum(dim=1)
            return self.mean_fc(summed / lengths.unsqueeze(1).to(summed.dtype))
        packed = pack_padded_sequence(
            self.embed(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, final = self.gru(packed)  # (directions, B, d), states at the true lengths
        return final.mean(dim=0)


class JWAE(JointModel):
    """All pooled jWAE networks. The discriminator is a separate attribute with its own
    optimizer."""

    def __init__(self, cfg: ModelConfig, vectors: PretrainedVectors | None = None) -> None:
        """``vectors``: the pretrained word vectors every word embedding shares (exactly when
        ``cfg`` has them)."""
        super().__init__()
        self.cfg = cfg
        self.img_enc = ImageEncoder(cfg)
        self.txt_enc = TextEncoder(cfg, vectors)
        self._add_jwae_networks(cfg, vectors)

    def encode_images(self, features: torch.Tensor) -> torch.Tensor:
        return self.img_enc(features)

    def encode_captions(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.txt_enc(tokens, lengths)

    def autoencoder_loss(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        lengths: torch.Tensor,
        img_ids: torch.Tensor,
        cfg: LossConfig,
        hinge: Callable[..., torch.Tensor] = ops.mh_loss,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """The loss of encoders and decoders on one batch of pairs (images[i], tokens[i]).

        Returns the total, its unweighted terms (detached, for logging) and the codes
        (z_img, z_txt) for the discriminator step. ``hinge``: see
        :func:`jwae_ext.losses.matching_loss`.
        """
        z_img = self.encode_images(images)
        z_txt = self.encode_captions(tokens, lengths)
        match = matching_loss(cfg, z_img, z_txt, img_ids, hinge)
        terms = {"match": match.detach()}
        if not cfg.uses_wae:
            return match, terms, (z_img, z_txt)
        wae, wae_terms = self.jwae_terms(
            cfg, *self.jwae_codes(images, z_img, z_txt, lengths), tokens, lengths
        )
        terms.update(wae_terms)
        return match + wae, terms, (z_img, z_txt)

    def jwae_codes(
        self, images: torch.Tensor, z_img: torch.Tensor, z_txt: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        # One code per image and per caption: matched to the prior and decoded as they are.
        return images, z_img, z_txt, z_txt
