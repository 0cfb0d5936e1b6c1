"""Collapse detection: the spread of codes, and the trainer's per-epoch record and warning."""

import pytest
import torch
from test_train import tiny_trainer

from jwae_ext.collapse import code_spread, collapse_message
from jwae_ext.train import Trainer


def _random_codes(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _collapsed_codes(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Every code one direction, up to noise far below its norm (with a large norm, as the
    collapsed jwae-mse codes had)."""
    return 6.0 + 1e-3 * _random_codes(n, d, seed)


def test_spread_of_random_codes_is_isotropic_and_not_collapsed():
    spread = code_spread(_random_codes(2000, 64))
    assert spread.isotropic_std == pytest.approx(64**-0.5)
    assert spread.std == pytest.approx(spread.isotropic_std, rel=0.05)
    assert spread.near_duplicates == 0.0
    assert not spread.collapsed


def test_spread_of_one_direction_is_collapsed():
    spread = code_spread(_collapsed_codes(300, 64))
    assert spread.near_duplicates == 1.0
    assert spread.std < 0.01 * spread.isotropic_std
    assert spread.collapsed


def test_spread_does_not_depend_on_the_norms():
    codes = _random_codes(100, 16)
    scaled = codes * torch.rand(100, 1, generator=torch.Generator().manual_seed(1)).add(0.1)
    a, b = code_spread(scaled), code_spread(codes)
    assert a.std == pytest.approx(b.std, rel=1e-9)
    assert a.near_duplicates == b.near_duplicates


@pytest.mark.parametrize("shape", [(1, 8), (8,), (0, 8)])
def test_spread_names_a_bad_shape(shape):
    with pytest.raises(ValueError, match=r"shape \(N >= 2, d\)"):
        code_spread(torch.zeros(shape))


def test_message_names_the_epoch_and_what_collapsed():
    spreads = {
        "image": code_spread(_collapsed_codes(50, 8)),
        "caption": code_spread(_random_codes(50, 8)),
    }
    message = collapse_message(3, spreads)
    assert message.startswith("warning: epoch 3: the image codes collapsed")
    assert "caption" not in message
    spreads["caption"] = code_spread(_collapsed_codes(50, 8, seed=1))
    assert "the image and caption codes collapsed" in collapse_message(3, spreads)
    assert collapse_message(3, {"image": code_spread(_random_codes(50, 8))}) is None


def _trainer(tmp_path, encode) -> Trainer:
    trainer = tiny_trainer(tmp_path, eval_images=12)
    trainer.model.encode_images = encode
    return trainer


@pytest.mark.parametrize("collapsed", [True, False])
def test_trainer_logs_the_spread_and_warns_once_on_collapse(tmp_path, capsys, collapsed):
    make = _collapsed_codes if collapsed else _random_codes
    trainer = _trainer(tmp_path, lambda features: make(len(features), 16))
    records = []
    for epoch in (1, 2, 3):
        trainer.epoch = epoch
        records.append(trainer.validate())
    warnings = [line for line in capsys.readouterr().err.splitlines() if "collapsed" in line]
    if collapsed:
        assert len(warnings) == 1
        assert warnings[0].startswith("warning: epoch 1: the image codes collapsed")
    else:
        assert warnings == []
    for record in records:
        assert set(record["codes"]) == {"image", "caption"}
        image = record["codes"]["image"]
        assert set(image) == {"std", "isotropic_std", "near_duplicates"}
        assert (image["near_duplicates"] == 1.0) == collapsed
        assert {"i2t", "t2i", "rsum"} <= set(record)
