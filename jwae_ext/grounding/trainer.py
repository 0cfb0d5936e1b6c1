"""Training a phrase-localization model (``python -m jwae_ext.train --task grounding``): the
run loop of :class:`jwae_ext.training.RunLoop` (run folder, checkpoints, resume, progress bar,
``metrics.jsonl``) on images with their proposals and phrases, validated by the ``val`` split's
R@1 and tested on ``test``."""

from __future__ import annotations

import torch

from jwae_ext.config import TrainConfig
from jwae_ext.data import Vocabulary
from jwae_ext.grounding.batches import GroundingDataset, collate_grounding
from jwae_ext.grounding.data import GroundingSplit
from jwae_ext.grounding.evaluation import evaluate_grounding, format_grounding
from jwae_ext.grounding.models import (
    GroundingBatch,
    GroundingConfig,
    GroundingLossConfig,
    GroundingModel,
)
from jwae_ext.grounding.sources import load_grounding
from jwae_ext.losses import LossConfig
from jwae_ext.training import RunLoop

__all__ = ["GroundingTrainer", "grounding_config", "grounding_loss_config"]


def grounding_config(cfg: TrainConfig, region_dim: int, vocab_size: int) -> GroundingConfig:
    """The network sizes a :class:`~jwae_ext.config.TrainConfig` asks for."""
    return GroundingConfig(
        variant=cfg.variant,
        region_dim=region_dim,
        vocab_size=vocab_size,
        embed_size=cfg.embed_size,
        concept_dim=cfg.concept_dim,
        num_concepts=cfg.concepts,
        word_dim=cfg.word_dim,
        img_hidden=cfg.img_hidden,
        word_dropout=cfg.word_dropout,
        disc_hidden=cfg.disc_hidden,
        prior_sigma=cfg.prior_sigma,
    )


def grounding_loss_config(cfg: TrainConfig) -> GroundingLossConfig:
    """The objective a :class:`~jwae_ext.config.TrainConfig` asks for."""
    return GroundingLossConfig(
        margin=cfg.margin,
        pos_iou=cfg.pos_iou,
        neg_iou=cfg.neg_iou,
        neg_ratio=cfg.neg_ratio,
        concept_l1=cfg.concept_l1,
        mse_weight=cfg.mse_weight,
        jwae=LossConfig(
            prior=cfg.prior, weights=cfg.weights, recon=cfg.recon, mmd_quadratic=cfg.mmd_quadratic
        ),
    )


class GroundingTrainer(RunLoop):
    """One phrase-localization training run (one process: data-parallel grounding is not
    supported)."""

    model: GroundingModel

    def _build(self) -> None:
        cfg = self.cfg
        if self.ctx.enabled:
            raise ValueError("--task grounding trains in one process; run it without torchrun")
        self.train_split = self._load("train", cfg.train_images)
        self.dev_split = self._load("val", cfg.eval_images)
        if cfg.resume:
            self.vocab = Vocabulary.load(self.dir / "vocab.json")
        else:
            self.vocab = Vocabulary.build(self.train_split.phrases.text, cfg.vocab_threshold)
        self.dataset = GroundingDataset(self.train_split, self.vocab)
        if not len(self.dataset):
            raise ValueError(f"--data {cfg.data}: the train split has no phrase with a box")
        self.collate = collate_grounding
        self.model_cfg = grounding_config(cfg, self.train_split.feature_dim, len(self.vocab))
        self.loss_cfg = grounding_loss_config(cfg)
        self.model = GroundingModel(self.model_cfg)

    def _load(self, split: str, num_images: int | None) -> GroundingSplit:
        cfg = self.cfg
        return load_grounding(
            cfg.data, split, seed=cfg.seed, num_images=num_images, num_proposals=cfg.proposals
        )

    def batch_loss(
        self, batch: GroundingBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        return self.model.grounding_loss(batch.to(self.device), self.loss_cfg)

    @property
    def uses_discriminator(self) -> bool:
        return self.model.uses_wae and self.cfg.prior == "gan"

    def _evaluate(self, split: GroundingSplit) -> dict:
        return evaluate_grounding(
            self.model, split, self.vocab, batch_size=self.cfg.batch_size, device=self.device
        )

    def validate(self) -> dict:
        return self._evaluate(self.dev_split)

    def selection_score(self, dev: dict) -> float:
        return dev["r1"]

    def describe(self, dev: dict) -> str:
        return f"dev R@1 {dev['r1']:.1f}  R@5 {dev['r5']:.1f}"

    def test_split(self) -> GroundingSplit | None:
        try:
            return self._load("test", self.cfg.eval_images)
        except FileNotFoundError:
            return None

    def evaluate(self, split: GroundingSplit) -> dict:
        return {"data": split.name, **self._evaluate(split)}

    def describe_run(self) -> str:
        phrases = len(self.train_split.phrases)
        return (
            f"{len(self.dataset)} training images with {phrases} phrases, vocabulary "
            f"{len(self.vocab)}"
        )

    def format_result(self, result: dict) -> str:
        return f"\ntest, best dev epoch:\n{format_grounding(result)}"
