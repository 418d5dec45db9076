"""The ``linear`` method: its inputs, its convex fits, the trainer hook, and the real MOSI (MiniLM) data."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge

from imer.cli import main
from imer.data import RandomMissing, SplitBatcher, make_synthetic
from imer.config import build_run_config
from imer.experiments.inference import evaluate_run
from imer.experiments.run import spec_of, train
from imer.models import create_model

DIMS = {"audio": 4, "text": 6, "video": 3}


def _setup(task: str, objective: str, **options):
    ds = make_synthetic(task=task, num_groups=20, min_len=2, max_len=6, dims=DIMS, seed=3)
    model = create_model("linear", spec_of(ds), {"objective": objective, "grid": [0.01, 1.0], "mask_draws": 2, **options})
    batcher = SplitBatcher(ds.features, ds.labels, ds.group_ids, ds.order)
    rng = np.random.default_rng(0)
    masks = [RandomMissing(0.4).apply(ds.available, rng) for _ in range(2)]
    return ds, model, batcher, masks


def _design_rows(model, batcher, masks):
    rows, labels = [], []
    for m in masks:
        batch = next(batcher.batches(m, batch_size=batcher.num_groups))
        rows.append(model.design(batch.features, batch.available, batch.mask)[batch.mask])
        labels.append(batch.labels[batch.mask])
    x = torch.cat(rows).double().numpy()
    scale = x.std(axis=0)
    return x, (x - x.mean(axis=0)) / np.where(scale > 1e-8, scale, 1.0), torch.cat(labels).numpy()


def test_design_holds_observed_features_bits_and_dialogue_means():
    ds, model, batcher, _ = _setup("regression", "ridge")
    available = np.ones((len(ds), 3), bool)
    available[:, 2] = False  # no video anywhere
    first = ds.group_ids == ds.group_ids[0]
    available[np.flatnonzero(first)[0], 0] = False  # the first utterance of the first dialogue lacks audio
    batch = next(batcher.batches(available, batch_size=1))
    x = model.design(batch.features, batch.available, batch.mask)[0]
    d_a, d_t, d_v = DIMS.values()
    assert x.shape[-1] == 2 * (d_a + d_t + d_v + 3)
    assert torch.all(x[0, :d_a] == 0) and torch.all(x[:, d_a + d_t : d_a + d_t + d_v] == 0)
    bits = x[:, d_a + d_t + d_v : d_a + d_t + d_v + 3]
    torch.testing.assert_close(bits, batch.available[0].float())
    mean_audio = x[0, d_a + d_t + d_v + 3 : d_a + d_t + d_v + 3 + d_a]
    torch.testing.assert_close(mean_audio, batch.features["audio"][0, 1:].mean(dim=0))  # observed utterances only
    none_bits = x[0, -3:]
    torch.testing.assert_close(none_bits, torch.tensor([0.0, 0.0, 1.0]))
    plain = create_model("linear", spec_of(ds), {"dialogue_mean": False})
    assert plain.design(batch.features, batch.available, batch.mask).shape[-1] == d_a + d_t + d_v + 3


def test_ridge_is_the_closed_form_of_scikit_learn_ridge():
    _, model, batcher, masks = _setup("regression", "ridge")
    x, z, y = _design_rows(model, batcher, masks)
    for info in model.convex_fits(batcher, masks):
        expected = Ridge(alpha=info["strength"] * len(y)).fit(z, y).predict(z)
        got = model.linear(torch.as_tensor(x, dtype=torch.float32)).squeeze(-1).detach().double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


def test_logistic_on_scores_keeps_the_classifier_sign_on_the_label_scale():
    _, model, batcher, masks = _setup("regression", "logistic")
    x, z, y = _design_rows(model, batcher, masks)
    use = y != 0
    for info in model.convex_fits(batcher, masks):
        reference = LogisticRegression(C=1.0 / (info["strength"] * use.sum()), max_iter=2000).fit(z[use], y[use] > 0)
        got = model.linear(torch.as_tensor(x, dtype=torch.float32)).squeeze(-1).detach().double().numpy()
        assert info["score_scale"] > 0
        agree = np.sign(got) == np.sign(reference.decision_function(z))
        assert agree.mean() > 0.99
        # the factor is the least-squares one: no other factor fits the training scores better
        best = float(got @ y) / float(got @ got)
        assert best == pytest.approx(1.0, rel=1e-3)


def test_regression_outputs_are_clipped_to_the_training_score_range():
    ds, model, batcher, masks = _setup("regression", "ridge", grid=[1e-3])
    list(model.convex_fits(batcher, masks))
    low, high = float(ds.labels.min()), float(ds.labels.max())
    assert model.score_range.tolist() == pytest.approx([low, high])
    batch = next(batcher.batches(masks[0], batch_size=batcher.num_groups))
    far = {m: x * 100.0 for m, x in batch.features.items()}  # far outside the training inputs
    raw = model.linear(model.design(far, batch.available, batch.mask)).squeeze(-1)[batch.mask]
    out = model(far, batch.available, batch.mask).prediction[batch.mask]
    assert raw.max() > high and raw.min() < low  # the unclipped map leaves the range here
    assert out.min() >= low and out.max() <= high
    inside = (raw >= low) & (raw <= high)
    torch.testing.assert_close(out[inside], raw[inside])
    assert torch.equal(torch.sign(out), torch.sign(raw))


def test_logistic_classification_gives_class_logits():
    ds, model, batcher, masks = _setup("classification", "logistic")
    candidates = list(model.convex_fits(batcher, masks))
    assert [c["strength"] for c in candidates] == [1.0, 0.01]
    batch = next(batcher.batches(np.ones((len(ds), 3), bool), batch_size=batcher.num_groups))
    out = model(batch.features, batch.available, batch.mask)
    assert out.prediction.shape[-1] == ds.num_classes
    accuracy = (out.prediction[batch.mask].argmax(-1) == batch.labels[batch.mask]).float().mean()
    assert accuracy > 0.6  # synthetic training data, all modalities: far above chance (0.25)


def test_fitted_model_ignores_absent_values_and_other_dialogues():
    ds, model, batcher, masks = _setup("regression", "logistic")
    list(model.convex_fits(batcher, masks))
    together = next(batcher.batches(masks[0], batch_size=batcher.num_groups))
    with torch.no_grad():
        reference = model(together.features, together.available, together.mask).prediction[together.mask]
        garbage = {m: torch.where(together.available[..., j : j + 1], x, torch.randn_like(x) * 1e3) for j, (m, x) in enumerate(together.features.items())}
        torch.testing.assert_close(model(garbage, together.available, together.mask).prediction[together.mask], reference)
        alone = torch.cat([model(b.features, b.available, b.mask).prediction[b.mask] for b in batcher.batches(masks[0], batch_size=1)])
    torch.testing.assert_close(alone, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dataset", ["synthetic", "synthetic-reg"])
def test_trains_through_the_shared_run_path(tmp_path, dataset):
    overrides = ["missing.rate=0.3", "train.progress=false", "model.mask_draws=3", "data.options.num_groups=40"]
    first = train(build_run_config("linear", dataset, overrides=overrides), tmp_path / "a")
    again = train(build_run_config("linear", dataset, overrides=overrides), tmp_path / "b")
    assert first["test"] == again["test"] and first["fit"] == again["fit"]
    grid = build_run_config("linear", dataset).model["grid"]
    history = [json.loads(line) for line in (tmp_path / "a" / "history.jsonl").read_text().splitlines()]
    assert [h["fit"]["strength"] for h in history] == sorted(grid, reverse=True)
    chosen = history[first["selection"]["best_epoch"]]
    assert chosen["fit"] == first["fit"] and chosen["valid"] == first["valid"]
    assert abs(first["missing_fraction"]["train"] - 0.3) < 0.02
    assert evaluate_run(tmp_path / "a")["test"] == first["test"]  # saved weights + predict path give the same numbers


@pytest.fixture(scope="module")
def minilm_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm") / "linear"
    t0 = time.perf_counter()
    argv = ["train", "--method", "linear", "--dataset", "cmu-mosi-minilm", "--data-dir", str(data_dir), "--missing-rate", "0.3", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    return out, time.perf_counter() - t0


def test_linear_on_minilm_end_to_end(minilm_run, data_dir, tmp_path):
    out, seconds = minilm_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["acc2"] >= 0.72 and metrics["test"]["corr"] >= 0.5, metrics["test"]
    assert metrics["fit"]["objective"] == "logistic" and metrics["fit"]["score_scale"] > 0
    assert metrics["fit"]["train_rows"] == 10 * 1284
    assert seconds < 120, seconds  # seconds on an idle laptop; generous for a shared CI machine
    assert (out / "model.safetensors").is_file() and not (out / "checkpoint.pt").exists()
    reproduced = evaluate_run(out, data_dir=str(data_dir))
    assert reproduced["test"] == metrics["test"]
    raw = np.load(data_dir / "cmu-mosi-minilm" / "features.npz", allow_pickle=False)
    np.savez(tmp_path / "new.npz", x_text=raw["text"][:5], utterance_ids=raw["ids"][:5])
    assert main(["predict", "--model", str(out), "--input", str(tmp_path / "new.npz"), "--out", str(tmp_path / "p.csv")]) == 0
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 6


@pytest.mark.parametrize("kept", [[0, 2], [0, 1, 3]])
def test_logistic_classes_absent_from_training_are_never_predicted(kept):
    ds, model, batcher, masks = _setup("classification", "logistic")
    keep = np.isin(ds.labels, kept)
    sub = SplitBatcher({m: x[keep] for m, x in ds.features.items()}, ds.labels[keep], ds.group_ids[keep], ds.order[keep])
    list(model.convex_fits(sub, [m[keep] for m in masks]))
    batch = next(sub.batches(masks[0][keep], batch_size=sub.num_groups))
    with torch.no_grad():
        predicted = model(batch.features, batch.available, batch.mask).prediction[batch.mask].argmax(-1)
    assert set(predicted.tolist()) <= set(kept)
    assert (predicted == batch.labels[batch.mask]).float().mean() > 1.0 / len(kept)
