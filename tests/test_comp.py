"""ComP: the properties issues 3 and 13 ask for (defect fixes, fidelity switches, published preset), on small synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imer.data import SplitBatcher, make_synthetic
from imer.errors import ConfigError
from imer.experiments.config import build_run_config, read_config_file, resolve_config_file
from imer.experiments.run import spec_of, train
from imer.layers import MaskedTransformer
from imer.layers.plain_transformer import PlainTransformer
from imer.models import create_model
from imer.models._comp_modulator import published_weights
from imer.models.base import DataSpec
from imer.models.comp import CHOICES, Comp, bernoulli_js, modulator_weights

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


# ----- fidelity switches (issue 13): each changes what it claims -------------------------------------


ABC = {"a": 5, "b": 6, "c": 7}
PUBLISHED = read_config_file(resolve_config_file("comp", "published"))["model"]


def _stage1_model(ds, **overrides) -> Comp:
    model = _model(ds, single_stage=False, stage_epoch=3, **overrides)
    model.on_epoch_start(0)
    return model


def _grads(model: Comp, batch, terms_wanted: tuple[str, ...] | None = None) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    out = model(batch.features, batch.available, batch.mask)
    terms = model.loss(out, batch.labels, batch.mask, batch.available)
    sum(v for k, v in terms.items() if terms_wanted is None or k in terms_wanted).backward()
    return {name: (None if p.grad is None else p.grad.clone()) for name, p in model.named_parameters()}


def _has_grad(grads: dict, prefix: str) -> bool:
    return any(g is not None and g.abs().sum() > 0 for name, g in grads.items() if name.startswith(prefix))


def test_published_preset_selects_every_published_value() -> None:
    for name, (_, published) in CHOICES.items():
        assert PUBLISHED[name] == published, name
    assert PUBLISHED["temperature"] == 1.0 and PUBLISHED["disentangle_weight"] == 1.0 and PUBLISHED["reverse_weight"] == 1.0
    config = build_run_config("comp", "synthetic", config_file="published")
    assert {k: config.model[k] for k in PUBLISHED} == PUBLISHED


def test_published_preset_parameter_count() -> None:
    """Widths 73/100/100, hidden 256, depth 4, 2 heads: the published code has 7,527,155 parameters.

    421,734 of them are never used (the level-2 out-projections ``prop_proj_rev_*_2``, 3 x 139,808, and
    the level-2 generators' ``proj_n``, 3 x 770); the preset has no unused parameters, and its K x hidden
    learned prototypes replace the published sequence-length MLP ``proj_n`` (3 x (2,560 - 770) = 5,370 more).
    """
    spec = DataSpec(("audio", "text", "video"), (73, 100, 100), "regression", 0)
    published = create_model("comp", spec, PUBLISHED)
    assert _count(published) == 7_527_155 - 421_734 + 5_370
    assert _count(create_model("comp", spec, {})) == 9_664_458  # imer defaults


@pytest.mark.parametrize(
    ("switch", "holder", "check"),
    [
        ("block_style", lambda m: m.streams["a"].block1, lambda mod: isinstance(mod, PlainTransformer)),
        ("unimodal_head", lambda m: m.streams["a"].head, lambda mod: isinstance(mod, torch.nn.Linear)),
        ("prompt_generator", lambda m: m.streams["a"].generator.query, lambda mod: isinstance(mod, torch.nn.Identity)),
        ("level2_generator", lambda m: m.streams["a"], lambda mod: hasattr(mod, "generator2")),
        ("carry_projection", lambda m: m.streams["a"].out1, lambda mod: not isinstance(mod, torch.nn.Linear)),
        ("fusion_head", lambda m: m.fusion, lambda mod: isinstance(mod[0], torch.nn.Linear) and mod[0].out_features == 3 * SMALL["hidden"]),
        ("reverse_target", lambda m: m.streams["a"], lambda mod: not hasattr(mod, "private_head")),
    ],
)
def test_architecture_switches_change_the_parameters(switch, holder, check) -> None:
    ds = _data(dims=ABC)
    imer_value, published = CHOICES[switch]
    ours, theirs = _model(ds, **{switch: imer_value}), _model(ds, **{switch: published})
    assert _count(ours) != _count(theirs), switch
    assert check(holder(theirs)) and not check(holder(ours)), switch


def test_plain_blocks_have_no_layernorm_and_unit_feed_forward() -> None:
    h, heads = 16, 2
    plain, prenorm = PlainTransformer(h, 2, heads, 0.5), MaskedTransformer(h, 2, heads, 0.5)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in plain.modules())
    assert any(isinstance(m, torch.nn.LayerNorm) for m in prenorm.modules())
    per_layer = 3 * (h * h + h) + 2 * (h * h + h)  # q, k, v; feed-forward h -> h -> h; no output projection
    assert _count(plain) == 2 * per_layer
    x, valid = torch.randn(3, 5, h), torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5])
    out = plain.eval()(x, valid)
    assert torch.all(out[~valid] == 0) and torch.isfinite(out).all()
    garbage = x.clone()
    garbage[~valid] = 1e4
    torch.testing.assert_close(plain(garbage, valid), out)


def test_separate_level2_generator_shares_only_the_prototypes() -> None:
    ds = _data()
    model = _model(ds, level2_generator="separate").eval()
    stream = model.streams[model.modalities[0]]
    assert sum(1 for name, _ in stream.named_parameters() if "prototypes" in name) == 1
    batch = _batch(ds, size=4)
    grads = _grads(model, batch)
    name = model.modalities[0]
    assert _has_grad(grads, f"streams.{name}.generator2.") and _has_grad(grads, f"streams.{name}.generator.")
    with torch.no_grad():
        before = model(batch.features, batch.available, batch.mask)
        for p in stream.generator2.parameters():
            p.add_(torch.randn_like(p))
        after = model(batch.features, batch.available, batch.mask)
    torch.testing.assert_close(before.aux[f"prompt1_{name}"], after.aux[f"prompt1_{name}"])
    assert not torch.allclose(before.aux[f"prompt2_{name}"], after.aux[f"prompt2_{name}"])


def _disentangle(ds, **overrides) -> tuple[Comp, torch.Tensor, object]:
    model = _model(ds, **overrides).eval()
    batch = _batch(ds, size=5)
    out = model(batch.features, batch.available, batch.mask)
    return model, out, batch


def test_js_reduction_sum_scales_the_js_term_by_the_width() -> None:
    ds = _data()
    mean_model, out, batch = _disentangle(ds)
    sum_model = _model(ds, js_reduction="sum").eval()
    valid = out.aux["valid"]
    shared, private = out.aux["shared"], out.aux["private"]
    js = sum(
        torch.where(valid[..., i] & valid[..., j], bernoulli_js(shared[..., i, :], shared[..., j, :]).mean(-1), torch.zeros(())).sum()
        / (valid[..., i] & valid[..., j]).sum()
        for i in range(3)
        for j in range(i + 1, 3)
    )
    difference = sum_model._disentangle_loss(shared, private, valid) - mean_model._disentangle_loss(shared, private, valid)
    torch.testing.assert_close(difference, (SMALL["hidden"] - 1) * js)


def test_private_shared_terms_per_pair_counts_each_modality_once_per_pair() -> None:
    ds = _data()  # every modality present: each is in M - 1 = 2 pairs
    once, out, _ = _disentangle(ds)
    per_pair = _model(ds, private_shared_terms="per_pair").eval()
    shared, private, valid = out.aux["shared"], out.aux["private"], out.aux["valid"]
    cos = sum(F.cosine_similarity(private[..., j, :], shared[..., j, :], dim=-1).abs()[valid[..., j]].mean() for j in range(3))
    difference = per_pair._disentangle_loss(shared, private, valid) - once._disentangle_loss(shared, private, valid)
    torch.testing.assert_close(difference, cos)


def test_reverse_target_published_goes_through_the_shared_blocks_and_head() -> None:
    ds = _data("regression", dims=ABC)
    batch = _batch(ds, size=4)
    normal = _grads(_stage1_model(ds), batch, ("reverse",))
    published = _grads(_stage1_model(ds, reverse_target="published"), batch, ("reverse",))
    assert _has_grad(normal, "streams.a.private_head.") and not _has_grad(normal, "streams.a.head.")
    assert _has_grad(published, "streams.a.head.") and _has_grad(published, "streams.a.block2.")
    model = _stage1_model(ds, reverse_target="published")
    zeros, everywhere = torch.zeros(1, 20000), torch.ones(1, 20000, dtype=torch.bool)
    torch.manual_seed(0)
    clamped = model._reverse_loss(zeros, zeros, everywhere)  # E[min(1.5 |z|, 3)^2] ~ 2.1
    torch.manual_seed(0)
    plain = _stage1_model(ds)._reverse_loss(zeros, zeros, everywhere)  # E[z^2] = 1
    assert 0.95 < plain < 1.05 and 2.0 < clamped < 2.2


def test_recon_stages_joint_drops_reconstruction_in_the_warmup() -> None:
    ds = _data()
    batch = _batch(ds, size=4)
    for value, in_warmup in (("both", True), ("joint", False)):
        model = _stage1_model(ds, recon_stages=value)
        out = model(batch.features, batch.available, batch.mask)
        assert ("recon" in model.loss(out, batch.labels, batch.mask, batch.available)) is in_warmup
        model.on_epoch_start(3)
        out = model(batch.features, batch.available, batch.mask)
        assert "recon" in model.loss(out, batch.labels, batch.mask, batch.available)


def test_warmup_encoders_leaves_projections_and_fusion_untrained() -> None:
    ds = _data(dims=ABC)
    batch = _batch(ds, _drop(ds, 0.3), size=4)
    full = _grads(_stage1_model(ds), batch)
    encoders = _grads(_stage1_model(ds, warmup="encoders"), batch)
    for part in ("fusion.", "final.", "coordinator.", "streams.a.in1.", "streams.a.out1.", "streams.a.in2."):
        assert not _has_grad(encoders, part), part
    assert _has_grad(full, "fusion.") and _has_grad(full, "streams.a.in1.")
    assert _has_grad(encoders, "streams.a.block1.") and _has_grad(encoders, "streams.a.head.")
    model = _stage1_model(ds, warmup="encoders").eval()
    out = model(batch.features, batch.available, batch.mask)
    valid = out.aux["valid"].float()
    mean = sum(out.modality_predictions[m] * valid[..., j : j + 1] for j, m in enumerate(model.modalities)) / valid.sum(-1, keepdim=True).clamp(min=1)
    torch.testing.assert_close(out.prediction[batch.mask], mean[batch.mask])


def test_published_modulator_direction_is_the_bounded_published_formula() -> None:
    present = torch.ones(5, 3, dtype=torch.bool)
    assert torch.equal(published_weights(torch.full((5, 3), 0.4), present, 0.5), torch.ones(5, 3))
    errors = torch.tensor([[1.0, 0.0, 0.5], [2.0, 0.5, 0.5], [1.5, 1.0, 0.0], [1.0, 1.0, 1.0], [3.0, 0.0, 2.0]])
    w = published_weights(errors, present, 0.9)
    diff = errors[:, 0] - errors[:, 1]  # pair (audio, text): w = 1 - W / S, unclipped here
    expected = 1 - diff / diff.sum()
    other = errors[:, 0] - errors[:, 2]
    expected = (expected + (1 - other / other.sum()).clamp(0.1, 1.9)) / 2
    torch.testing.assert_close(w[:, 0], expected)
    wild = published_weights(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0 + 1e-7, 0.0]]), present[:2], 0.5)
    assert torch.isfinite(wild).all() and (wild >= 0.5).all() and (wild <= 1.5).all()  # S ~ 0: clipped, not huge
    weaker = modulator_weights(errors, present, 0.5, "weaker")
    assert not torch.allclose(weaker, modulator_weights(errors, present, 0.5, "published"))
    lonely = present.clone()
    lonely[0, 1:] = False
    assert torch.equal(published_weights(errors, lonely, 0.5)[0], torch.ones(3))


@pytest.mark.parametrize("scope", ["upstream", "generator"])
def test_modulator_scope_decides_which_gradients_change(scope: str) -> None:
    ds = _data("regression")
    model = _model(ds, modulator_scope=scope).eval()
    batch = _batch(ds, size=4)
    modulated = _grads(model, batch)
    model.zero_grad(set_to_none=True)
    out = model(batch.features, batch.available, batch.mask)
    terms = model.loss(out, batch.labels, batch.mask, batch.available)
    out.aux["modulator_weights"].fill_(1.0)
    sum(terms.values()).backward()
    neutral = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    changed = {name for name in neutral if not torch.allclose(modulated[name], neutral[name], rtol=1e-5, atol=1e-7)}
    assert any(".prototypes" in name for name in changed)
    upstream = {name for name in changed if name.startswith("embed.") or ".shared." in name}
    assert bool(upstream) is (scope == "upstream")


def test_invalid_switch_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="block_style"):
        build_run_config("comp", "synthetic", overrides=["block_style=postnorm"])
    with pytest.raises(ConfigError, match="modulator_strength"):
        build_run_config("comp", "synthetic", overrides=["modulator_strength=1.5"])


def test_published_preset_trains_across_the_stage_switch(tmp_path) -> None:
    ds = make_synthetic(task="regression", num_groups=10, min_len=3, max_len=6, seed=2)
    overrides = [f"{k}={v}" for k, v in {**SMALL, "stage_epoch": 1}.items()]
    overrides += ["train.epochs=2", "train.batch_size=4", "train.lr=1e-3", "missing.rate=0.3", "train.progress=false"]
    config = build_run_config("comp", "synthetic", config_file="published", overrides=overrides)
    train(config, tmp_path, dataset=ds)
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [h["stage"] for h in history] == ["warmup", "joint"]
    assert "task" not in history[0]["loss"] and "recon" not in history[0]["loss"] and "reverse" in history[0]["loss"]
    assert {"task", "recon"} <= set(history[1]["loss"])


def test_experiment_spec_repeats_the_published_preset_exactly() -> None:
    """``experiments/comp_published.toml`` spells the preset out (variants take overrides only); it must not drift."""
    spec = read_config_file(Path(__file__).resolve().parent.parent / "experiments" / "comp_published.toml")
    assert spec["variants"]["comp-published"]["set"] == PUBLISHED
