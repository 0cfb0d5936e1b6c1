"""Phrase-localization networks (docs/design.md, "Phrase localization"): a phrase and its image's
proposals in, one score per proposal out; the best-scored proposal is the answer.

Every variant encodes a phrase with a GRU over word embeddings learned here (the retrieval
models' :class:`~jwae_ext.models.TextEncoder`) and has two branches, FC-BN-ReLU-FC, that map the
phrase and each proposal's features into one space of ``embed_size``:

- ``embnet`` (Embedding Network, Wang et al.): l2-normalized branch outputs, cosine score,
  trained with a ranking loss: every positive proposal of a phrase above every negative one by a
  margin;
- ``cite`` (CITE, Plummer et al., ECCV 2018): l2-normalized branches, their elementwise product
  through FC-BN-ReLU and ``num_concepts`` concept branches (FC-BN-ReLU each) weighted by a
  softmax over concepts predicted from the phrase (an L1 penalty on those logits), then one
  linear score; logistic loss on positives and sampled negatives;
- ``jwae-mse``: the branches are the jWAE encoders of one latent space; the jWAE terms
  (proposal-feature reconstruction, phrase reconstruction, prior matching) plus the squared
  distance of a phrase's code to its ground-truth proposal's code; the nearest code wins;
- ``cite-jwae``: CITE with the jWAE terms on its phrase and proposal embeddings.

The jWAE terms are :meth:`~jwae_ext.models.JointModel.jwae_terms` (the fused operators) with the
shared decoders and discriminator, present in every variant (trained only by the jWAE ones).
Positives are proposals with IoU >= ``pos_iou`` (0.6), negatives IoU < ``neg_iou`` (0.3;
CITE widens to 0.4 where too few), ``neg_ratio`` negatives per positive, as CITE's code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from jwae_ext.losses import PRIORS, RECONS, LossConfig
from jwae_ext.models import JointModel, ModelConfig, TextEncoder

__all__ = [
    "GROUNDING_VARIANTS",
    "GroundingBatch",
    "GroundingConfig",
    "GroundingLossConfig",
    "GroundingModel",
]

GROUNDING_VARIANTS = ("embnet", "cite", "jwae-mse", "cite-jwae")
_CITE_VARIANTS = ("cite", "cite-jwae")
_JWAE_VARIANTS = ("jwae-mse", "cite-jwae")
_SCORE_CHUNK = 16384  # phrase-proposal pairs per joint-network pass when scoring everything


class GroundingBatch(NamedTuple):
    """Images with their proposals and the phrases about them."""

    regions: torch.Tensor  # (B, P, D) float32 proposal features (padding past num_boxes)
    num_boxes: torch.Tensor  # (B,) int64
    tokens: torch.Tensor  # (n, L) int64 phrase token ids, <pad>-padded
    lengths: torch.Tensor  # (n,) int64
    phrase_image: torch.Tensor  # (n,) int64: the image (0..B-1) of each phrase
    iou: torch.Tensor  # (n, P) float32: IoU of each phrase's ground truth with each proposal

    def to(self, device: torch.device) -> GroundingBatch:
        return GroundingBatch(*(t.to(device) for t in self))


@dataclass(frozen=True)
class GroundingConfig:
    """Sizes of a localization network (CITE's defaults: embedding 1024 = 4 x 256, hidden 1024,
    concept embedding 256, 4 concepts). ``embed_size`` is also the jWAE latent size;
    ``img_hidden`` is the width of every FC-BN-ReLU layer (CITE's hidden size) and of the
    proposal decoder."""

    variant: str
    region_dim: int
    vocab_size: int
    embed_size: int = 1024
    concept_dim: int = 256
    num_concepts: int = 4
    word_dim: int = 300
    img_hidden: int = 1024
    word_dropout: float = 0.2
    disc_hidden: int = 256
    prior_sigma: float | None = None

    def __post_init__(self) -> None:
        if self.variant not in GROUNDING_VARIANTS:
            raise ValueError(
                f"GroundingConfig.variant must be one of {GROUNDING_VARIANTS}, got {self.variant!r}"
            )
        for name in ("concept_dim", "num_concepts"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"GroundingConfig.{name} must be a positive integer, got {value!r}"
                )
        self.joint()  # checks the rest

    def joint(self) -> ModelConfig:
        """The sizes of the parts shared with the retrieval models (phrase GRU, decoders,
        discriminator): the proposal features play the image features."""
        shared = {f.name for f in fields(ModelConfig)} & {f.name for f in fields(self)}
        return ModelConfig(
            img_dim=self.region_dim, **{name: getattr(self, name) for name in shared}
        )


@dataclass(frozen=True)
class GroundingLossConfig:
    """The objective's options (defaults: CITE's code and the jWAE defaults)."""

    margin: float = 0.2  # embnet's ranking margin
    pos_iou: float = 0.6
    neg_iou: float = 0.3
    neg_ratio: int = 2
    concept_l1: float = 5e-5
    mse_weight: float = 1.0
    # The jWAE terms' prior, reconstruction error and four lambdas.
    jwae: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.neg_iou <= self.pos_iou <= 1:
            raise ValueError(
                f"need 0 <= neg_iou <= pos_iou <= 1, got {self.neg_iou} and {self.pos_iou}"
            )
        if self.neg_ratio < 1:
            raise ValueError(f"neg_ratio must be >= 1, got {self.neg_ratio}")
        if self.jwae.prior not in PRIORS or self.jwae.recon not in RECONS:
            raise ValueError(f"unknown prior or recon in {self.jwae}")


class Branch(nn.Sequential):
    """FC-BN-ReLU-FC (CITE's embedding branch), optionally l2-normalized."""

    def __init__(self, fan_in: int, hidden: int, fan_out: int, *, normalize: bool) -> None:
        super().__init__(fc_bn_relu(fan_in, hidden), nn.Linear(hidden, fan_out))
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return F.normalize(out, dim=-1) if self.normalize else out


def fc_bn_relu(fan_in: int, fan_out: int) -> nn.Sequential:
    """CITE's ``add_fc``: a linear layer, batch normalization, ReLU."""
    return nn.Sequential(nn.Linear(fan_in, fan_out), nn.BatchNorm1d(fan_out), nn.ReLU())


class PhraseCodes(NamedTuple):
    """A batch of encoded phrases: ``states`` (n, d) the GRU's final states, ``codes`` (n, d)
    the phrase branch's output, ``concepts`` (n, K) CITE's concept logits (None otherwise)."""

    states: torch.Tensor
    codes: torch.Tensor
    concepts: torch.Tensor | None


class GroundingModel(JointModel):
    """Every localization variant (see the module docstring)."""

    def __init__(self, cfg: GroundingConfig) -> None:
        super().__init__()
        self.grounding = cfg
        self.cfg = cfg.joint()
        self.variant = cfg.variant
        d = cfg.embed_size
        self.txt_enc = TextEncoder(self.cfg)
        self.phrase_branch = Branch(d, cfg.img_hidden, d, normalize=True)
        self.region_branch = Branch(cfg.region_dim, cfg.img_hidden, d, normalize=True)
        if cfg.variant in _CITE_VARIANTS:
            self.concept_logits = Branch(d, cfg.img_hidden, cfg.num_concepts, normalize=False)
            self.joint_fc = fc_bn_relu(d, cfg.img_hidden)
            self.concepts = nn.ModuleList(
                fc_bn_relu(cfg.img_hidden, cfg.concept_dim) for _ in range(cfg.num_concepts)
            )
            self.score_fc = nn.Linear(cfg.concept_dim, 1)
        self._add_jwae_networks(self.cfg)

    @property
    def uses_wae(self) -> bool:
        return self.variant in _JWAE_VARIANTS

    # -- encoders ----------------------------------------------------------------------------

    def encode_phrases(self, tokens: torch.Tensor, lengths: torch.Tensor) -> PhraseCodes:
        states = self.txt_enc(tokens, lengths)
        concepts = self.concept_logits(states) if self.variant in _CITE_VARIANTS else None
        return PhraseCodes(states, self.phrase_branch(states), concepts)

    def encode_regions(self, regions: torch.Tensor, num_boxes: torch.Tensor) -> torch.Tensor:
        """``(B, P, D)`` proposal features -> ``(B, P, d)`` codes, zeros for padding (which never
        enters the batch normalization's statistics)."""
        real = _real(num_boxes, regions.shape[1])
        codes = regions.new_zeros(*regions.shape[:2], self.grounding.embed_size)
        codes[real] = self.region_branch(regions[real])
        return codes

    # -- scores --------------------------------------------------------------------------------

    def pair_scores(
        self, phrases: PhraseCodes, which: torch.Tensor, regions: torch.Tensor
    ) -> torch.Tensor:
        """Scores ``(m,)`` of the pairs (phrase ``which[i]``, proposal code ``regions[i]``)."""
        p = phrases.codes[which]
        if self.variant == "embnet":
            return (p * regions).sum(dim=1)
        if self.variant == "jwae-mse":
            return -(p - regions).pow(2).sum(dim=1)
        joint = self.joint_fc(p * regions)
        weights = torch.softmax(phrases.concepts[which], dim=1)
        mixed = sum(
            w.unsqueeze(1) * c(joint) for w, c in zip(weights.T, self.concepts, strict=True)
        )
        return self.score_fc(mixed).squeeze(1)

    def score_all(
        self, phrases: PhraseCodes, phrase_image: torch.Tensor, region_codes: torch.Tensor
    ) -> torch.Tensor:
        """``(n, P)`` scores of every phrase against every proposal of its image (padding
        included: mask it with the image's ``num_boxes``), in chunks of pairs."""
        n, p = phrase_image.shape[0], region_codes.shape[1]
        which = torch.arange(n, device=phrase_image.device).repeat_interleave(p)
        flat = region_codes[phrase_image].reshape(n * p, -1)
        scores = [
            self.pair_scores(phrases, which[i : i + _SCORE_CHUNK], flat[i : i + _SCORE_CHUNK])
            for i in range(0, n * p, _SCORE_CHUNK)
        ]
        return torch.cat(scores).reshape(n, p)

    def forward(self, batch: GroundingBatch) -> torch.Tensor:
        """``(n, P)`` scores of the batch's phrases against their images' proposals."""
        phrases = self.encode_phrases(batch.tokens, batch.lengths)
        regions = self.encode_regions(batch.regions, batch.num_boxes)
        return self.score_all(phrases, batch.phrase_image, regions)

    # -- the objective -------------------------------------------------------------------------

    def grounding_loss(
        self, batch: GroundingBatch, cfg: GroundingLossConfig
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """The loss of the batch, its unweighted terms (detached, for logging) and the codes
        ``(proposal codes, phrase codes)`` that the discriminator step matches to the prior."""
        phrases = self.encode_phrases(batch.tokens, batch.lengths)
        regions = self.encode_regions(batch.regions, batch.num_boxes)
        real_boxes = _real(batch.num_boxes, batch.regions.shape[1])  # (B, P)
        real = real_boxes[batch.phrase_image]  # (n, P)
        positive = real & (batch.iou >= cfg.pos_iou)
        if self.variant == "embnet":
            match = _ranking_loss(
                self.score_all(phrases, batch.phrase_image, regions),
                positive,
                real & (batch.iou < cfg.neg_iou),
                cfg.margin,
            )
            terms = {"match": match}
        elif self.variant == "jwae-mse":
            match = self._mse(phrases, batch, regions, positive)
            terms = {"match": match}
            match = cfg.mse_weight * match
        else:
            negative = _sample_negatives(batch.iou, real, positive, cfg)
            phrase_idx, proposal = torch.nonzero(positive | negative, as_tuple=True)
            picked = regions[batch.phrase_image[phrase_idx], proposal]
            scores = self.pair_scores(phrases, phrase_idx, picked)
            labels = positive[phrase_idx, proposal].to(scores.dtype) * 2 - 1
            logistic = F.softplus(-labels * scores).mean() if len(scores) else scores.sum()
            concept = phrases.concepts.abs().sum() / max(len(phrase_idx), 1)
            match = logistic + cfg.concept_l1 * concept
            terms = {"match": logistic, "concept_l1": concept}
        if not self.uses_wae:
            return match, _detached(terms), (regions[real_boxes], phrases.codes)
        rows = (batch.phrase_image, self._random_proposal(batch))
        z_img, z_txt = regions[rows], phrases.codes
        wae, wae_terms = self.jwae_terms(
            cfg.jwae, batch.regions[rows], z_img, z_txt, z_txt, batch.tokens, batch.lengths
        )
        return match + wae, {**_detached(terms), **wae_terms}, (z_img, z_txt)

    def _mse(
        self,
        phrases: PhraseCodes,
        batch: GroundingBatch,
        regions: torch.Tensor,
        positive: torch.Tensor,
    ) -> torch.Tensor:
        """Mean squared distance of each phrase's code to its ground-truth proposal's (the
        positive of highest IoU), over the phrases that have a positive."""
        has = positive.any(dim=1)
        best = torch.where(positive, batch.iou, torch.full_like(batch.iou, -1)).argmax(dim=1)
        target = regions[batch.phrase_image[has], best[has]]
        if not len(target):
            return phrases.codes.sum() * 0
        return (phrases.codes[has] - target).pow(2).sum(dim=1).mean()

    def _random_proposal(self, batch: GroundingBatch) -> torch.Tensor:
        """One real proposal per phrase, drawn uniformly from its image's: the rows whose codes
        the jWAE terms reconstruct and match to the prior (as many as the phrases, and every
        proposal in turn over the epochs)."""
        counts = batch.num_boxes[batch.phrase_image].clamp(min=1)
        draw = torch.rand(counts.shape, device=counts.device)
        return (draw * counts).long().clamp(max=batch.regions.shape[1] - 1)


def _real(num_boxes: torch.Tensor, proposals: int) -> torch.Tensor:
    return torch.arange(proposals, device=num_boxes.device) < num_boxes.unsqueeze(1)


def _detached(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.detach() for name, value in terms.items()}


def _ranking_loss(
    scores: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float
) -> torch.Tensor:
    """Mean over every (phrase, positive, negative) triple of ``[margin + s_neg - s_pos]_+``."""
    hinge = (margin + scores.unsqueeze(1) - scores.unsqueeze(2)).clamp(min=0)  # [n, pos, neg]
    pairs = positive.unsqueeze(2) & negative.unsqueeze(1)
    return (hinge * pairs).sum() / pairs.sum().clamp(min=1)


def _sample_negatives(
    iou: torch.Tensor, real: torch.Tensor, positive: torch.Tensor, cfg: GroundingLossConfig
) -> torch.Tensor:
    """CITE's negatives: ``neg_ratio`` per positive of each phrase, drawn at random among its
    proposals with IoU < ``neg_iou``, or < 0.4 where those are too few."""
    wanted = positive.sum(dim=1, keepdim=True) * cfg.neg_ratio
    strict = real & (iou < cfg.neg_iou)
    loose = real & (iou < max(cfg.neg_iou, 0.4)) & ~positive
    pool = torch.where(strict.sum(dim=1, keepdim=True) >= wanted, strict, loose)
    keys = torch.where(pool, torch.rand(iou.shape, device=iou.device), torch.full_like(iou, 2.0))
    rank = keys.argsort(dim=1).argsort(dim=1)
    return pool & (rank < wanted)
