"""context-fusion (issue 24): the neighbour context by hand, and what an utterance without text reads."""

from __future__ import annotations

import math

import pytest
import torch

from imer.layers.context import neighbour_means
from imer.models import DataSpec, create_model


def test_neighbour_means_by_hand():
    values = torch.tensor([[[[1.0]], [[2.0]], [[4.0]], [[8.0]]]])  # [B=1, L=4, M=1, H=1]
    valid = torch.tensor([[[True], [True], [False], [True]]])  # utterance 2 lacks the modality
    out = neighbour_means(values, valid, [1.0, 0.0])  # [1, 4, 1, 4]: (mean, log mass) per scale
    e1, e2, e3 = math.exp(-1), math.exp(-2), math.exp(-3)
    # utterance 0: others observed are 1 (d=1, value 2) and 3 (d=3, value 8)
    assert out[0, 0, 0, 0].item() == pytest.approx((e1 * 2 + e3 * 8) / (e1 + e3))
    assert out[0, 0, 0, 1].item() == pytest.approx(math.log1p(e1 + e3))
    assert out[0, 0, 0, 2].item() == pytest.approx((2 + 8) / 2) and out[0, 0, 0, 3].item() == pytest.approx(math.log(3))
    # utterance 2 (its own value never counts, observed or not): neighbours 1 (d=1) and 3 (d=1), and 0 (d=2)
    assert out[0, 2, 0, 0].item() == pytest.approx((e2 * 1 + e1 * 2 + e1 * 8) / (e2 + 2 * e1))
    assert out[0, 2, 0, 2].item() == pytest.approx((1 + 2 + 8) / 3)
    # the absent value 4.0 never enters anything
    changed = values.clone()
    changed[0, 2, 0, 0] = 1e6
    assert torch.equal(neighbour_means(changed, valid, [1.0, 0.0]), out)


def test_a_modality_nobody_else_has_gives_zero_context():
    values = torch.randn(2, 3, 2, 5)
    valid = torch.tensor([[[True, True], [True, False], [True, False]], [[True, False], [False, True], [True, False]]])
    out = neighbour_means(values, valid, [2.0, 0.0]).reshape(2, 3, 2, 2, 6)
    # dialogue 0, modality 1: only utterance 0 has it -> utterance 0's context of modality 1 is empty
    assert torch.equal(out[0, 0, 1], torch.zeros(2, 6))
    # dialogue 1, modality 1: only utterance 1 has it -> its own context is empty, the others see it
    assert torch.equal(out[1, 1, 1], torch.zeros(2, 6)) and (out[1, 0, 1, :, -1] > 0).all()


def test_an_utterance_without_text_reads_its_neighbours_text():
    torch.manual_seed(0)
    spec = DataSpec(("audio", "text"), (3, 4), "regression", 1)
    model = create_model("context-fusion", spec, {"hidden": 8}).eval()
    features = {"audio": torch.randn(1, 6, 3), "text": torch.randn(1, 6, 4)}
    available = torch.ones(1, 6, 2, dtype=torch.bool)
    available[0, 2, 1] = False  # utterance 2 kept only its audio
    mask = torch.ones(1, 6, dtype=torch.bool)
    before = model(features, available, mask).prediction[0, 2]
    near = {m: x.clone() for m, x in features.items()}
    near["text"][0, 3] += 3.0  # its neighbour's text
    assert model(near, available, mask).prediction[0, 2] != before
    hidden = {m: x.clone() for m, x in features.items()}
    hidden["text"][0, 2] += 3.0  # its own (absent) text
    assert model(hidden, available, mask).prediction[0, 2] == before
