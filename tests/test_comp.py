"""ComP: the properties issue 3 asks for, on small synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from imer.data import SplitBatcher, make_synthetic
from imer.experiments.config import build_run_config
from imer.experiments.run import spec_of, train
from imer.models import create_model
from imer.models.comp import Comp, bernoulli_js, modulator_weights

SMALL = {"hidden": 16, "heads": 2, "prompt_size": 4, "num_prototypes": 3, "dropout": 0.1}


def _data(task: str = "classification", dims: dict[str, int] | None = None):
    return make_synthetic(task=task, num_groups=12, min_len=3, max_len=7, dims=dims, seed=1)


def _model(ds, **overrides) -> Comp:
    torch.manual_seed(0)
    model = create_model("comp", spec_of(ds), {**SMALL, "single_stage": True, **overrides})
    assert isinstance(model, Comp)
    return model


def _batch(ds, available: np.ndarray | None = None, size: int = 6, groups: list[int] | None = None):
    batcher = SplitBatcher(ds.features, ds.labels, ds.group_ids, ds.order, None)
    available = ds.available if available is None else available
    if groups is None:
        return next(iter(batcher.batches(available, size)))
    table = batcher.table[groups]
    table = table[:, : int((table >= 0).sum(1).max())]
    return batcher._gather(torch.as_tensor(table), torch.as_tensor(available))


def _drop(ds, rate: float, seed: int = 0) -> np.ndarray:
    """Availability with random missing entries, at least one modality per utterance."""
    rng = np.random.default_rng(seed)
    avail = rng.random(ds.available.shape) > rate
    avail[~avail.any(1), rng.integers(0, avail.shape[1])] = True
    avail[~avail.any(1), 0] = True
    return avail


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_eval_prediction_independent_of_batch_composition(task: str) -> None:
    ds = _data(task)
    model = _model(ds).eval()
    avail = _drop(ds, 0.4)
    alone = _batch(ds, avail, groups=[2])
    crowd = _batch(ds, avail, groups=[5, 2, 7, 0])  # longer and shorter neighbours -> padding differs
    with torch.no_grad():
        a = model(alone.features, alone.available, alone.mask)
        c = model(crowd.features, crowd.available, crowd.mask)
    n = int(alone.mask[0].sum())
    torch.testing.assert_close(a.prediction[0, :n], c.prediction[1, :n], atol=1e-5, rtol=1e-4)
    for m in model.modalities:
        torch.testing.assert_close(a.modality_predictions[m][0, :n], c.modality_predictions[m][1, :n], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_missing_modality_values_never_matter(task: str) -> None:
    ds = _data(task, dims={"a": 5, "b": 6, "c": 7, "d": 4})
    model = _model(ds).eval()
    batch = _batch(ds, _drop(ds, 0.5), size=5)
    garbage = {m: x.clone() for m, x in batch.features.items()}
    for j, m in enumerate(model.modalities):
        missing = ~batch.available[..., j]
        garbage[m][missing] = torch.randn_like(garbage[m][missing]) * 1e4
    with torch.no_grad():
        clean = model(batch.features, batch.available, batch.mask)
        dirty = model(garbage, batch.available, batch.mask)
    torch.testing.assert_close(clean.prediction, dirty.prediction)
    for m in model.modalities:
        torch.testing.assert_close(clean.modality_predictions[m], dirty.modality_predictions[m])
    coord, valid = clean.aux["coordinator"], clean.aux["valid"]
    assert torch.all(coord[~valid] == 0)
    torch.testing.assert_close(coord.sum(-1)[batch.mask], torch.ones(int(batch.mask.sum())))
    for j, m in enumerate(model.modalities):
        for level in ("1", "2"):
            assert torch.all(clean.aux[f"prompt{level}_{m}"][~valid[..., j]] == 0), "a missing modality gave a prompt"
        others = [i for i in range(len(model.modalities)) if i != j]
        received = clean.aux[f"received_{m}"]  # level-2 prompts (carried + regenerated) that m gets from the others
        assert torch.all(received[~valid[..., others]] == 0), "a missing modality's carried prompt reached another"
        assert received[valid[..., others]].abs().sum() > 0


def test_missing_modality_prompt_does_not_reach_others() -> None:
    """With modality j missing, the other modalities' outputs equal those of a model whose j-prompt is zero."""
    ds = _data()
    model = _model(ds, momentum=0.5).eval()
    avail = ds.available.copy()
    avail[:, 0] = False
    batch = _batch(ds, avail, size=4)
    with torch.no_grad():
        out = model(batch.features, batch.available, batch.mask)
        stream = model.streams[model.modalities[0]]
        for p in [stream.prototypes, *stream.generator.parameters()]:
            p.add_(torch.randn_like(p))  # a different generator for the missing modality changes nothing
        again = model(batch.features, batch.available, batch.mask)
    torch.testing.assert_close(out.prediction, again.prediction)


