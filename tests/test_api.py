"""The in-memory API (the README example runs as written), train() leaving its config alone, tracking sinks."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

import imer
from imer.data import load_dataset
from imer.errors import IMERError
from imer.config import build_run_config
from imer.experiments.run import train

ROOT = Path(__file__).resolve().parent.parent


def readme_in_memory_example() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return next(b for b in blocks if "imer.Dataset.from_arrays" in b)


def test_readme_in_memory_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_in_memory_example(), "README.md", "exec"), namespace)
    model, same, ds = namespace["model"], namespace["same"], namespace["ds"]
    assert model.metrics["test"]["acc"] >= 0.8 and not model.metrics["warnings"]  # the example's easy data is learned (chance: 0.5)
    audio_only = model.predict({"audio": ds.features["audio"][:4], "text": np.full((4, 10), np.nan)})
    assert (audio_only == namespace["labels"][:4].astype(str)).sum() >= 3  # as printed: the predictions beside the labels
    assert (tmp_path / "runs/in-memory/model.safetensors").is_file() and not (tmp_path / "runs/in-memory/checkpoint.pt").exists()
    assert model.metrics["method"] == "comp" and model.metrics["missing"]["train_rate"] == 0.3
    x = {"audio": ds.features["audio"][:7], "text": ds.features["text"][:7]}
    assert np.array_equal(model.predict(x), same.predict(x)) and set(model.predict(x)) <= {"0", "1"}
    proba = same.predict_proba(x)
    assert proba.shape == (7, 2) and np.allclose(proba.sum(axis=1), 1)
    assert same.evaluate(ds)["test"]["acc"] == pytest.approx(model.metrics["test"]["acc"])
    with pytest.raises(IMERError, match="in-memory data"):
        imer.evaluate(str(tmp_path / "runs/in-memory"))
    other = imer.Dataset.from_arrays({m: v + 1 for m, v in ds.features.items()}, ds.labels, group_ids=ds.group_ids)
    with pytest.raises(IMERError, match="not the one the run was trained on"):
        same.evaluate(other)
    temporary = model.run_dir
    del model, namespace
    import gc

    gc.collect()
    assert not temporary.exists()


def test_from_arrays_infers_task_classes_groups_and_split():
    labels = np.array(["sad", "happy"] * 10)
    x = {"a": np.arange(40, dtype=float).reshape(20, 2), "b": np.ones((20, 3))}
    x["b"][3] = np.nan
    ds = imer.Dataset.from_arrays(x, labels)
    assert ds.task == "classification" and ds.class_names == ["happy", "sad"] and ds.labels[0] == 1
    assert not ds.available[3, 1] and ds.available[3, 0] and (ds.split == "test").sum() == 4
    reg = imer.Dataset.from_arrays(x, np.linspace(-1, 1, 20), group_ids=np.repeat(np.arange(5), 4))
    assert reg.task == "regression" and list(reg.order[:5]) == [0, 1, 2, 3, 0]


def test_train_does_not_change_the_callers_config(tmp_path):
    config = build_run_config("early-fusion", "synthetic", overrides=["data.options.num_groups=10", "data.options.max_len=4", "hidden=8"],
                              settings={"train.epochs": 1, "train.progress": False})
    before = copy.deepcopy(config)
    metrics = train(config, tmp_path / "run")
    assert config == before
    saved = json.loads((tmp_path / "run/config.json").read_text())
    assert saved["model"]["hidden"] == 8 and saved["seed"] == config.seed
    assert metrics["variant"] == "early-fusion" and len(metrics["config_hash"]) == 12


def _tiny(**settings):
    return build_run_config("late-fusion", "synthetic", overrides=["data.options.num_groups=10", "data.options.max_len=4", "hidden=8"],
                            settings={"train.epochs": 2, "train.progress": False, **settings})


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed (pip install 'imer[tensorboard]')")
def test_tensorboard_sink_logs_every_epoch_then_hparams_and_final_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(_tiny(**{"train.log_to": "tensorboard"}), tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run/tensorboard"))
    events.Reload()
    history = [json.loads(line) for line in (tmp_path / "run/history.jsonl").read_text().splitlines()]
    logged = events.Scalars("valid/acc")
    assert [e.step for e in logged] == [0, 1]
    assert [e.value for e in logged] == pytest.approx([h["valid"]["acc"] for h in history])
    assert "loss/total" in events.Tags()["scalars"] and "test/modality_acc/a" not in events.Tags()["scalars"]
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    (final,) = events.Scalars("final/test/acc")
    assert final.value == pytest.approx(metrics["test"]["acc"]) and final.step == metrics["selection"]["best_epoch"]
    from tensorboard.plugins.hparams import plugin_data_pb2

    hparams = [plugin_data_pb2.HParamsPluginData.FromString(content) for content in events.PluginTagToContent("hparams").values()]
    session = next(h.session_start_info for h in hparams if h.HasField("session_start_info"))
    assert session.hparams["model.hidden"].number_value == 8 and session.hparams["method"].string_value == "late-fusion"


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow not installed (pip install 'imer[mlflow]')")
def test_mlflow_sink_logs_params_every_epoch_and_final_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "imer-test")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a throw-away local store for the test
    from mlflow.tracking import MlflowClient

    train(_tiny(**{"train.log_to": "mlflow"}), tmp_path / "run", variant="lf-tiny")
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("imer-test").experiment_id])
    assert run.info.run_name == "lf-tiny" and run.info.status == "FINISHED"
    assert run.data.params["method"] == "late-fusion" and run.data.params["model.hidden"] == "8"
    history = [json.loads(line) for line in (tmp_path / "run/history.jsonl").read_text().splitlines()]
    logged = client.get_metric_history(run.info.run_id, "valid/acc")
    assert [m.step for m in logged] == [0, 1] and [m.value for m in logged] == pytest.approx([h["valid"]["acc"] for h in history])
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert run.data.metrics["final/test/acc"] == pytest.approx(metrics["test"]["acc"])
    assert run.data.metrics["final/best_epoch"] == metrics["selection"]["best_epoch"]


def test_unknown_sink_is_refused():
    with pytest.raises(Exception, match="log_to"):
        _tiny(**{"train.log_to": "wandb"})


def test_development_folds_run_holds_out_a_fold_and_never_reads_the_test_part(tmp_path):
    config = build_run_config("early-fusion", "synthetic", overrides=["data.options.num_groups=12", "data.options.max_len=4", "hidden=8",
                                                                      "data.dev_folds=3", "data.fold=2"], settings={"train.epochs": 1, "train.progress": False})
    metrics = train(config, tmp_path / "run")
    full = load_dataset("synthetic", None, num_groups=12, max_len=4)
    dev = full.development_folds(3, seed=0)
    held_out = set(dev.utterance_ids[dev.fold == 2])
    predicted = {row.split(",")[0] for row in (tmp_path / "run/predictions_test.csv").read_text().splitlines()[1:]}
    assert metrics["fold"] == 2 and predicted == held_out
    assert not predicted & set(full.utterance_ids[full.split == "test"])


def test_source_commit_is_read_once_per_process(monkeypatch):
    """A long sweep in one process records the commit of the code it imported, not the checkout's later HEAD."""
    import subprocess

    from imer.experiments import environment

    calls = []
    real = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a) or real(*a, **k))
    environment.source_commit.cache_clear()
    first = environment.source_commit()
    made = len(calls)
    assert environment.source_commit() == first and len(calls) == made
    environment.source_commit.cache_clear()


