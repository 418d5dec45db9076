"""One suite over every registered method x every missing pattern x both tasks.

Each method must: produce the right shapes without NaN (also on raw, unscaled
inputs), give every trainable parameter a gradient in some training stage,
ignore the feature values of missing modalities, and predict an utterance
the same way whichever other dialogues share its batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imer.data import RandomMissing, SplitBatcher, make_synthetic
from imer.experiments.run import spec_of
from imer.models import create_model, list_models

METHODS = list_models()
DIMS = {"audio": 6, "text": 8, "video": 5}
PATTERNS = ["full", "audio", "text", "video", "audio+text", "random"]
FINAL_EPOCH = 10**6


def _data(task):
    return make_synthetic(task=task, num_groups=6, min_len=2, max_len=5, dims=DIMS, seed=11)


def _mask(pattern: str, n: int) -> np.ndarray:
    if pattern == "full":
        return np.ones((n, 3), bool)
    if pattern == "random":
        return RandomMissing(0.5).apply(np.ones((n, 3), bool), np.random.default_rng(0))
    keep = [m in pattern.split("+") for m in DIMS]
    return np.tile(np.array(keep), (n, 1))


def _setup(method: str, task: str, pattern: str, seed: int = 0):
    ds = _data(task)
    torch.manual_seed(seed)
    model = create_model(method, spec_of(ds), {"hidden": 16})
    batcher = SplitBatcher(ds.features, ds.labels, ds.group_ids if model.uses_context else None, ds.order, ds.speakers)
    batch = next(batcher.batches(_mask(pattern, len(ds)), batch_size=64))
    return model, batch, batcher, ds


def _run(model, batch, features=None):
    return model(features or batch.features, batch.available, batch.mask, batch.speakers)


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("method", METHODS)
def test_forward_shapes_and_finite(method, pattern, task):
    model, batch, _, ds = _setup(method, task, pattern)
    for epoch in (0, FINAL_EPOCH):
        model.on_epoch_start(epoch)
        model.train()
        out = _run(model, batch)
        b, length = batch.mask.shape
        expected = (b, length, ds.num_classes) if task == "classification" else (b, length)
        assert tuple(out.prediction.shape) == expected
        assert torch.isfinite(out.prediction[batch.mask]).all()
        if out.modality_predictions is not None:
            assert set(out.modality_predictions) == set(DIMS)
        terms = model.loss(out, batch.labels, batch.mask, batch.available)
        assert terms and all(torch.isfinite(v) for v in terms.values()), terms


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("method", METHODS)
def test_every_parameter_gets_a_gradient_in_some_stage(method, task):
    model, batch, _, _ = _setup(method, task, "full")
    reached: set[str] = set()
    for epoch in (0, FINAL_EPOCH):
        model.on_epoch_start(epoch)
        model.train()
        model.zero_grad(set_to_none=True)
        out = _run(model, batch)
        sum(model.loss(out, batch.labels, batch.mask, batch.available).values()).backward()
        reached |= {n for n, p in model.named_parameters() if p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0}
    missing = sorted(n for n, _ in model.named_parameters() if n not in reached)
    assert not missing, f"{method}: parameters never trained: {missing}"


@pytest.mark.parametrize("pattern", ["audio", "text", "audio+text", "random"])
@pytest.mark.parametrize("method", METHODS)
def test_missing_values_never_influence_outputs(method, pattern):
    model, batch, _, _ = _setup(method, "classification", pattern)
    model.on_epoch_start(FINAL_EPOCH)
    model.eval()
    with torch.no_grad():
        reference = _run(model, batch)
        garbage = {}
        for j, m in enumerate(DIMS):
            noise = torch.randn_like(batch.features[m]) * 1e3
            garbage[m] = torch.where(batch.available[..., j : j + 1], batch.features[m], noise)
        changed = _run(model, batch, garbage)
    keep = batch.mask
    torch.testing.assert_close(changed.prediction[keep], reference.prediction[keep])
    for m, pred in (reference.modality_predictions or {}).items():
        j = list(DIMS).index(m)
        present = keep & batch.available[..., j]
        torch.testing.assert_close(changed.modality_predictions[m][present], pred[present])


@pytest.mark.parametrize("method", METHODS)
def test_eval_prediction_independent_of_batch_composition(method):
    model, _, batcher, ds = _setup(method, "regression", "random")
    model.on_epoch_start(FINAL_EPOCH)
    model.eval()
    mask = _mask("random", len(ds))
    with torch.no_grad():
        together = {}
        for batch in batcher.batches(mask, batch_size=64):
            out = _run(model, batch)
            together.update(zip(batch.index[batch.mask].tolist(), out.prediction[batch.mask].tolist()))
        alone = {}
        for batch in batcher.batches(mask, batch_size=1):
            out = _run(model, batch)
            alone.update(zip(batch.index[batch.mask].tolist(), out.prediction[batch.mask].tolist()))
    assert together.keys() == alone.keys()
    np.testing.assert_allclose([together[k] for k in sorted(together)], [alone[k] for k in sorted(alone)], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_finite_on_raw_large_inputs(method):
    model, batch, _, _ = _setup(method, "regression", "random")
    model.on_epoch_start(FINAL_EPOCH)
    model.train()
    raw = {m: x * 300.0 + 150.0 * batch.available[..., j : j + 1] for j, (m, x) in enumerate(batch.features.items())}
    out = _run(model, batch, raw)
    total = sum(model.loss(out, batch.labels, batch.mask, batch.available).values())
    total.backward()
    assert torch.isfinite(total)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
