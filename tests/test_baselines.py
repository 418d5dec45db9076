"""Tests of the field's baselines: modality-dropout, gcnet, mmin, momke.

All on small synthetic data with shrunken configs so each test takes seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imer.data import SplitBatcher, make_synthetic
from imer.layers.graph import speaker_relations, temporal_relations, window_edges
from imer.layers.modality_masking import drop_modalities
from imer.models import DataSpec, create_model, list_models

METHODS = ["modality-dropout", "gcnet", "mmin", "momke"]
SMALL = {
    "modality-dropout": {"hidden": 16},
    "gcnet": {"hidden": 12, "graph_hidden": 8, "window_past": 2, "window_future": 1},
    "mmin": {"hidden": 12, "ae_layers": [16, 8], "n_blocks": 2, "cls_hidden": 16, "pretrain_epochs": 1},
    "momke": {"hidden": 16, "depth": 1, "heads": 2, "stage_epochs": 1},
}
# epochs at which each stage is active (the staged models switch at epoch 1)
STAGE_EPOCHS = {"modality-dropout": [0], "gcnet": [0], "mmin": [0, 1], "momke": [0, 1]}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and the test machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_data(task: str = "classification", dims: dict[str, int] | None = None, groups: int = 10, seed: int = 0):
    return make_synthetic(task=task, num_groups=groups, dims=dims, seed=seed, min_len=2, max_len=9)


def build(method: str, data, **overrides):
    task = data.task
    spec = DataSpec(tuple(data.modalities), tuple(data.dims[m] for m in data.modalities), task, data.num_classes if task == "classification" else 1)
    torch.manual_seed(0)
    return create_model(method, spec, {**SMALL[method], **overrides})


def batcher_for(model, data) -> SplitBatcher:
    features = {m: data.features[m].astype(np.float32) for m in data.modalities}
    groups = data.group_ids if model.uses_context else None
    return SplitBatcher(features, data.labels, groups, data.order, data.speakers)


def random_available(n: int, m: int, rate: float = 0.4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    available = rng.random((n, m)) > rate
    available[np.arange(n), rng.integers(0, m, n)] |= ~available.any(axis=1)
    return available


def one_batch(model, data, batch_size: int = 6, seed: int = 0):
    available = random_available(len(data), len(data.modalities), seed=seed)
    return next(batcher_for(model, data).batches(available, batch_size))


def run(model, batch, speakers="batch"):
    spk = batch.speakers if speakers == "batch" else speakers
    return model(batch.features, batch.available, batch.mask, spk)


def test_all_registered():
    assert set(METHODS) <= set(list_models())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_shapes_in_every_stage(method, task):
    data = make_data(task)
    model = build(method, data)
    batch = one_batch(model, data)
    b, length = batch.mask.shape
    for epoch in STAGE_EPOCHS[method]:
        model.on_epoch_start(epoch)
        for training in (True, False):
            model.train(training)
            out = run(model, batch)
            expected = (b, length, data.num_classes) if task == "classification" else (b, length)
            assert out.prediction.shape == expected
            assert torch.isfinite(out.prediction).all()
            for pred in (out.modality_predictions or {}).values():
                assert pred.shape == expected
            if training:
                terms = model.loss(out, batch.labels, batch.mask, batch.available)
                assert terms and all(torch.isfinite(v) and v.dim() == 0 for v in terms.values())


@pytest.mark.parametrize("method", METHODS)
def test_two_arbitrarily_named_modalities(method):
    data = make_data(dims={"eeg": 5, "gaze": 7})
    model = build(method, data)
    batch = one_batch(model, data)
    for epoch in STAGE_EPOCHS[method]:
        model.on_epoch_start(epoch)
        model.train()
        out = run(model, batch)
        sum(model.loss(out, batch.labels, batch.mask, batch.available).values()).backward()
        assert out.prediction.shape[-1] == data.num_classes


@pytest.mark.parametrize("method", METHODS)
def test_missing_values_never_influence_outputs(method):
    data = make_data()
    model = build(method, data)
    batch = one_batch(model, data)
    garbage = {}
    for j, m in enumerate(data.modalities):
        noise = torch.randn_like(batch.features[m]) * 1e4
        garbage[m] = torch.where(batch.available[..., j : j + 1], batch.features[m], noise)
    for epoch in STAGE_EPOCHS[method]:
        model.on_epoch_start(epoch)
        model.eval()
        with torch.no_grad():
            clean = run(model, batch).prediction
            dirty = model(garbage, batch.available, batch.mask, batch.speakers).prediction
        valid = batch.mask
        torch.testing.assert_close(clean[valid], dirty[valid])
        # training outputs and losses, with the same random draws, must not see them either
        model.train()
        torch.manual_seed(1)
        out_clean = run(model, batch)
        loss_clean = model.loss(out_clean, batch.labels, batch.mask, batch.available)
        torch.manual_seed(1)
        out_dirty = model(garbage, batch.available, batch.mask, batch.speakers)
        loss_dirty = model.loss(out_dirty, batch.labels, batch.mask, batch.available)
        for key in loss_clean:
            torch.testing.assert_close(loss_clean[key], loss_dirty[key])


@pytest.mark.parametrize("method", METHODS)
def test_eval_predictions_do_not_depend_on_batch_composition(method):
    data = make_data(groups=8)
    model = build(method, data)
    available = random_available(len(data), len(data.modalities))
    batcher = batcher_for(model, data)
    for epoch in STAGE_EPOCHS[method]:
        model.on_epoch_start(epoch)
        model.eval()
        per_size = []
        for size in (1, 3, 8):
            preds = torch.zeros(len(data), *([data.num_classes]))
            with torch.no_grad():
                for batch in batcher.batches(available, size):
                    out = run(model, batch)
                    preds[batch.index[batch.mask]] = out.prediction[batch.mask]
            per_size.append(preds)
        torch.testing.assert_close(per_size[0], per_size[1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(per_size[0], per_size[2], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_finite_on_raw_unscaled_inputs(method):
    data = make_data(task="regression")
    model = build(method, data)
    batch = one_batch(model, data)
    scale = torch.tensor(376.0)
    raw = {m: x * scale + 50.0 for m, x in batch.features.items()}
    raw = {m: torch.where(batch.available[..., j : j + 1], x, 0.0) for j, (m, x) in enumerate(raw.items())}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in STAGE_EPOCHS[method]:
        model.on_epoch_start(epoch)
        model.train()
        for _ in range(3):
            out = model(raw, batch.available, batch.mask, batch.speakers)
            total = sum(model.loss(out, batch.labels, batch.mask, batch.available).values())
            assert torch.isfinite(total)
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
        model.eval()
        assert torch.isfinite(model(raw, batch.available, batch.mask, batch.speakers).prediction).all()


def _overfit(model, batch, steps: int, epoch: int) -> dict[str, list[float]]:
    """Train on one batch in the stage of ``epoch``; return each loss term's trace."""
    model.on_epoch_start(epoch)
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    trace: dict[str, list[float]] = {}
    torch.manual_seed(0)
    for _ in range(steps):
        out = run(model, batch)
        terms = model.loss(out, batch.labels, batch.mask, batch.available)
        optimizer.zero_grad()
        sum(terms.values()).backward()
        optimizer.step()
        for k, v in terms.items():
            trace.setdefault(k, []).append(float(v.detach()))
    return trace