def test_model_score_and_short_reprs(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.array(["neg", "pos"])[rng.integers(0, 2, 120)]
    shift = (labels == "pos")[:, None] * 2.0
    ds = imer.Dataset.from_arrays({"audio": rng.normal(size=(120, 3)) + shift, "text": rng.normal(size=(120, 4)) + shift}, labels)
    assert repr(ds).startswith("Dataset('arrays': 120 utterances in 120 groups, 2 classes, modalities audio[3] text[4], split test=24 ")
    model = imer.fit("linear", ds, progress=False)
    assert repr(model).startswith("Model(method='linear', task='classification', modalities=['audio', 'text'], run_dir=")
    accuracy = model.score(ds)
    assert accuracy > 0.8 and accuracy == model.score(ds.features, labels) == model.score(ds.features, ds.labels)  # names or indices
    scores = np.linspace(-1, 1, 120)
    reg = imer.fit("linear", imer.Dataset.from_arrays({"a": scores[:, None] + rng.normal(0, 0.1, (120, 1)), "b": rng.normal(size=(120, 2))}, scores),
                   progress=False)
    assert 0.8 < reg.score({"a": scores[:, None], "b": np.zeros((120, 2))}, scores) <= 1  # R², as scikit-learn's regressors
    with pytest.raises(IMERError, match="labels"):
        model.score(ds.features)
    assert len(repr(load_dataset("synthetic"))) < 200 and "os" not in dir(imer) and {"fit", "train", "Dataset", "Model"} <= set(dir(imer))
