"""Trainer and runs: determinism, resume after interruption, selection, run directory contents."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch

from imer.data import make_synthetic
from imer.errors import ConfigError, IMERError
from imer.config import RunConfig, apply_override, build_run_config
from imer.experiments.inference import evaluate_run
from imer.experiments.run import train
from imer.runfolder.tensors import load_checkpoint, load_weights
from imer.training.trainer import CheckpointPolicy, Trainer


def _config(method="early-fusion", dataset="synthetic", epochs=4, **extra):
    overrides = [f"train.epochs={epochs}", "train.progress=false", "missing.rate=0.3", "hidden=16", *[f"{k}={v}" for k, v in extra.items()]]
    return build_run_config(method, dataset, overrides=overrides)


def _strip(metrics):
    return {k: v for k, v in metrics.items() if k not in ("seconds_per_epoch", "wall_seconds", "peak_rss_mb")}


def test_same_seed_same_numbers(tmp_path):
    a = train(_config(), tmp_path / "a")
    b = train(_config(), tmp_path / "b")
    c = train(_config(seed=1), tmp_path / "c")
    assert _strip(a) == _strip(b)
    assert a["test"] != c["test"]


def test_run_directory_contents(tmp_path):
    metrics = train(_config(method="late-fusion"), tmp_path / "r")
    for name in ("config.json", "environment.json", "metrics.json", "history.jsonl", "model.safetensors", "scaler.npz", "masks.npz", "predictions_test.csv", "checkpoint.pt"):
        assert (tmp_path / "r" / name).is_file(), name
    environment = json.loads((tmp_path / "r" / "environment.json").read_text())
    assert environment["torch_threads"] >= 1 and environment["openmp"].get("OMP_WAIT_POLICY") == os.environ.get("OMP_WAIT_POLICY")
    on_disk = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert on_disk["method"] == "late-fusion" and on_disk["dataset"] == "synthetic" and on_disk["seed"] == 0
    assert set(on_disk["test"]["modality_acc"]) == {"audio", "text", "video"}
    assert abs(on_disk["missing_fraction"]["test"] - 0.3) < 0.01 and abs(on_disk["missing_fraction"]["train"] - 0.3) < 0.01
    lines = (tmp_path / "r" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2, 3]
    assert "modality_acc" in json.loads(lines[0])["valid"]
    assert metrics["selection"]["best_epoch"] in range(4)
    # no test-set work during training; the stored valid numbers are those of the selected epoch
    best = json.loads(lines[metrics["selection"]["best_epoch"]])
    assert all("test" not in json.loads(line) for line in lines)
    assert best["valid"]["acc"] == pytest.approx(metrics["valid"]["acc"])
    assert metrics["selection"]["epochs_run"] == 4 and metrics["selection"]["stopped_early"] is False


def test_per_epoch_test_curves_behind_a_flag(tmp_path):
    tiny = make_synthetic(task="classification", num_groups=30, min_len=1, max_len=1, seed=0)
    metrics = train(_config(**{"train.eval_test_each_epoch": True}), tmp_path / "r", dataset=tiny)
    lines = [json.loads(line) for line in (tmp_path / "r" / "history.jsonl").read_text().splitlines()]
    assert all("test" in h for h in lines)
    assert lines[metrics["selection"]["best_epoch"]]["test"]["acc"] == pytest.approx(metrics["test"]["acc"])
    plain = train(_config(), tmp_path / "plain", dataset=tiny)
    assert _strip(plain)["test"] == _strip(metrics)["test"]  # evaluating test every epoch changes nothing


def test_early_stopping_on_validation(tmp_path):
    metrics = train(_config(epochs=40, **{"train.patience": 2, "train.lr": 0.3}), tmp_path / "r")
    sel = metrics["selection"]
    assert sel["stopped_early"] is True and sel["patience"] == 2
    assert sel["epochs_run"] == sel["best_epoch"] + 3 < 40
    lines = (tmp_path / "r" / "history.jsonl").read_text().splitlines()
    assert len(lines) == sel["epochs_run"]
    again = train(_config(epochs=40, **{"train.patience": 2, "train.lr": 0.3}), tmp_path / "r", resume=True)
    assert _strip(again) == _strip(metrics)  # resuming a stopped run trains nothing more


def test_checkpoint_interval_stages_and_end(tmp_path, monkeypatch):
    saved = []
    original = Trainer._checkpoint

    def record(self, epoch, best, history):
        saved.append(epoch)
        return original(self, epoch, best, history)

    monkeypatch.setattr(Trainer, "_checkpoint", record)
    tiny = make_synthetic(task="classification", num_groups=8, min_len=2, max_len=4, dims={"a": 3, "b": 4}, seed=0)
    config = _config(method="momke", epochs=7, stage_epochs=4, depth=1, **{"train.checkpoint_every": 3, "train.checkpoint_minutes": 0})
    train(config, tmp_path / "r", dataset=tiny)
    assert saved == [0, 2, 4, 5, 6]  # first epoch of each stage (0, 4), every 3rd epoch (2, 5), the last (6)


def test_evaluate_reproduces_training_numbers(tmp_path):
    metrics = train(_config(), tmp_path / "r")
    again = evaluate_run(tmp_path / "r")
    assert again["test"]["acc"] == pytest.approx(metrics["test"]["acc"])
    other = evaluate_run(tmp_path / "r", condition="v")
    assert other["protocol"] == "v" and other["missing_fraction"] == pytest.approx(2 / 3)


def test_resume_after_interruption_gives_same_result(tmp_path, monkeypatch):
    """Checkpoints every 2 epochs: the epoch after the last checkpoint is trained again, to the same numbers."""
    interval = {"train.checkpoint_every": 2, "train.checkpoint_minutes": 0}
    full = train(_config(epochs=6, dropout=0.3, **interval), tmp_path / "full")
    original = Trainer._train_epoch

    def interrupted(self, train_set, available, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(self, train_set, available, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_config(epochs=6, dropout=0.3, **interval), tmp_path / "cut")
    assert not (tmp_path / "cut" / "metrics.json").exists()
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    assert len((tmp_path / "cut" / "history.jsonl").read_text().splitlines()) == 3
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    resumed = train(_config(epochs=6, dropout=0.3, **interval), tmp_path / "cut", resume=True)
    assert _strip(resumed) == _strip(full)
    a, b = load_weights(tmp_path / "full" / "model.safetensors"), load_weights(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((tmp_path / "cut" / "history.jsonl").read_text().splitlines()) == 6


def test_default_checkpoint_policy_is_once_a_minute():
    """By default a checkpoint costs at most one write per minute of training, plus stage starts and the end."""
    policy = CheckpointPolicy(RunConfig().train.checkpoint_every, RunConfig().train.checkpoint_minutes)
    assert not policy.due(epoch=9, last_epoch=False, new_stage=False, seconds_since=59.0)
    assert policy.due(epoch=3, last_epoch=False, new_stage=False, seconds_since=60.0)
    assert policy.due(epoch=3, last_epoch=False, new_stage=True, seconds_since=0.0)
    assert policy.due(epoch=3, last_epoch=True, new_stage=False, seconds_since=0.0)


def test_finished_run_is_not_overwritten(tmp_path):
    train(_config(epochs=1), tmp_path / "r")
    with pytest.raises(IMERError, match="already holds a finished run"):
        train(_config(epochs=1), tmp_path / "r")


def test_published_selection_rule_is_labelled(tmp_path):
    metrics = train(_config(**{"train.selection": "test-published"}), tmp_path / "r")
    assert metrics["selection"]["rule"] == "test-published"


def test_regression_run_and_selection_metric(tmp_path):
    metrics = train(_config(dataset="synthetic-reg", **{"train.select_metric": "mae"}), tmp_path / "r")
    assert metrics["task"] == "regression" and metrics["selection"]["metric"] == "mae"
    assert {"acc2", "f1", "acc2_with_zero", "mae", "corr", "acc7"} <= set(metrics["test"])


def test_config_overrides_and_errors():
    config = RunConfig(method="early-fusion")
    apply_override(config, "hidden=64")
    apply_override(config, "train.lr=1e-4")
    apply_override(config, "epochs=7")
    apply_override(config, "data.options.feature_dir=/x")
    assert config.model["hidden"] == 64 and config.train.lr == 1e-4 and config.train.epochs == 7
    assert config.data.options["feature_dir"] == "/x"
    with pytest.raises(ConfigError, match="unknown key 'nonsense'"):
        apply_override(config, "nonsense=1")
    with pytest.raises(ConfigError, match="has no option"):
        apply_override(config, "model.depthx=3")
    with pytest.raises(ConfigError, match="unknown method"):
        build_run_config("no-such-method", "synthetic")


def test_set_none_is_a_word_for_string_options_and_unset_for_optional_ones():
    """``--set prompt_mask=none`` means the choice "none" (the option is a plain string); an optional option is unset."""
    config = RunConfig(method="comp")
    for assignment in ("prompt_mask=none", "model.coordinator_mask=NONE", "missing.test_rate=0.5", "missing.test_rate=null", "test_condition=none"):
        apply_override(config, assignment)
    assert config.model["prompt_mask"] == "none" and config.model["coordinator_mask"] == "NONE"
    assert config.missing.test_rate is None and config.missing.test_condition is None


def test_nan_loss_stops_with_clear_error(tmp_path):
    with pytest.raises(IMERError, match="non-finite"):
        train(_config(epochs=2, **{"train.lr": 1e30}), tmp_path / "r")


def test_resume_refuses_a_changed_config(tmp_path):
    train(_config(epochs=2), tmp_path / "r")
    with pytest.raises(IMERError, match="cannot resume, train.lr differs"):
        train(_config(epochs=2, **{"train.lr": 0.5}), tmp_path / "r", resume=True)
    with pytest.raises(IMERError, match="cannot resume, model.hidden differs"):
        train(build_run_config("early-fusion", "synthetic", overrides=["train.epochs=2", "train.progress=false", "missing.rate=0.3", "hidden=32"]), tmp_path / "r", resume=True)
    again = train(_config(epochs=2, **{"train.progress": True}), tmp_path / "r", resume=True)
    assert again["selection"]["epochs"] == 2


def test_reloaded_run_predicts_in_the_stage_of_its_selected_epoch(tmp_path, monkeypatch):
    from imer.experiments.loading import load_run
    from imer.models.late_fusion import LateFusion

    seen = []
    monkeypatch.setattr(LateFusion, "on_epoch_start", lambda self, epoch: seen.append(epoch), raising=False)
    metrics = train(_config(method="late-fusion", epochs=3), tmp_path / "r")
    best = metrics["selection"]["best_epoch"]
    assert seen == [0, 1, 2, best]
    seen.clear()
    load_run(tmp_path / "r")
    assert seen == [best]


@pytest.mark.parametrize("method", ["early-fusion", "linear"])
def test_console_history_and_metrics_number_epochs_alike(method, tmp_path, capsys):
    """Epochs count from 0 in the console (non-terminal), history.jsonl and metrics.json; linear names each candidate it fits."""
    from imer.cli import main

    run = tmp_path / "run"
    assert main(["train", "--method", method, "--dataset", "synthetic", "--epochs", "3", "--set", "data.options.num_groups=12",
                 "--out", str(run)]) == 0
    err = capsys.readouterr().err
    console = [(int(m.group(1)), int(m.group(2))) for m in re.finditer(r"^epoch (\d+) .*best epoch (\d+),", err, flags=re.M)]
    history = [json.loads(line)["epoch"] for line in (run / "history.jsonl").read_text().splitlines()]
    best = json.loads((run / "metrics.json").read_text())["selection"]["best_epoch"]
    assert [e for e, _ in console] == history == list(range(len(history))) and console[-1][1] == best
    if method == "linear":
        assert "each regularisation candidate is one 'epoch'" in err and err.count("(candidate: ") == len(history)
    else:
        assert len(history) == 3 and "epoch 2 (3 of 3)" in err
