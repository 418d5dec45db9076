"""The opt-in dialogue-mean context (``context_mean``) and the sign-aware loss term (``sign_weight``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imer.data import RandomMissing, SplitBatcher, make_synthetic
from imer.errors import ConfigError
from imer.experiments.run import spec_of
from imer.layers import dialogue_mean
from imer.models import create_model, get_model_class
from imer.models.base import sign_loss

CONTEXT_METHODS = ["early-fusion", "promise"]
ALL_CONTEXT = [(m, {}) for m in (*CONTEXT_METHODS, "gcnet", "comp")] + [("early-fusion", {"context_source": "own"})]
DIMS = {"audio": 6, "text": 8, "video": 5}
LATE = 10**6


def _setup(method: str, seed: int = 0, **options):
    ds = make_synthetic(task="regression", num_groups=6, min_len=2, max_len=5, dims=DIMS, seed=11)
    torch.manual_seed(seed)
    model = create_model(method, spec_of(ds), {"hidden": 16, "context_mean": True, **options})
    batcher = SplitBatcher(ds.features, ds.labels, ds.group_ids if model.uses_context else None, ds.order, ds.speakers)
    mask = RandomMissing(0.5).apply(np.ones((len(ds), 3), bool), np.random.default_rng(0))
    model.on_epoch_start(LATE)
    model.eval()
    return model, batcher, mask


def test_dialogue_mean_uses_observed_entries_only():
    values = torch.randn(2, 4, 2, 3)
    valid = torch.tensor([[[1, 0], [1, 0], [0, 0], [1, 0]], [[0, 1], [0, 1], [0, 0], [0, 0]]], dtype=torch.bool)
    out = dialogue_mean(values, valid)
    assert out.shape == (2, 4, 2, 4)
    expected = values[0, [0, 1, 3], 0].mean(0)
    for pos in range(4):  # the same context at every position of a dialogue
        torch.testing.assert_close(out[0, pos, 0, :3], expected)
    assert out[0, 0, 0, 3] == 1 and out[0, 0, 1, 3] == 0
    assert torch.all(out[0, :, 1] == 0)  # never observed -> exactly 0, bit 0
    torch.testing.assert_close(out[1, 2, 1, :3], values[1, :2, 1].mean(0))
    garbage = torch.where(valid.unsqueeze(-1), values, torch.full_like(values, 1e6))
    torch.testing.assert_close(dialogue_mean(garbage, valid), out)


@pytest.mark.parametrize("method", CONTEXT_METHODS)
def test_switch_makes_the_model_read_dialogues(method):
    cls = get_model_class(method)
    assert not cls.reads_dialogues({}) and not cls.reads_dialogues({"context_mean": False})
    assert cls.reads_dialogues({"context_mean": True})
    model, _, _ = _setup(method)
    assert model.uses_context


@pytest.mark.parametrize(("method", "options"), ALL_CONTEXT)
def test_context_changes_predictions_but_missing_values_do_not(method, options):
    model, batcher, mask = _setup(method, **options)
    batch = next(batcher.batches(mask, batch_size=64))
    with torch.no_grad():
        reference = model(batch.features, batch.available, batch.mask, batch.speakers).prediction
        garbage = {m: torch.where(batch.available[..., j : j + 1], x, torch.randn_like(x) * 1e3) for j, (m, x) in enumerate(batch.features.items())}
        torch.testing.assert_close(model(garbage, batch.available, batch.mask, batch.speakers).prediction[batch.mask], reference[batch.mask])
        # an *observed* value of another utterance of the same dialogue changes the prediction of utterance 0
        b, j = 0, int(batch.available[0, 1].int().argmax())
        assert batch.mask[b, 1] and batch.available[b, 1, j]
        name = list(batch.features)[j]
        moved = dict(batch.features)
        moved[name] = batch.features[name].clone()
        moved[name][b, 1] += 5.0
        changed = model(moved, batch.available, batch.mask, batch.speakers).prediction
    assert not torch.allclose(changed[b, 0], reference[b, 0])


@pytest.mark.parametrize(("method", "options"), ALL_CONTEXT)
def test_context_prediction_independent_of_batch_composition(method, options):
    model, batcher, mask = _setup(method, **options)
    with torch.no_grad():
        results = []
        for size in (64, 1):
            found = {}
            for batch in batcher.batches(mask, batch_size=size):
                out = model(batch.features, batch.available, batch.mask, batch.speakers).prediction
                found.update(zip(batch.index[batch.mask].tolist(), out[batch.mask].tolist()))
            results.append([found[k] for k in sorted(found)])
    np.testing.assert_allclose(results[0], results[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("method", "options"), ALL_CONTEXT)
def test_context_parameters_all_train(method, options):
    model, batcher, mask = _setup(method, **options)
    batch = next(batcher.batches(mask, batch_size=64))
    reached = set()
    for epoch in (0, LATE):
        model.on_epoch_start(epoch)
        model.train()
        model.zero_grad(set_to_none=True)
        out = model(batch.features, batch.available, batch.mask, batch.speakers)
        sum(model.loss(out, batch.labels, batch.mask, batch.available).values()).backward()
        reached |= {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert not sorted(n for n, _ in model.named_parameters() if n not in reached)


def test_sign_loss_values():
    score = torch.tensor([2.0, -2.0, 0.0, 5.0])
    label = torch.tensor([1.5, 1.5, 0.0, -0.2])
    per = sign_loss(score, label)
    torch.testing.assert_close(per, torch.nn.functional.softplus(torch.tensor([-2.0, 2.0, 0.0, 5.0])) * torch.tensor([1.0, 1.0, 0.0, 1.0]))
    assert per[2] == 0  # zero labels count for acc2 neither way


def test_sign_weight_adds_to_the_regression_loss():
    model, batcher, mask = _setup("early-fusion")
    batch = next(batcher.batches(mask, batch_size=64))
    out = model(batch.features, batch.available, batch.mask, batch.speakers)
    plain = model.task_loss(out.prediction, batch.labels, batch.mask)
    model.config.sign_weight = 0.5
    weighted = model.task_loss(out.prediction, batch.labels, batch.mask)
    keep = batch.mask
    extra = 0.5 * sign_loss(out.prediction[keep], batch.labels[keep].float()).mean()
    torch.testing.assert_close(weighted, plain + extra)


def test_own_context_source_adds_its_own_projection_only():
    shared, _, _ = _setup("early-fusion")
    own, _, _ = _setup("early-fusion", context_source="own")
    extra = {n for n, _ in own.named_parameters()} - {n for n, _ in shared.named_parameters()}
    assert extra and all(n.startswith("context_embed.") for n in extra)
    with pytest.raises(ConfigError, match="context_source: unknown value 'video'; choose one of shared, own"):
        _setup("early-fusion", context_source="video")


@pytest.mark.parametrize("context", [False, True])
def test_comp_context_brings_the_videos_text_to_an_utterance_without_text(context):
    """In ComP's warm-up nothing joins modalities across utterances: an utterance that kept only its audio ignores
    the other utterances' text, unless ``context_mean`` gives the final layer the video's mean of each modality."""
    ds = make_synthetic(task="regression", num_groups=6, min_len=3, max_len=5, dims=DIMS, seed=11)
    torch.manual_seed(0)
    model = create_model("comp", spec_of(ds), {"hidden": 16, "context_mean": context})
    batcher = SplitBatcher(ds.features, ds.labels, ds.group_ids, ds.order, ds.speakers)
    available = np.ones((len(ds), 3), bool)
    batch = next(batcher.batches(available, batch_size=64))
    first = int(batch.index[0, 0])
    available[first] = [True, False, False]  # utterance 0 of the first video keeps its audio only
    batch = next(batcher.batches(available, batch_size=64))
    model.on_epoch_start(0)
    model.eval()
    text = batch.features["text"].clone()
    text[0, 1] += 5.0  # the text of another utterance of the same video
    with torch.no_grad():
        reference = model(batch.features, batch.available, batch.mask, batch.speakers).prediction[0, 0]
        moved = model({**batch.features, "text": text}, batch.available, batch.mask, batch.speakers).prediction[0, 0]
    assert not bool(model.prompting) and batch.available[0, 0].tolist() == [True, False, False]
    assert torch.allclose(moved, reference) != context
