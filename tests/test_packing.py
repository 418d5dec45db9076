"""Packed computation (present utterances only) equals the padded one, and the packing helper is exact.

The tolerance measured here is what "packed differs from padded only by float
reordering" means in numbers: outputs and gradients agree to 1e-5 (relative
to their scale) on random batches with padding and missing modalities.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imer.data import RandomMissing, SplitBatcher, make_synthetic
from imer.experiments.run import spec_of
from imer.layers import MaskedTransformer
from imer.layers.packing import Packing
from imer.models import create_model, get_model_class

DIMS = {"audio": 6, "text": 8, "video": 5}
PACKED_METHODS = ["comp", "momke"]
TOLERANCE = 1e-5


def test_packing_round_trip_and_rows():
    valid = torch.tensor([[True, False, True, False], [False, False, False, False], [True, True, True, True]])
    x = torch.arange(12 * 2, dtype=torch.float32).reshape(3, 4, 2)
    packing = Packing(valid)
    flat = packing.pack(x)
    assert packing.count == 6 and torch.equal(flat, x[valid])
    assert torch.equal(packing.unpack(flat), torch.where(valid.unsqueeze(-1), x, torch.zeros(())))
    rows = packing.to_rows(flat)
    assert rows.shape == (2, 4, 2)  # the empty dialogue has no row; width = most valid entries
    assert torch.equal(rows[0, :2], x[0, [0, 2]]) and torch.equal(rows[0, 2:], torch.zeros(2, 2))
    assert torch.equal(packing.row_padding, torch.tensor([[False, False, True, True], [False, False, False, False]]))
    assert torch.equal(packing.from_rows(rows), flat)


def test_masked_transformer_packed_equals_padded():
    torch.manual_seed(0)
    padded = MaskedTransformer(16, 2, 2, dropout=0.0, packed=False)
    packed = MaskedTransformer(16, 2, 2, dropout=0.0, packed=True)
    packed.load_state_dict(padded.state_dict())
    x = torch.randn(5, 7, 16, requires_grad=True)
    valid = torch.rand(5, 7) < 0.6
    valid[1] = False  # a dialogue where the modality is missing throughout
    for model in (padded, packed):
        model.train()
    a, b = padded(x, valid), packed(x, valid)
    assert torch.allclose(a, b, atol=TOLERANCE)
    assert torch.equal(b[~valid], torch.zeros_like(b[~valid]))
    ga = torch.autograd.grad(a.square().sum(), x)[0]
    gb = torch.autograd.grad(b.square().sum(), x)[0]
    assert torch.allclose(ga, gb, atol=TOLERANCE)


def _batch(task: str, uses_context: bool, seed: int):
    ds = make_synthetic(task=task, num_groups=9, min_len=1, max_len=7, dims=DIMS, seed=seed)
    batcher = SplitBatcher(ds.features, ds.labels, ds.group_ids if uses_context else None, ds.order, ds.speakers)
    available = RandomMissing(0.5).apply(np.ones((len(ds), 3), bool), np.random.default_rng(seed))
    return ds, next(batcher.batches(available, batch_size=64))


def _forward_backward(model, batch, seed):
    torch.manual_seed(seed)  # identical draws for anything random in the losses
    model.zero_grad(set_to_none=True)
    out = model(batch.features, batch.available, batch.mask, batch.speakers)
    terms = model.loss(out, batch.labels, batch.mask, batch.available)
    sum(terms.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, {k: float(v.detach()) for k, v in terms.items()}, grads


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("method", PACKED_METHODS)
def test_packed_model_equals_padded_model(method, task):
    """Same weights, same batch (padding + random missing modalities), dropout off: same outputs, losses, gradients."""
    for seed in (0, 1):
        ds, batch = _batch(task, get_model_class(method).uses_context, seed)
        torch.manual_seed(seed)
        padded = create_model(method, spec_of(ds), {"hidden": 16, "dropout": 0.0, "packed": False})
        packed = create_model(method, spec_of(ds), {"hidden": 16, "dropout": 0.0, "packed": True})
        packed.load_state_dict(padded.state_dict())
        for epoch in (0, 10**6):  # first and last stage
            for model in (padded, packed):
                model.on_epoch_start(epoch)
                model.train()
            out_a, loss_a, grad_a = _forward_backward(padded, batch, seed)
            out_b, loss_b, grad_b = _forward_backward(packed, batch, seed)
            keep = batch.mask
            assert torch.allclose(out_a.prediction[keep], out_b.prediction[keep], atol=TOLERANCE), (method, epoch)
            for j, m in enumerate(ds.modalities):
                if out_a.modality_predictions:
                    present = keep & batch.available[..., j]
                    assert torch.allclose(out_a.modality_predictions[m][present], out_b.modality_predictions[m][present], atol=TOLERANCE)
            assert loss_a.keys() == loss_b.keys()
            for k in loss_a:
                assert loss_b[k] == pytest.approx(loss_a[k], rel=TOLERANCE, abs=TOLERANCE), (method, epoch, k)
            assert grad_a.keys() == grad_b.keys()
            for name in grad_a:
                scale = max(1.0, float(grad_a[name].abs().max()))
                assert torch.allclose(grad_a[name], grad_b[name], atol=TOLERANCE * scale), (method, epoch, name)
