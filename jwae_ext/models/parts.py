"""What every model shares (docs/design.md, "The jWAE model"): the sizes, the decoders back out
of the latent space, the discriminator that matches the code distributions to one shared Gaussian
prior, and the jWAE terms built from them (:class:`JointModel`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from jwae_ext import ops
from jwae_ext.losses import LossConfig, quadratic_mmd
from jwae_ext.models.words import END, PAD, TEXT_ENCODERS, UNK, PretrainedVectors, WordEmbedding


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the networks. ``prior_sigma=None`` means 1/sqrt(embed_size); ``img_hidden=0``
    makes the image encoder and decoder single linear layers (VSE++'s precomp image encoder).
    ``vocab_size`` is the training vocabulary (the caption decoder's outputs); with pretrained
    word vectors (``vector_words`` rows of ``vector_dim``, :mod:`jwae_ext.models.words`) input
    ids extend past it. ``text_encoder``: the pooled models' caption encoder, a GRU or the mean
    of the word embeddings (:class:`~jwae_ext.models.jwae.TextEncoder`)."""

    img_dim: int
    vocab_size: int
    embed_size: int = 1024
    word_dim: int = 300
    img_hidden: int = 1024
    bidirectional: bool = False
    word_dropout: float = 0.2
    disc_hidden: int = 256
    prior_sigma: float | None = None
    text_encoder: str = "gru"
    vector_words: int = 0
    vector_dim: int = 0

    def __post_init__(self) -> None:
        for name in (
            "img_dim",
            "vocab_size",
            "embed_size",
            "word_dim",
            "disc_hidden",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.img_hidden, int) or self.img_hidden < 0:
            raise ValueError(
                f"ModelConfig.img_hidden must be an integer >= 0, got {self.img_hidden!r}"
            )
        if self.vocab_size <= UNK:
            raise ValueError(
                f"ModelConfig.vocab_size must exceed the 4 special tokens, got {self.vocab_size}"
            )
        if not 0.0 <= self.word_dropout < 1.0:
            raise ValueError(f"ModelConfig.word_dropout must be in [0, 1), got {self.word_dropout}")
        if self.prior_sigma is not None and not self.prior_sigma > 0:
            raise ValueError(f"ModelConfig.prior_sigma must be positive, got {self.prior_sigma}")
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(
                f"ModelConfig.text_encoder must be one of {TEXT_ENCODERS}, got "
                f"{self.text_encoder!r}"
            )
        for name in ("vector_words", "vector_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"ModelConfig.{name} must be an integer >= 0, got {value!r}")
        if (self.vector_words == 0) != (self.vector_dim == 0):
            raise ValueError(
                "ModelConfig.vector_words and vector_dim must both be 0 (no word vectors) or "
                f"both positive, got {self.vector_words} and {self.vector_dim}"
            )

    def word_embedding(self, vectors: PretrainedVectors | None) -> WordEmbedding:
        """A word embedding of this configuration over the model's shared ``vectors`` (which
        must be given exactly when the configuration has word vectors)."""
        if (vectors is None) != (self.vector_words == 0):
            raise ValueError(
                f"ModelConfig has {self.vector_words} word vectors, but the model was given "
                f"{'none' if vectors is None else 'vectors'}"
            )
        if vectors is not None and tuple(vectors.matrix.shape) != (
            self.vector_words,
            self.vector_dim,
        ):
            raise ValueError(
                f"word vectors of shape {tuple(vectors.matrix.shape)}, the ModelConfig expects "
                f"({self.vector_words}, {self.vector_dim})"
            )
        return WordEmbedding(self.vocab_size, self.word_dim, vectors)

    @property
    def sigma(self) -> float:
        """Standard deviation of the shared prior; by default prior samples have norm ~= 1."""
        return (
            self.prior_sigma if self.prior_sigma is not None else 1.0 / math.sqrt(self.embed_size)
        )


def _mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def image_layers(cfg: ModelConfig) -> list[int]:
    """The image encoder's layer sizes, features to code (the decoder's reversed)."""
    hidden = [cfg.img_hidden] if cfg.img_hidden else []
    return [cfg.img_dim, *hidden, cfg.embed_size]


class _Perceptron(nn.Module):
    """A ReLU MLP through the layer ``sizes``, held as ``net`` (the checkpoints' names)."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.net = _mlp(sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ImageDecoder(_Perceptron):
    """g_v: codes (B, d) -> reconstructed image features (B, D)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(image_layers(cfg)[::-1])


class TextDecoder(nn.Module):
    """g_t: a GRU language model conditioned on the caption code.

    Teacher forcing with shifted targets: from ``<start> w1 .. wn`` and the code it predicts
    ``w1 .. wn <end>`` (the official code predicts the token it is fed). The code sets the initial
    state and is concatenated to every input step; word dropout replaces input words with
    ``<unk>``. The vocabulary projection is not applied here: its weight and bias go to the fused
    linear cross-entropy so that the (tokens x vocabulary) logits never exist. It predicts the
    training vocabulary: a target word outside it (known only to the word vectors) is ``<unk>``.
    """

    def __init__(self, cfg: ModelConfig, vectors: PretrainedVectors | None = None) -> None:
        super().__init__()
        self.word_dropout = cfg.word_dropout
        self.embed = cfg.word_embedding(vectors)
        self.init_state = nn.Linear(cfg.embed_size, cfg.embed_size)
        self.gru = nn.GRU(cfg.word_dim + cfg.embed_size, cfg.embed_size, batch_first=True)
        self.vocab = nn.Linear(cfg.embed_size, cfg.vocab_size)

    def _drop_words(self, inputs: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.word_dropout > 0):
            return inputs
        words = inputs > END  # never replace <pad>, <start> or <end>
        drop = torch.rand(inputs.shape, device=inputs.device) < self.word_dropout
        return torch.where(words & drop, torch.full_like(inputs, UNK), inputs)

    def forward(
        self, codes: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return decoder states (B*(L-1), d) and their targets (B*(L-1),), <pad> where ignored."""
        inputs = self._drop_words(tokens[:, :-1])
        targets = tokens[:, 1:]
        targets = torch.where(targets < self.vocab.out_features, targets, UNK)
        steps = inputs.shape[1]
        x = torch.cat([self.embed(inputs), codes.unsqueeze(1).expand(-1, steps, -1)], dim=2)
        h0 = torch.tanh(self.init_state(codes)).unsqueeze(0)
        packed = pack_padded_sequence(
            x, (lengths - 1).cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.gru(packed, h0)
        states, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)
        return states.reshape(-1, states.shape[-1]), targets.reshape(-1)


class Discriminator(nn.Module):
    """D: codes (B, d) -> logits (B,) that a code is a sample of the prior."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(cfg.embed_size, cfg.disc_hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(cfg.disc_hidden, cfg.disc_hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(cfg.disc_hidden, 1),
        )

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.net(codes).squeeze(-1)


class JointModel(nn.Module):
    """The part every model shares: the image decoder ``img_dec``, caption decoder ``txt_dec``
    and discriminator ``disc`` (with its own optimizer), the prior, and the jWAE terms.
    Subclasses build their encoders first, then call :meth:`_add_jwae_networks` (the order fixes
    the random initialisation)."""

    cfg: ModelConfig

    def _add_jwae_networks(
        self, cfg: ModelConfig, vectors: PretrainedVectors | None = None
    ) -> None:
        self.img_dec = ImageDecoder(cfg)
        self.txt_dec = TextDecoder(cfg, vectors)
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

    def jwae_terms(
        self,
        cfg: LossConfig,
        features: torch.Tensor,
        z_img: torch.Tensor,
        z_txt: torch.Tensor,
        caption_codes: torch.Tensor,
        tokens: torch.Tensor,
        lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted jWAE regularizer of a batch of ``B = len(tokens)`` pairs and its
        unweighted terms (detached): ``z_img`` reconstructs ``features`` row by row (L1 or L2,
        summed, over B), ``caption_codes`` (B, d) condition the caption decoder (shifted
        targets, over B), and the rows of ``z_img`` and ``z_txt`` are matched to the prior.

        The discriminator runs on detached copies of its weights, so this loss never reaches
        them (the trainer's separate discriminator step does) and their ``requires_grad`` is
        left alone.
        """
        states, targets = self.txt_dec(caption_codes, tokens, lengths)
        w_rec, w_nll, w_img, w_txt = cfg.weights
        gan = cfg.prior == "gan"
        logits_img = logits_txt = None
        if gan:
            frozen = {name: p.detach() for name, p in self.disc.named_parameters()}
            logits_img, logits_txt = (
                functional_call(self.disc, frozen, (z,)) for z in (z_img, z_txt)
            )
        total, terms = ops.wae_loss(
            features,
            self.img_dec(z_img),
            states,
            self.txt_dec.vocab.weight,
            targets,
            logits_img,
            logits_txt,
            vocab_bias=self.txt_dec.vocab.bias,
            batch_size=tokens.shape[0],
            weights=(w_rec, w_nll, w_img, w_txt) if gan else (w_rec, w_nll, 0.0, 0.0),
            recon=cfg.recon,
            ignore_index=PAD,
        )
        if cfg.prior == "mmd":
            prior = self.sample_prior(z_img.shape[0], z_img)
            if z_txt.shape[0] != z_img.shape[0]:  # region and word codes come in other numbers
                prior_txt = self.sample_prior(z_txt.shape[0], z_txt)
            else:
                prior_txt = prior
            mmd_img, mmd_txt = ops.mmd_imq(z_img, prior), ops.mmd_imq(z_txt, prior_txt)
            if cfg.mmd_quadratic:  # one MMD, with the sum of the two kernels
                mmd_img = mmd_img + cfg.mmd_quadratic * quadratic_mmd(z_img, self.cfg.sigma)
                mmd_txt = mmd_txt + cfg.mmd_quadratic * quadratic_mmd(z_txt, self.cfg.sigma)
            total = total + w_img * mmd_img + w_txt * mmd_txt
            terms.update(mmd_img=mmd_img.detach(), mmd_txt=mmd_txt.detach())
        return total, terms

    def jwae_codes(
        self,
        images: torch.Tensor,
        z_img: torch.Tensor,
        z_txt: torch.Tensor,
        lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """What :meth:`jwae_terms` reads of encoded ``images`` (their codes ``z_img``) and
        captions (codes ``z_txt``, true ``lengths``): the features to reconstruct, the image and
        caption codes matched to the prior, and the caption codes the decoder reads."""
        raise NotImplementedError

    def unpaired_loss(
        self, images: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor, cfg: LossConfig
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """The jWAE terms alone of a batch whose images and captions need not correspond (no
        pair loss): the weighted total, its unweighted terms and the codes matched to the prior,
        as :meth:`jwae_terms` and ``autoencoder_loss`` return them."""
        z_img, z_txt = self.encode_images(images), self.encode_captions(tokens, lengths)
        features, z_img, z_txt, caption_codes = self.jwae_codes(images, z_img, z_txt, lengths)
        total, terms = self.jwae_terms(cfg, features, z_img, z_txt, caption_codes, tokens, lengths)
        return total, terms, (z_img, z_txt)

    def discriminator_loss(self, z_img: torch.Tensor, z_txt: torch.Tensor) -> torch.Tensor:
        """The discriminator's own loss: prior samples are real, the detached codes fake."""
        fake = torch.cat([z_img.detach(), z_txt.detach()])
        real = self.sample_prior(fake.shape[0], fake)
        return ops.discriminator_loss(self.disc(real), self.disc(fake))
