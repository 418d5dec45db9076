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
from imer.layers.dropout import FastDropout, use_fast_dropout
from imer.layers.packing import ModalityPacking
from imer.layers.plain_transformer import PlainTransformer
from imer.models import create_model, get_model_class
from imer.models.comp import CHOICES

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


def _batch(task: str, uses_context: bool, seed: int, absent: int | None = None):
    """A batch of 9 dialogues of 1..7 utterances at missing rate 0.5; ``absent``: a modality missing throughout."""
    ds = make_synthetic(task=task, num_groups=9, min_len=1, max_len=7, dims=DIMS, seed=seed)
    batcher = SplitBatcher(ds.features, ds.labels, ds.group_ids if uses_context else None, ds.order, ds.speakers)
    available = RandomMissing(0.5).apply(np.ones((len(ds), 3), bool), np.random.default_rng(seed))
    if absent is not None:
        available[:, absent] = False
        available[~available.any(1), (absent + 1) % 3] = True
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


def test_modality_packing_maps_between_utterances_and_modalities():
    mask = torch.tensor([[True, True, True], [True, False, False]])
    available = torch.tensor([[[True, False], [True, True], [False, True]], [[False, True], [True, True], [True, True]]])
    pk = ModalityPacking(available, mask)
    assert pk.count == 4 and torch.equal(pk.valid_rows, available[mask])
    rows = [torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0], [4.0], [5.0]])]  # audio at utterances 0, 1; text at 1, 2, 3
    stacked = pk.stack(rows)
    assert torch.equal(stacked[..., 0], torch.tensor([[1.0, 0.0], [2.0, 3.0], [0.0, 4.0], [0.0, 5.0]]))
    assert torch.equal(pk.select(1, stacked[:, 1]), rows[1])


def test_plain_transformer_packed_equals_padded():
    torch.manual_seed(0)
    plain = PlainTransformer(16, 2, 2, dropout=0.0)
    x = torch.randn(5, 7, 16, requires_grad=True)
    valid = torch.rand(5, 7) < 0.6
    valid[1] = False
    packing = Packing(valid)
    a = plain(x, valid)
    b = packing.unpack(plain.forward_packed(packing.pack(x), packing))
    assert torch.allclose(a, b, atol=TOLERANCE)
    ga = torch.autograd.grad(a.square().sum(), x)[0]
    gb = torch.autograd.grad(b.square().sum(), x)[0]
    assert torch.allclose(ga, gb, atol=TOLERANCE)


def test_fast_dropout_keeps_the_distribution_and_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.3), torch.nn.TransformerEncoderLayer(4, 1, 8, dropout=0.2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    use_fast_dropout(model)
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert isinstance(model[1], FastDropout) and model[1].p == 0.3 and isinstance(model[2].dropout1, FastDropout)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    x = torch.ones(200_000, requires_grad=True)
    y = model[1](x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() / 0.7)
    model.eval()
    assert torch.equal(model[1](x), x)


# ComP: every switch of CompConfig at its published value, the published preset and the ablations, in both
# stages; default and preset under both tasks, the others under one task each (alternating).
_SWITCHED = [{name: values[1]} for name, values in CHOICES.items()] + [{"prompts": False}, {"disentangle": False}, {"coordinator": False}, {"modulator": False},
                                                                       {"context_mean": True}]
_PUBLISHED = {name: values[1] for name, values in CHOICES.items()}
COMP_CASES = [({}, "classification"), ({}, "regression"), (_PUBLISHED, "classification"), (_PUBLISHED, "regression")] + [
    (variant, ("classification", "regression")[i % 2]) for i, variant in enumerate(_SWITCHED)
]


def _assert_close(a: torch.Tensor, b: torch.Tensor, what) -> None:
    a, b = a.detach(), b.detach()
    scale = max(1.0, float(a.abs().max())) if a.numel() else 1.0
    assert torch.allclose(a, b, atol=TOLERANCE * scale), (what, float((a - b).abs().max()))


def _case_id(case) -> str:
    variant, task = case
    name = "default" if not variant else "published" if len(variant) > 1 else ",".join(f"{k}={x}" for k, x in variant.items())
    return f"{name}-{task}"


@pytest.mark.parametrize("case", COMP_CASES, ids=_case_id)
def test_comp_packed_equals_padded_for_every_switch(case):
    """ComP's packed forward (streams, prompt generation, mixing, fusion, losses on packed rows) is the padded one.

    Same weights and batches (padding, random missing modalities, a modality absent from a whole batch);
    dropout off; warm-up and joint stage: predictions, per-modality predictions, prompts, received prompts,
    coordinator weights, every loss term and every gradient (the modulator's weights included) agree to 1e-5.
    """
    variant, task = case
    small = {"hidden": 16, "heads": 2, "prompt_size": 4, "num_prototypes": 3, "dropout": 0.0, "stage_epoch": 1}
    for seed, absent in ((0, None), (1, 0)):
        ds, batch = _batch(task, True, seed, absent)
        torch.manual_seed(seed)
        padded = create_model("comp", spec_of(ds), {**small, **variant, "packed": False})
        packed = create_model("comp", spec_of(ds), {**small, **variant, "packed": True})
        packed.load_state_dict(padded.state_dict())
        for epoch in (0, 1):
            for model in (padded, packed):
                model.on_epoch_start(epoch)
                model.train()
            out_a, loss_a, grad_a = _forward_backward(padded, batch, seed)
            out_b, loss_b, grad_b = _forward_backward(packed, batch, seed)
            keep, valid = batch.mask, out_a.aux["valid"]
            _assert_close(out_a.prediction[keep], out_b.prediction[keep], (epoch, "prediction"))
            _assert_close(out_a.aux["coordinator"][keep], out_b.aux["coordinator"][keep], (epoch, "coordinator"))
            for j, m in enumerate(ds.modalities):
                present = valid[..., j]
                _assert_close(out_a.modality_predictions[m][present], out_b.modality_predictions[m][present], (epoch, m))
                for key in (f"prompt1_{m}", f"prompt2_{m}"):
                    if key in out_a.aux:
                        _assert_close(out_a.aux[key][present], out_b.aux[key][present], (epoch, key))
                if f"received_{m}" in out_a.aux:
                    _assert_close(out_a.aux[f"received_{m}"][present], out_b.aux[f"received_{m}"][present], (epoch, "received", m))
            assert loss_a.keys() == loss_b.keys()
            for k in loss_a:
                assert loss_b[k] == pytest.approx(loss_a[k], rel=TOLERANCE, abs=TOLERANCE), (epoch, k)
            _assert_close(out_a.aux["modulator_weights"][valid], out_b.aux["modulator_weights"][valid], (epoch, "modulator"))
            assert grad_a.keys() == grad_b.keys()
            for name in grad_a:
                _assert_close(grad_a[name], grad_b[name], (epoch, name))
