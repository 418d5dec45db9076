"""Missing-modality protocols: exact rates, >= 1 modality kept, fixed and fresh masks."""

import numpy as np
import pytest

from imer.data import FixedCondition, RandomMissing, all_conditions, fixed_mask, max_missing_rate, missing_fraction, parse_condition
from imer.errors import ConfigError


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.3, 0.5, 0.6])
def test_random_rate_is_exact_and_keeps_one(rate):
    full = np.ones((1000, 3), bool)
    mask = RandomMissing(rate).apply(full, np.random.default_rng(0))
    assert abs(missing_fraction(mask) - rate) < 1e-3
    assert mask.any(axis=1).all()


def test_every_modality_dropped_evenly():
    mask = RandomMissing(0.5).apply(np.ones((6000, 3), bool), np.random.default_rng(1))
    per = 1 - mask.mean(axis=0)
    assert np.allclose(per, 0.5, atol=0.03)


def test_rate_above_maximum_is_stated_not_hidden():
    full = np.ones((300, 3), bool)
    with pytest.warns(UserWarning, match="above the achievable maximum 0.667"):
        mask = RandomMissing(0.7).apply(full, np.random.default_rng(0))
    assert missing_fraction(mask) == pytest.approx(max_missing_rate(3))
    assert (mask.sum(axis=1) == 1).all()


def test_rate_counts_data_that_is_already_missing():
    available = np.ones((100, 2), bool)
    available[:20, 0] = False
    mask = RandomMissing(0.25).apply(available, np.random.default_rng(0))
    assert not (mask & ~available).any()
    assert missing_fraction(mask) == pytest.approx(0.25)
    assert mask.any(axis=1).all()


def test_invalid_rate():
    with pytest.raises(ConfigError):
        RandomMissing(1.5)


def test_fixed_masks_are_reproducible_and_purpose_specific():
    full = np.ones((200, 3), bool)
    a = fixed_mask(RandomMissing(0.4), full, seed=0, purpose="mosi/test")
    b = fixed_mask(RandomMissing(0.4), full, seed=0, purpose="mosi/test")
    c = fixed_mask(RandomMissing(0.4), full, seed=1, purpose="mosi/test")
    d = fixed_mask(RandomMissing(0.4), full, seed=0, purpose="mosi/valid")
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, d)


def test_conditions_cover_every_nonempty_subset():
    conds = all_conditions(["audio", "text", "video"])
    assert [c.label for c in conds] == ["a", "t", "v", "at", "av", "tv", "atv"]
    mask = parse_condition("tv", ["audio", "text", "video"]).apply(np.ones((5, 3), bool), np.random.default_rng())
    assert mask.tolist() == [[False, True, True]] * 5
    assert parse_condition("full", ["audio", "text"]).kept == (0, 1)
    assert parse_condition("audio,video", ["audio", "text", "video"]).label == "av"
    with pytest.raises(ConfigError, match="unknown condition"):
        parse_condition("x", ["audio", "text"])


def test_condition_labels_with_clashing_initials():
    conds = all_conditions(["text", "tone"])
    assert [c.label for c in conds] == ["text", "tone", "text+tone"]


def test_condition_that_empties_an_utterance_is_refused():
    available = np.array([[True, False], [True, True]])
    with pytest.raises(ConfigError, match="no modality"):
        FixedCondition((1,), "t").apply(available, np.random.default_rng())
