"""The localization networks: every variant overfits a tiny set; CITE's negatives; padding."""

import pytest
import torch

from jwae_ext.data import Vocabulary
from jwae_ext.grounding.batches import GroundingDataset, collate_grounding
from jwae_ext.grounding.boxes import rank_proposals
from jwae_ext.grounding.models import (
    GROUNDING_VARIANTS,
    GroundingConfig,
    GroundingLossConfig,
    GroundingModel,
    _sample_negatives,
)
from jwae_ext.grounding.synthetic import grounding_split


@pytest.fixture(scope="module")
def tiny():
    split = grounding_split("a", "train", num_images=6, num_proposals=10)
    vocab = Vocabulary.build(split.phrases.text, threshold=1)
    dataset = GroundingDataset(split, vocab)
    return split, vocab, collate_grounding([dataset[i] for i in range(len(dataset))])


def _model(variant: str, split, vocab) -> GroundingModel:
    torch.manual_seed(0)
    sizes = {"embed_size": 24, "img_hidden": 24, "concept_dim": 8, "word_dim": 8}
    return GroundingModel(GroundingConfig(variant, split.feature_dim, len(vocab), **sizes))


@pytest.mark.parametrize("variant", GROUNDING_VARIANTS)
def test_every_variant_overfits_a_tiny_set(tiny, variant):
    split, vocab, batch = tiny
    model = _model(variant, split, vocab)
    optimizer = torch.optim.Adam(model.autoencoder_parameters(), lr=1e-2)
    cfg = GroundingLossConfig()
    first = None
    for _ in range(100):
        loss, terms, _ = model.grounding_loss(batch, cfg)
        first = terms["match"] if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert ("recon" in terms) == (variant in ("jwae-mse", "cite-jwae"))
    assert terms["match"] < 0.2 * first
    model.eval()
    with torch.no_grad():
        top = rank_proposals(model(batch), batch.num_boxes[batch.phrase_image], 1)
    # What the losses ask: positives above negatives. Proposals in between are unlabelled.
    has_positive = (batch.iou >= cfg.pos_iou).any(dim=1)
    top_is_no_negative = batch.iou.gather(1, top).squeeze(1) >= cfg.neg_iou
    assert top_is_no_negative[has_positive].float().mean() >= 0.95


def test_cite_negatives_are_sampled_below_the_threshold():
    iou = torch.tensor([[0.9, 0.1, 0.2, 0.0, 0.35, 0.05], [0.1, 0.2, 0.1, 0.0, 0.0, 0.0]])
    real = torch.tensor([[True] * 5 + [False], [True] * 6])
    positive = real & (iou >= 0.6)
    negative = _sample_negatives(iou, real, positive, GroundingLossConfig())
    assert negative[0].sum() == 2 and not negative[0, [0, 4, 5]].any()  # 2 per positive, < 0.3
    assert not negative[1].any()  # no positive, no negative
    few = torch.tensor([[0.9, 0.35, 0.36, 0.1, 0.7, 0.2]])
    every = torch.ones_like(few, dtype=torch.bool)
    wide = _sample_negatives(few, every, few >= 0.6, GroundingLossConfig())
    assert wide.sum() == 4 and not wide[0, [0, 4]].any()  # too few < 0.3: CITE takes < 0.4


def test_padding_never_changes_the_scores_of_real_proposals(tiny):
    split, vocab, batch = tiny
    model = _model("cite-jwae", split, vocab).eval()
    with torch.no_grad():
        before = model(batch)
        padded = batch._replace(regions=batch.regions.clone())
        padded.regions[:, -1] = 1e6  # the last proposal of every image becomes padding
        padded = padded._replace(num_boxes=batch.num_boxes - 1)
        after = model(padded)
    assert torch.allclose(before[:, :-1], after[:, :-1])
    top = rank_proposals(after, padded.num_boxes[padded.phrase_image], 10)
    assert (top != split.num_proposals - 1).all()


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"GroundingConfig\.variant"):
        GroundingConfig("vse++", 10, 10)
    with pytest.raises(ValueError, match=r"GroundingConfig\.num_concepts"):
        GroundingConfig("cite", 10, 10, num_concepts=0)
    with pytest.raises(ValueError, match="neg_iou <= pos_iou"):
        GroundingLossConfig(pos_iou=0.2, neg_iou=0.3)