def test_modulator_weights_bounded_and_neutral() -> None:
    present = torch.ones(4, 3, dtype=torch.bool)
    equal = torch.full((4, 3), 0.7)
    assert torch.equal(modulator_weights(equal, present, 0.5), torch.ones(4, 3))
    zeros = modulator_weights(torch.zeros(4, 3), present, 0.5)
    assert torch.equal(zeros, torch.ones(4, 3))
    errors = torch.tensor([[0.0, 1.0, 2.0], [1e-30, 0.0, 0.0], [5.0, 1e6, 0.1], [0.3, 0.3, 0.9]])
    w = modulator_weights(errors, present, 0.5)
    assert torch.isfinite(w).all() and (w >= 0.5).all() and (w <= 1.5).all()
    assert w[0, 2] > 1 > w[0, 0]
    partial = present.clone()
    partial[0, 1:] = False  # only one modality present -> nothing to compare -> 1
    assert torch.equal(modulator_weights(errors, partial, 0.5)[0], torch.ones(3))


def _prototype_grads(model: Comp, batch, fill_ones: bool) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = model(batch.features, batch.available, batch.mask)
    terms = model.loss(out, batch.labels, batch.mask, batch.available)
    if fill_ones:
        out.aux["modulator_weights"].fill_(1.0)
    sum(terms.values()).backward()
    return {m: model.streams[m].prototypes.grad.clone() for m in model.modalities}


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_modulator_changes_prototype_gradients(task: str) -> None:
    ds = _data(task)
    model = _model(ds).eval()  # eval: no dropout, so both passes are identical
    batch = _batch(ds, size=4)
    modulated = _prototype_grads(model, batch, fill_ones=False)
    neutral = _prototype_grads(model, batch, fill_ones=True)
    out = model(batch.features, batch.available, batch.mask)
    model.loss(out, batch.labels, batch.mask, batch.available)
    weights = out.aux["modulator_weights"]
    assert not torch.allclose(weights, torch.ones_like(weights))  # errors differ -> weights differ from 1
    assert any(not torch.allclose(modulated[m], neutral[m]) for m in model.modalities)
    # the same weights with the modulator switched off give the neutral gradients
    off = _model(ds, modulator=False).eval()
    off.load_state_dict(model.state_dict())
    plain = _prototype_grads(off, batch, fill_ones=False)
    for m in model.modalities:
        torch.testing.assert_close(plain[m], neutral[m])
        assert torch.isfinite(modulated[m]).all()


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_ablation_switches_remove_their_parts() -> None:
    ds = _data()
    full = _model(ds)
    batch = _batch(ds, _drop(ds, 0.3), size=4)
    for switch, part in (("prompts", "generator"), ("disentangle", "shared"), ("coordinator", "coordinator")):
        ablated = _model(ds, **{switch: False})
        assert _count(ablated) < _count(full), switch
        holder = ablated if switch == "coordinator" else ablated.streams[ablated.modalities[0]]
        assert not hasattr(holder, part), switch
    out = _model(ds, prompts=False).eval()(batch.features, batch.available, batch.mask)
    assert not any(k.startswith("prompt") for k in out.aux)
    out = _model(ds, disentangle=False).eval()(batch.features, batch.available, batch.mask)
    assert "recon" not in _model(ds, disentangle=False).loss(out, batch.labels, batch.mask, batch.available)
    uniform = _model(ds, coordinator=False).eval()(batch.features, batch.available, batch.mask)
    valid = uniform.aux["valid"]
    expected = valid.float() / valid.float().sum(-1, keepdim=True).clamp(min=1)
    torch.testing.assert_close(uniform.aux["coordinator"], expected)
    off = _model(ds, modulator=False).eval()
    out = off(batch.features, batch.available, batch.mask)
    off.loss(out, batch.labels, batch.mask, batch.available)
    assert torch.equal(out.aux["modulator_weights"], torch.ones_like(out.aux["modulator_weights"]))
    assert _model(ds, single_stage=True, stage_epoch=5).stage() == "joint"
    assert _model(ds, single_stage=False, stage_epoch=5).stage() == "warmup"