@pytest.mark.parametrize("method", METHODS)
def test_each_loss_term_finite_and_decreasing_on_tiny_problem(method):
    data = make_data(groups=6)
    model = build(method, data, dropout=0.0)
    batch = one_batch(model, data, batch_size=6)
    for epoch in STAGE_EPOCHS[method]:
        trace = _overfit(model, batch, steps=60, epoch=epoch)
        for name, values in trace.items():
            assert np.isfinite(values).all(), name
            assert np.mean(values[-5:]) < 0.8 * np.mean(values[:5]), (method, model.stage(), name, values[:5], values[-5:])


def test_modality_dropout_keeps_one_available_and_never_adds():
    torch.manual_seed(0)
    available = torch.rand(500, 1, 3) > 0.3
    available[:5] = False  # padding rows stay empty
    dropped = drop_modalities(available, 0.9)
    assert not (dropped & ~available).any()
    assert (dropped.any(-1) == available.any(-1)).all()
    assert dropped.sum() < available.sum()


def test_modality_dropout_only_drops_in_training():
    data = make_data()
    model = build("modality-dropout", data, drop_prob=0.9)
    batch = one_batch(model, data)
    model.eval()
    assert torch.equal(run(model, batch).aux["used_available"], batch.available)
    model.train()
    used = run(model, batch).aux["used_available"]
    assert used.sum() < batch.available.sum()


def test_graph_edges_window_and_relations():
    valid = torch.tensor([[True, True, True, True, False]])
    edges = window_edges(valid, past=1, future=2)[0]
    assert edges[2].tolist() == [False, True, True, True, False]  # j in [1, 4] but 4 is padding
    assert not edges[4].any() and not edges[:, 4].any()
    rel = temporal_relations(window_edges(valid, 1, 2))
    assert torch.equal(rel.any(dim=1), window_edges(valid, 1, 2))
    assert (rel.sum(dim=1) <= 1).all()  # past / now / future partition the edges
    spk = speaker_relations(window_edges(valid, -1, -1), torch.tensor([[0, 1, 0, 1, -1]]))
    assert spk[0, 0, 0].tolist() == [True, False, True, False, False]
    assert spk[0, 1, 0].tolist() == [False, True, False, True, False]


def test_gcnet_uses_speaker_edges():
    data = make_data()
    model = build("gcnet", data)
    batch = one_batch(model, data)
    model.eval()
    with torch.no_grad():
        given = run(model, batch).prediction
        one_speaker = run(model, batch, speakers=torch.where(batch.mask, 0, -1)).prediction
        no_speakers = run(model, batch, speakers=None).prediction
    valid = batch.mask
    assert not torch.allclose(given[valid], one_speaker[valid])
    assert not torch.allclose(given[valid], no_speakers[valid])


