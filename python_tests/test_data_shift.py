"""The shift strength of the embedded style "b" (jwae_ext.data.shift, ``synthetic-b@S``)."""

import dataclasses

import numpy as np
import pytest
from test_data_synthetic import GOLDEN, _digest

from jwae_ext.config import data_kind
from jwae_ext.data import load_split, synthetic_split, tokenize
from jwae_ext.data.captions import PHRASINGS
from jwae_ext.data.render import STYLES
from jwae_ext.data.shift import shifted_phrasing, shifted_style


def test_default_strength_is_todays_style_b_bit_for_bit():
    assert shifted_style(1.0) is STYLES["b"] and shifted_phrasing(1) is PHRASINGS["b"]
    assert _digest(synthetic_split("b", "test", seed=0, num_images=6, shift=1.0)) == GOLDEN["b"]
    named = load_split("synthetic-b@1", "test", num_images=6)
    assert _digest(named) == GOLDEN["b"]


def test_strength_zero_draws_and_words_like_style_a():
    assert dataclasses.replace(shifted_style(0.0), name="a") == STYLES["a"]
    zero, a = shifted_phrasing(0.0), PHRASINGS["a"]
    assert zero.shapes["circle"].options == a.shapes["circle"].options
    assert zero.p_full_stop == a.p_full_stop
    # Style b's own words ("canvas", "figures", ...) never appear at strength 0.
    words_b = {w for c in synthetic_split("b", "dev", num_images=200).captions for w in tokenize(c)}
    words_a = {w for c in synthetic_split("a", "dev", num_images=400).captions for w in tokenize(c)}
    zero_words = {
        w for c in load_split("synthetic-b@0", "dev", num_images=200).captions for w in tokenize(c)
    }
    assert words_b - words_a  # the styles do have words of their own
    assert not zero_words & (words_b - words_a)


def test_strength_moves_the_features_away_from_style_a():
    a = np.asarray(synthetic_split("a", "dev", num_images=60).images).mean(axis=0)
    gaps = [
        np.abs(
            np.asarray(load_split(f"synthetic-b@{s}", "dev", num_images=60).images).mean(0) - a
        ).sum()
        for s in (0, 1, 2)
    ]
    assert gaps[0] < gaps[1] < gaps[2]


def test_half_strength_lies_between_the_styles():
    half, a, b = shifted_style(0.5), STYLES["a"], STYLES["b"]
    assert min(a.noise, b.noise) <= half.noise <= max(a.noise, b.noise)
    assert half.stroke == pytest.approx((a.stroke + b.stroke) / 2)
    assert shifted_phrasing(0.5).p_full_stop == pytest.approx(
        (PHRASINGS["a"].p_full_stop + PHRASINGS["b"].p_full_stop) / 2
    )


@pytest.mark.parametrize("name", ["synthetic-b@-1", "synthetic-b@x", "synthetic-b@nan"])
def test_bad_strengths_are_refused_by_name(name):
    with pytest.raises(ValueError, match="shift strength after '@' must be a finite number"):
        load_split(name, "dev", num_images=2)


def test_style_a_has_no_shift_and_shifted_names_are_embedded():
    with pytest.raises(ValueError, match="style 'a' is the reference"):
        synthetic_split("a", "dev", num_images=2, shift=0.5)
    assert data_kind("synthetic-b@0.5") == "embedded"
    assert load_split("synthetic-b@0.5", "dev", num_images=2).name == "synthetic-b@0.5/dev"