def _run(tmp, ds, epochs: int, resume: bool = False) -> dict:
    overrides = [f"{k}={v}" for k, v in {**SMALL, "stage_epoch": 2}.items()]
    overrides += [f"train.epochs={epochs}", "train.batch_size=4", "train.lr=1e-3", "missing.rate=0.3", "train.progress=false", "seed=3"]
    config = build_run_config("comp", "synthetic", overrides=overrides)
    return train(config, tmp, resume=resume, dataset=ds)


def test_stage_switch_and_resume_across_it(tmp_path) -> None:
    ds = make_synthetic(task="regression", num_groups=10, min_len=3, max_len=6, seed=2)
    full = _run(tmp_path / "full", ds, epochs=4)
    history = [json.loads(line) for line in (tmp_path / "full" / "history.jsonl").read_text().splitlines()]
    assert [h["stage"] for h in history] == ["warmup", "warmup", "joint", "joint"]
    assert "reverse" in history[1]["loss"] and "reverse" not in history[2]["loss"]
    _run(tmp_path / "cut", ds, epochs=2)  # stops right before the switch
    resumed = _run(tmp_path / "cut", ds, epochs=4, resume=True)
    again = [json.loads(line) for line in (tmp_path / "cut" / "history.jsonl").read_text().splitlines()]
    assert [h["stage"] for h in again] == ["warmup", "warmup", "joint", "joint"]
    for a, b in zip(history, again):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    flat = {k: v for k, v in full["test"].items() if k != "modality_acc"}
    assert flat == pytest.approx({k: resumed["test"][k] for k in flat}, rel=1e-6)
    assert full["test"]["modality_acc"] == pytest.approx(resumed["test"]["modality_acc"], rel=1e-6)
    assert (tmp_path / "full" / "predictions_test.csv").read_text() == (tmp_path / "cut" / "predictions_test.csv").read_text()


def test_finite_on_raw_unscaled_inputs() -> None:
    ds = _data()
    model = _model(ds)
    batch = _batch(ds, _drop(ds, 0.4), size=6)
    raw = {m: x * 400.0 + 150.0 for m, x in batch.features.items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        model.train()
        out = model(raw, batch.available, batch.mask)
        terms = model.loss(out, batch.labels, batch.mask, batch.available)
        assert all(torch.isfinite(v) for v in terms.values()), terms
        optimizer.zero_grad()
        sum(terms.values()).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
    big = torch.tensor([[-1e4, 0.0, 1e4]])
    assert torch.isfinite(bernoulli_js(big, -big)).all() and torch.isfinite(bernoulli_js(big, big)).all()