@pytest.mark.parametrize("bits", [False, True])
def test_gcnet_availability_bits_tell_missing_from_zero_features(bits):
    data = make_data()
    model = build("gcnet", data, availability_bits=bits)
    batch = one_batch(model, data)
    model.eval()
    b, t = (int(i) for i in torch.nonzero(batch.mask & ~batch.available[..., 0])[0])
    zeroed = {m: x.clone() for m, x in batch.features.items()}
    first = list(zeroed)[0]
    zeroed[first][b, t] = 0.0
    present = batch.available.clone()
    present[b, t, 0] = True  # the same utterance, its first modality "observed" with all-zero features
    with torch.no_grad():
        missing = model(batch.features, batch.available, batch.mask, batch.speakers).prediction
        observed_zero = model(zeroed, present, batch.mask, batch.speakers).prediction
    assert torch.allclose(missing, observed_zero) != bits


def test_gcnet_reconstruction_is_reported_and_uses_observed_entries_only():
    data = make_data()
    model = build("gcnet", data)
    batch = one_batch(model, data)
    model.train()
    out = run(model, batch)
    terms = model.loss(out, batch.labels, batch.mask, batch.available)
    assert set(terms) == {"task", "recon"}
    for j, m in enumerate(data.modalities):
        assert out.aux[f"recon_{m}"].shape == batch.features[m].shape
        assert (out.aux[f"target_{m}"][~batch.available[..., j]] == 0).all()
    # training hides some observed modalities from the input (completion targets)
    assert (out.aux["used_available"] & ~batch.available).sum() == 0


def test_mmin_stages_teacher_freeze_and_student_init():
    data = make_data()
    model = build("mmin", data)
    batch = one_batch(model, data)
    model.on_epoch_start(0)
    assert model.stage() == "pretrain"
    model.train()
    assert set(model.loss(run(model, batch), batch.labels, batch.mask, batch.available)) == {"task"}
    model.on_epoch_start(1)
    assert model.stage() == "imagine"
    assert all(not p.requires_grad for p in model.teacher.parameters())
    for a, b in zip(model.teacher.parameters(), model.student.parameters()):
        torch.testing.assert_close(a, b)
    model.train()
    assert not model.teacher.training
    out = run(model, batch)
    assert out.aux["all_predictions"].shape[0] == model.config.conditions * batch.mask.shape[0]
    assert set(model.loss(out, batch.labels, batch.mask, batch.available)) == {"task", "imagination", "cycle"}
    # sub-conditions only remove available modalities and keep at least one
    sub = out.aux["sub_available"].reshape(model.config.conditions, *batch.available.shape)
    assert not (sub & ~batch.available).any()
    assert (sub.any(-1) == batch.available.any(-1)).all()


def test_mmin_imagination_error_drops_and_teacher_stays_fixed():
    data = make_data(groups=6)
    model = build("mmin", data, dropout=0.0)
    batch = one_batch(model, data, batch_size=6)
    _overfit(model, batch, steps=20, epoch=0)
    model.on_epoch_start(1)
    teacher_before = [p.clone() for p in model.teacher.parameters()]
    trace = _overfit(model, batch, steps=60, epoch=1)
    assert np.mean(trace["imagination"][-10:]) < 0.7 * np.mean(trace["imagination"][:10])
    for before, after in zip(teacher_before, model.teacher.parameters()):
        torch.testing.assert_close(before, after)


def test_momke_stage_switch():
    data = make_data()
    model = build("momke", data)
    batch = one_batch(model, data)
    model.on_epoch_start(0)
    assert model.stage() == "experts"
    model.train()
    out = run(model, batch)
    terms = model.loss(out, batch.labels, batch.mask, batch.available)
    assert set(terms) == {f"expert_{m}" for m in data.modalities}
    sum(terms.values()).backward()
    assert all(p.grad is None for p in model.routers.parameters())
    assert all(p.grad is not None for p in model.experts.parameters())
    model.zero_grad(set_to_none=True)
    stage_one_state = {k: v.clone() for k, v in model.state_dict().items()}

    model.on_epoch_start(1)
    assert model.stage() == "mixture"
    out = run(model, batch)
    terms = model.loss(out, batch.labels, batch.mask, batch.available)
    assert set(terms) == {"task"}
    sum(terms.values()).backward()
    assert any(p.grad is not None for p in model.routers.parameters())
    weights = out.aux["router_weights"]
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
    # the stage travels with the weights: a stage-1 best state evaluates as stage 1
    model.load_state_dict(stage_one_state)
    assert model.stage() == "experts"


@pytest.mark.parametrize("method", METHODS)
def test_trains_through_the_run_pipeline(method, tmp_path):
    from imer.config import build_run_config
    from imer.experiments.run import train

    overrides = [f"model.{k}={v}" for k, v in SMALL[method].items() if k != "ae_layers"]
    overrides += ["train.epochs=2", "train.progress=false", "missing.rate=0.4", "data.options.num_groups=24"]
    if method == "mmin":
        overrides.append("model.ae_layers=[16,8]")
    config = build_run_config(method, "synthetic", overrides=overrides)
    metrics = train(config, tmp_path / method)
    assert np.isfinite(metrics["test"]["acc"])
