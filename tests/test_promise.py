"""PROMISE: contrastive losses, masking, batch independence, stages, ablations (fast, synthetic)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from imer.data import RandomMissing, SplitBatcher, make_synthetic
from imer.config import TrainConfig, build_run_config
from imer.experiments.loading import load_run
from imer.experiments.run import prepare_data, spec_of, train
from imer.layers.contrastive import multi_positive_contrastive
from imer.models import DataSpec, create_model
from imer.models.promise import Promise, generation_similarity
from imer.training.trainer import EvalSet, Trainer

SMALL = {"hidden": 16, "heads": 2, "prompt_pool": 3, "proj_dim": 8, "dropout": 0.1}


def _reference(z: torch.Tensor, groups: list[int], valid: list[bool], tau: float) -> float:
    """Loop-by-loop multi-positive InfoNCE, written from the formula."""
    z = torch.nn.functional.normalize(z, dim=-1)
    losses = []
    for a in range(len(groups)):
        if not valid[a]:
            continue
        others = [b for b in range(len(groups)) if b != a and valid[b]]
        positives = [p for p in others if groups[p] == groups[a]]
        if not positives:
            continue
        denom = sum(math.exp(float(z[a] @ z[b]) / tau) for b in others)
        losses.append(-sum(math.log(math.exp(float(z[a] @ z[p]) / tau) / denom) for p in positives) / len(positives))
    return sum(losses) / len(losses) if losses else 0.0


def _model(task: str = "classification", modalities: dict[str, int] | None = None, **overrides) -> Promise:
    dims = modalities or {"audio": 6, "text": 7, "video": 5}
    spec = DataSpec(tuple(dims), tuple(dims.values()), task, 3 if task == "classification" else 1)
    torch.manual_seed(0)
    return create_model("promise", spec, {**SMALL, **overrides})


def _inputs(model: Promise, n: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(n, 1, d, generator=g) for m, d in model.spec.dim_of.items()}
    available = torch.rand(n, 1, len(model.modalities), generator=g) < 0.6
    available[:, :, 0] |= ~available.any(dim=-1)
    mask = torch.ones(n, 1, dtype=torch.bool)
    if model.spec.task == "classification":
        labels = torch.randint(0, 3, (n, 1), generator=g)
    else:
        labels = torch.randn(n, 1, generator=g) * 2
    return features, available, mask, labels


# ----- contrastive losses -----------------------------------------------------------------------


def test_contrastive_hand_computed_value():
    z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])  # a, b same group; c alone (no positive)
    loss = multi_positive_contrastive(z, torch.tensor([0, 0, 1]), torch.ones(3, dtype=torch.bool), temperature=0.5)
    # anchors a and b: -log(e^2 / (e^2 + e^0)) = log(1 + e^-2); c has no positive and is not averaged
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)


def test_contrastive_multi_positive_matches_reference_and_ignores_invalid():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(7, 4, generator=g)
    groups, valid = [0, 0, 1, 1, 1, 2, 0], [True, True, True, False, True, True, True]
    got = multi_positive_contrastive(z, torch.tensor(groups), torch.tensor(valid), temperature=0.3)
    assert float(got) == pytest.approx(_reference(z, groups, valid, 0.3), rel=1e-5)
    z2 = z.clone()
    z2[3] = 1e6  # an invalid entry's values never matter
    assert torch.equal(got, multi_positive_contrastive(z2, torch.tensor(groups), torch.tensor(valid), temperature=0.3))


def test_contrastive_leading_dims_are_independent_problems():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 5, 3, generator=g)
    groups = torch.tensor([[0, 0, 1, 1, 2], [0, 1, 1, 1, 0]])
    valid = torch.ones(2, 5, dtype=torch.bool)
    got = multi_positive_contrastive(z, groups, valid, temperature=1.0)
    # every anchor of both problems has a positive except anchor 4 of problem 0: 9 anchors
    per = [_reference(z[i], groups[i].tolist(), [True] * 5, 1.0) for i in range(2)]
    assert float(got) == pytest.approx((per[0] * 4 + per[1] * 5) / 9, rel=1e-5)


def test_contrastive_no_positive_is_zero_with_finite_grad():
    z = torch.randn(3, 4, requires_grad=True)
    loss = multi_positive_contrastive(z, torch.tensor([0, 1, 2]), torch.tensor([True, True, False]), temperature=0.1)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(z.grad).all()


def test_fncl_lowest_when_views_coincide_and_samples_differ():
    n, v = 4, 3
    sample = torch.arange(n).repeat_interleave(v)
    valid = torch.ones(n * v, dtype=torch.bool)
    aligned = torch.eye(n).repeat_interleave(v, dim=0)  # views identical, samples orthogonal
    g = torch.Generator().manual_seed(3)
    noisy = aligned + 0.5 * torch.randn(n * v, n, generator=g)
    collapsed = torch.ones(n * v, n)  # everything identical: no instance discrimination
    shuffled = aligned[torch.randperm(n * v, generator=g)]
    losses = [float(multi_positive_contrastive(x, sample, valid, 0.2)) for x in (aligned, noisy, collapsed, shuffled)]
    assert losses[0] < min(losses[1:])


def test_cccl_lowest_when_classes_cluster():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    valid = torch.ones(8, dtype=torch.bool)
    clustered = torch.eye(3)[labels]
    g = torch.Generator().manual_seed(4)
    mixed = torch.eye(3)[labels[torch.randperm(8, generator=g)]]
    random = torch.randn(8, 3, generator=g)
    losses = [float(multi_positive_contrastive(x, labels, valid, 0.2)) for x in (clustered, mixed, random)]
    assert losses[0] < min(losses[1:])


# ----- model contract ---------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_forward_loss_backward(task):
    model = _model(task)
    features, available, mask, labels = _inputs(model)
    model.train()
    out = model(features, available, mask)
    expected = (10, 1, 3) if task == "classification" else (10, 1)
    assert out.prediction.shape == expected
    assert set(out.modality_predictions) == set(model.modalities)
    terms = model.loss(out, labels, mask, available)
    assert set(terms) == {"task", "unimodal", "fncl", "cccl"}
    sum(terms.values()).backward()
    assert model.pools.grad is not None and torch.isfinite(model.pools.grad).all()


def test_missing_modality_values_never_change_outputs():
    model = _model().eval()
    features, available, mask, _ = _inputs(model)
    garbage = {m: torch.where(available[..., j : j + 1], x, torch.full_like(x, 1e4)) for j, (m, x) in enumerate(features.items())}
    a, b = model(features, available, mask), model(garbage, available, mask)
    assert torch.allclose(a.prediction, b.prediction, atol=1e-6)
    for key in ("tokens", "fused", "generated"):
        assert torch.allclose(a.aux[key], b.aux[key], atol=1e-6)
    for j, m in enumerate(model.modalities):
        keep = available[..., j]
        assert torch.allclose(a.modality_predictions[m][keep], b.modality_predictions[m][keep], atol=1e-6)


def test_batch_composition_never_changes_eval_predictions():
    model = _model("regression").eval()
    features, available, mask, _ = _inputs(model, n=12)
    full = model(features, available, mask).prediction
    order = torch.randperm(12, generator=torch.Generator().manual_seed(5))
    part = order[:5]
    sub = model({m: x[part] for m, x in features.items()}, available[part], mask[part]).prediction
    assert torch.allclose(full[part], sub, atol=1e-5)
    # padding rows (mask False, any garbage) change nothing either
    padded = {m: torch.cat([x, torch.full_like(x[:3], 7.0)]) for m, x in features.items()}
    out = model(padded, torch.cat([available, torch.ones_like(available[:3])]), torch.cat([mask, torch.zeros_like(mask[:3])])).prediction
    assert torch.allclose(out[:12], full, atol=1e-5)


def test_eval_is_deterministic_and_training_copy_is_more_masked():
    model = _model()
    features, available, mask, _ = _inputs(model)
    model.eval()
    assert torch.equal(model(features, available, mask).prediction, model(features, available, mask).prediction)
    flat = available.reshape(-1, 3)
    copy = model.more_masked(flat)
    assert not (copy & ~flat).any() and copy.any(dim=-1).all()
    model.train()
    out = model(features, available, mask)
    assert "copy_tokens" in out.aux and "copy_tokens" not in model.eval()(features, available, mask).aux


def test_two_other_modalities_and_raw_unscaled_inputs_stay_finite():
    model = _model("regression", {"image": 9, "text": 4})
    features, available, mask, labels = _inputs(model, n=16)
    features = {m: x * 500.0 + 300.0 for m, x in features.items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(5):
        out = model(features, available, mask)
        total = sum(model.loss(out, labels * 100, mask, available).values())
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert torch.isfinite(model.eval()(features, available, mask).prediction).all()


# ----- stages and ablations ---------------------------------------------------------------------


def _run_config(epochs: int, **model_values):
    overrides = ["train.progress=false", "train.batch_size=16", "missing.rate=0.3", f"train.epochs={epochs}"]
    overrides += [f"model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in {**SMALL, **model_values}.items()]
    return build_run_config("promise", "synthetic", overrides=overrides)


@pytest.mark.parametrize("frozen", [True, False])
def test_encoder_frozen_in_stage_two_unless_finetuned(frozen):
    data = make_synthetic(num_groups=10, seed=0)
    config = _run_config(3, encoder_epochs=1, frozen_encoder=frozen)
    prepared = prepare_data(config, data)
    model = create_model("promise", prepared.spec, config.model)
    trainer = Trainer(model, TrainConfig(epochs=3, batch_size=16, lr=1e-2, progress=False), select_metric="acc")
    train_available = RandomMissing(0.3).apply(data.available[prepared.indices["train"]], np.random.default_rng(0))
    snapshots = {}

    def train_mask(epoch: int) -> np.ndarray:  # called after on_epoch_start, before the epoch's updates
        snapshots[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        return train_available

    valid = EvalSet(prepared.batchers["valid"], data.available[prepared.indices["valid"]])
    trainer.fit(prepared.batchers["train"], train_mask, valid)
    after_stage1, final = snapshots[1], model.state_dict()
    encoder_keys = [k for k in final if k.startswith(("encoders.", "unimodal_heads."))]
    assert encoder_keys
    unchanged = all(torch.equal(after_stage1[k], final[k]) for k in encoder_keys)
    assert unchanged == frozen
    assert not torch.equal(after_stage1["pools"], final["pools"])


def test_stage_is_a_pure_function_of_epoch():
    model = _model(encoder_epochs=2)
    model.on_epoch_start(5)
    assert model.stage() == "prompt-frozen" and not any(p.requires_grad for p in model.encoder_parameters())
    model.on_epoch_start(1)
    assert model.stage() == "encoder" and all(p.requires_grad for p in model.encoder_parameters())
    model.on_epoch_start(5)
    features, available, mask, labels = _inputs(model)
    assert "unimodal" not in model.loss(model.train()(features, available, mask), labels, mask, available)


def test_stage_one_trains_encoders_only_through_unimodal_heads():
    model = _model()
    model.on_epoch_start(0)
    features, available, mask, labels = _inputs(model)
    out = model.train()(features, available, mask)
    terms = model.loss(out, labels, mask, available)
    sum(v for k, v in terms.items() if k != "unimodal").backward()
    assert all(p.grad is None for p in model.encoders.parameters())


@pytest.mark.parametrize(
    "switch, gone",
    [("fncl", "fncl"), ("cccl", "cccl")],
)
def test_contrastive_switches_remove_their_loss(switch, gone):
    model = _model(**{switch: False})
    features, available, mask, labels = _inputs(model)
    out = model.train()(features, available, mask)
    terms = model.loss(out, labels, mask, available)
    assert gone not in terms and {"task", "fncl", "cccl"} - {gone} <= set(terms)
    if switch == "fncl":
        assert "copy_tokens" not in out.aux


def test_prompts_switch_uses_plain_cross_attention():
    model = _model(prompts=False)
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith(("pools", "pattern_embedding", "refine")) for n in names)
    features, available, mask, labels = _inputs(model)
    out = model.eval()(features, available, mask)
    keep = available.unsqueeze(-1)
    assert torch.equal(torch.where(keep, out.aux["prompted"], 0.0), torch.where(keep, out.aux["encoded"], 0.0))
    assert torch.isfinite(out.prediction).all()


def test_frozen_switch_keeps_encoders_trainable():
    model = _model(frozen_encoder=False, encoder_epochs=1)
    model.on_epoch_start(3)
    assert model.stage() == "prompt-finetune" and all(p.requires_grad for p in model.encoder_parameters())


def test_cccl_bins_for_regression():
    labels = torch.tensor([-2.6, -0.4, 0.0, 0.2, 3.4])
    assert _model("regression").contrastive_classes(labels).tolist() == [-1, -1, 0, 1, 1]
    assert _model("regression", cccl_bins="7").contrastive_classes(labels).tolist() == [-3, 0, 0, 0, 3]


# ----- diagnostic and end-to-end ----------------------------------------------------------------


def test_generation_similarity_and_end_to_end_run(tmp_path):
    data = make_synthetic(task="regression", num_groups=8, seed=1)
    with_test = _run_config(2, encoder_epochs=1)
    with_test.train.eval_test_each_epoch = True
    metrics = train(with_test, tmp_path / "run", dataset=data)
    assert np.isfinite(metrics["test"]["mae"]) and set(metrics["test"]["modality_acc"]) == set(data.modalities)
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    for record in history:  # the trainer logs the diagnostic every epoch, on valid (and test when asked)
        logged = record["diagnostics"]["test"]["generation_similarity"]
        assert set(logged) == set(data.modalities) and all(v["count"] > 0 for v in logged.values())
        assert "valid" in record["diagnostics"]
    train(_run_config(2, encoder_epochs=1), tmp_path / "plain", dataset=data)
    plain = [json.loads(line) for line in (tmp_path / "plain" / "history.jsonl").read_text().splitlines()]
    assert all(set(record["diagnostics"]) == {"valid"} for record in plain)
    model = create_model("promise", spec_of(data), SMALL)
    batcher = SplitBatcher(data.features, data.labels, None)
    sims = generation_similarity(model, batcher, data.available)
    assert set(sims) == set(data.modalities)
    for value in sims.values():
        assert value["count"] == len(data.labels) and -1.0 <= value["matched"] <= 1.0
    only_first = np.zeros_like(data.available)
    only_first[:, 0] = True  # one modality each: nothing to compare
    assert generation_similarity(model, batcher, only_first)["audio"]["count"] == 0


@pytest.mark.slow
def test_generation_becomes_sample_specific_on_synthetic_data(tmp_path):
    """With real cross-modal structure, a generated modality is closer to its own utterance's real one than to others'."""
    data = make_synthetic(num_groups=120, strength={"audio": 0.9, "text": 1.6, "video": 0.45}, seed=0)  # clear cross-modal structure
    config = build_run_config("promise", "synthetic", overrides=["train.progress=false", "train.threads=1", "missing.rate=0.4", "train.epochs=15"])
    train(config, tmp_path / "run", dataset=data)
    loaded = load_run(tmp_path / "run")
    prepared = prepare_data(loaded.config, data)
    sims = generation_similarity(loaded.model, prepared.batchers["test"], data.available[prepared.indices["test"]])
    for value in sims.values():
        assert value["matched"] > value["shuffled"] + 0.05, sims
