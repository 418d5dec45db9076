"""Runs never lose or mix data silently, files are strict JSON with the user's permissions, runs are portable."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest

from imer.cli import main
from imer.data import make_synthetic, save_custom
from imer.config import build_run_config
from imer.errors import ConfigError
from imer.io import atomic_write, dumps, loads, write_json


def strict(text: str):
    """Parse like a strict RFC 8259 parser: NaN / Infinity are errors."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))


def json_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".json", ".jsonl"))


def test_every_json_file_imer_writes_is_strict(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    assert main(["sweep", "--methods", "late-fusion", "--datasets", "synthetic", "--missing-rates", "0.3", "--seeds", "0", "--epochs", "2",
                 "--set", "hidden=8", "--conditions", "--no-progress", "--out", str(sweep)]) == 0
    assert main(["report", str(sweep), "--no-plots"]) == 0
    run = tmp_path / "run"
    assert main(["train", "--method", "late-fusion", "--dataset", "synthetic", "--epochs", "2", "--set", "hidden=8",
                 "--test-condition", "t", "--no-progress", "--out", str(run)]) == 0
    assert main(["evaluate", "--model", str(run), "--all-conditions", "--json", str(tmp_path / "eval.json")]) == 0
    np.savez(tmp_path / "in.npz", x_text=np.zeros((2, 32)))
    assert main(["predict", "--model", str(run), "--input", str(tmp_path / "in.npz"), "--out", str(tmp_path / "pred.json")]) == 0
    capsys.readouterr()
    assert main(["data", "info", "--dataset", "synthetic", "--json"]) == 0
    strict(capsys.readouterr().out)
    from imer.experiments.sweep import SweepSpec, run_sweep

    # a cell that fails records failures.jsonl and error.json
    run_sweep(SweepSpec(["late-fusion", "early-fusion"], ["synthetic"], [0.1], [0], epochs=1, overrides=["early-fusion:no_such_option=3"]),
              tmp_path / "failing", progress=False)
    files = json_files(tmp_path)
    names = {p.name for p in files}
    assert {"metrics.json", "history.jsonl", "config.json", "run_spec.json", "environment.json", "sweep.json", "report.json",
            "conditions.json", "eval.json", "pred.json", "failures.jsonl", "error.json"} <= names
    for path in files:
        for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
            strict(line)
    metrics = strict((run / "metrics.json").read_text())
    assert metrics["test"]["modality_acc"]["audio"] is None  # undefined (never present) is null, not NaN


def test_strict_encoder_turns_non_finite_into_null():
    assert loads(dumps({"a": float("nan"), "b": [np.float32(np.inf), np.int64(3)], "c": Path("x")})) == {"a": None, "b": [None, 3], "c": "x"}
    with pytest.raises(ValueError):
        loads('{"a": NaN}')


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_write(tmp_path / "b.bin", "wb") as fh:
            fh.write(b"1")
    finally:
        os.umask(old)
    for name in ("a.json", "b.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_run_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["train", "--method", "early-fusion", "--dataset", "synthetic", "--epochs", "1", "--set", "hidden=8", "--no-progress", "--out", str(tmp_path / "r")]) == 0
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "r").iterdir()}
    assert set(modes.values()) == {0o644}, modes


# ----------------------------------------------------------------------------- resume / overwrite
def test_overwrite_replaces_and_resume_extends(tmp_path):
    out = tmp_path / "r"
    base = ["train", "--method", "late-fusion", "--dataset", "synthetic", "--set", "hidden=8", "--no-progress", "--out", str(out)]
    assert main([*base, "--epochs", "2"]) == 0
    (out / "conditions.json").write_text("{}")  # a stale file of the old run
    assert main([*base, "--epochs", "1", "--overwrite"]) == 0
    assert not (out / "conditions.json").exists()
    assert json.loads((out / "metrics.json").read_text())["selection"]["epochs"] == 1
    assert main([*base, "--epochs", "3", "--resume"]) == 0
    assert len((out / "history.jsonl").read_text().splitlines()) == 3


# ----------------------------------------------------------------------------- stages scale with the budget
def test_stage_length_as_fraction_of_the_budget():
    config = build_run_config("momke", "synthetic", overrides=["stage_epochs=0.25"], settings={"train.epochs": 40})
    assert config.model["stage_epochs"] == 10
    config = build_run_config("comp", "synthetic", overrides=["stage_epoch=0.5"], settings={"train.epochs": 7})
    assert config.model["stage_epoch"] == 4


def test_stage_that_never_starts_is_warned_about():
    with pytest.warns(UserWarning, match=r"model.stage_epochs=150 but train.epochs=20: the stage after it never starts"):
        build_run_config("momke", "synthetic", overrides=["stage_epochs=150"], settings={"train.epochs": 20})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_run_config("momke", "synthetic", settings={"train.epochs": 20})  # the shipped default is a fraction


def test_stage_lengths_are_declared_not_found_by_name():
    import dataclasses

    from imer.fields import flagged
    from imer.models import get_model_class, list_models

    stages = {m: flagged(get_model_class(m).config_class, "stage") for m in list_models()}
    assert {m: s for m, s in stages.items() if s} == {"comp": ("stage_epoch",), "mmin": ("pretrain_epochs",), "momke": ("stage_epochs",),
                                                      "promise": ("encoder_epochs",)}
    for method, names in stages.items():  # every field named like a stage length is declared one, and only those
        fields = [f.name for f in dataclasses.fields(get_model_class(method).config_class)]
        assert set(names) == {name for name in fields if name.endswith(("_epoch", "_epochs"))}
    config = build_run_config("mmin", "synthetic", overrides=["pretrain_epochs=0.5"], settings={"train.epochs": 9})
    assert config.model["pretrain_epochs"] == 4


# ----------------------------------------------------------------------------- method options are declared
def test_every_method_option_is_declared_with_help_and_its_checks():
    """One field, one line: each option of each method carries its help, and a number its range, a string its choices."""
    import dataclasses

    from imer.models import get_model_class, list_models

    for method in list_models():
        for f in dataclasses.fields(get_model_class(method).config_class):
            assert f.metadata.get("help"), f"{method}.{f.name}: no help"
            if f.type in ("int", "float", "list[int]", "list[float]"):
                assert f.metadata.get("range") is not None, f"{method}.{f.name}: no range"
            if f.type == "str":
                assert f.metadata.get("choices"), f"{method}.{f.name}: no choices"


@pytest.mark.parametrize("method, setting, expected", [
    ("comp", "block_style=postnorm", "model.block_style: unknown value 'postnorm'; choose one of prenorm, plain"),
    ("comp", "depth=1", "model.depth: must be >= 2, got 1"),
    ("linear", "grid=[0.1, -1.0]", "model.grid: must be > 0, got -1.0"),
    ("context-fusion", "context_source=words", "model.context_source: unknown value 'words'; choose one of score, embedding, both"),
    ("promise", "cccl_bins=5", "model.cccl_bins: unknown value '5'; choose one of sign, 7"),
    ("mmin", "pretrain_epochs=0", "model.pretrain_epochs: must be >= 1, got 0"),
    ("promise", "heads=3", "model: method 'promise' cannot be built with these options: promise: hidden (64) must be divisible by heads (3)"),
])
def test_method_options_are_checked_against_their_declarations(method, setting, expected):
    with pytest.raises(ConfigError) as caught:
        build_run_config(method, "synthetic", overrides=[setting])
    assert str(caught.value) == expected


def test_a_method_config_built_in_python_is_checked_too():
    from imer.models.comp import CompConfig

    with pytest.raises(ConfigError, match="block_style: unknown value 'postnorm'; choose one of prenorm, plain"):
        CompConfig(block_style="postnorm")
    with pytest.raises(ConfigError, match=r"modulator_strength: must be in \[0, 1\), got 1.0"):
        CompConfig(modulator_strength=1.0)


# ----------------------------------------------------------------------------- model selection vs a constant predictor
def test_selection_no_better_than_constant_warns_and_is_recorded(tmp_path):
    dataset = make_synthetic(num_groups=30, min_len=2, max_len=4, dims={"audio": 3, "text": 3, "video": 3}, seed=0)
    dataset.labels[:] = 0  # every utterance in one class: a constant predictor is perfect
    path = tmp_path / "one.npz"
    save_custom(dataset, path)
    from imer.experiments.run import train

    config = build_run_config("early-fusion", str(path), overrides=["hidden=4"], settings={"train.epochs": 1, "train.progress": False})
    with pytest.warns(UserWarning, match="no better than a constant prediction"):
        metrics = train(config, tmp_path / "r")
    assert metrics["selection"]["constant_baseline"]["valid"] == 1.0
    assert any("constant prediction" in w for w in metrics["warnings"])


# ----------------------------------------------------------------------------- portable runs
def test_run_with_relative_paths_works_from_elsewhere_and_after_moving_data(tmp_path, monkeypatch, capsys):
    data = tmp_path / "work" / "d.npz"
    data.parent.mkdir()
    save_custom(make_synthetic(num_groups=20, min_len=2, max_len=4, seed=0), data)
    monkeypatch.chdir(data.parent)
    assert main(["train", "--method", "early-fusion", "--dataset", "d.npz", "--epochs", "1", "--set", "hidden=8", "--no-progress", "--out", "run"]) == 0
    config = json.loads((data.parent / "run" / "config.json").read_text())
    assert config["data"]["name"] == str(data)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["evaluate", "--model", "work/run", "--condition", "t"]) == 0
    expected = capsys.readouterr().out
    moved = tmp_path / "elsewhere.npz"
    shutil.move(data, moved)
    assert main(["evaluate", "--model", "work/run", "--condition", "t"]) == 2
    assert main(["evaluate", "--model", "work/run", "--condition", "t", "--dataset", str(moved)]) == 0
    assert capsys.readouterr().out.split("\n", 1)[1] == expected.split("\n", 1)[1]


def test_imer_data_dir_is_recorded_resolved(monkeypatch, tmp_path):
    monkeypatch.setenv("IMER_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMER_DATA", ".")
    config = build_run_config("early-fusion", "cmu-mosi")
    assert config.data.data_dir == str(tmp_path.resolve())


# ----------------------------------------------------------------------------- self-explaining output
def test_predictions_say_which_modalities_were_used(tmp_path):
    out = tmp_path / "r"
    assert main(["train", "--method", "early-fusion", "--dataset", "synthetic", "--epochs", "1", "--set", "hidden=8", "--no-progress", "--out", str(out)]) == 0
    video = np.zeros((3, 28))
    video[1] = np.nan
    np.savez(tmp_path / "in.npz", x_text=np.zeros((3, 32)), x_video=video)
    assert main(["predict", "--model", str(out), "--input", str(tmp_path / "in.npz"), "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [(r["has_audio"], r["has_text"], r["has_video"]) for r in rows] == [("0", "1", "1"), ("0", "1", "0"), ("0", "1", "1")]
    header = next(csv.reader((out / "predictions_test.csv").open()))
    assert header[-3:] == ["has_audio", "has_text", "has_video"]


def test_data_info_table_and_data_options(capsys, tmp_path):
    assert main(["data", "info", "--dataset", "synthetic", "--set", "data.options.num_groups=20"]) == 0
    text = capsys.readouterr().out
    for needle in ("splits", "modalities", "width", "absent in data", "classes", "dialogues"):
        assert needle in text
    config = tmp_path / "c.toml"
    config.write_text("[data.options]\nnum_groups = 10\n[train]\nlr = 0.1\n")
    assert main(["data", "info", "--dataset", "synthetic", "--config", str(config), "--json"]) == 0
    assert sum(v["groups"] for v in json.loads(capsys.readouterr().out)["splits"].values()) == 10


def test_version_and_list(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    import imer

    assert capsys.readouterr().out.strip() == f"imer {imer.__version__}"
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert "Graph Completion Network" in text and "imer.models" not in text


def test_progress_is_one_plain_line_per_epoch_when_not_a_terminal(tmp_path, capsys):
    assert main(["train", "--method", "early-fusion", "--dataset", "synthetic", "--epochs", "3", "--set", "hidden=8", "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [line.split(":")[0] for line in err.splitlines() if line.startswith("epoch ")] == ["epoch 0 (1 of 3)", "epoch 1 (2 of 3)", "epoch 2 (3 of 3)"]


# ----------------------------------------------------------------------------- one place for model defaults
def test_shipped_configs_do_not_restate_model_defaults():
    """A method's model defaults live in its config dataclass; TOML files hold only deviations from them."""
    import dataclasses
    import tomllib

    from imer.config import CONFIG_ROOT
    from imer.models import get_model_class, list_models

    for method in list_models():
        if method == "comp":  # ComP's defaults are consolidated under issue 13
            continue
        defaults = dataclasses.asdict(get_model_class(method).config_class())
        for path in sorted((CONFIG_ROOT / method).glob("*.toml")):
            model = tomllib.loads(path.read_text()).get("model", {})
            restated = sorted(k for k, v in model.items() if defaults.get(k) == v)
            assert not restated, f"{path}: {restated} restate {method}'s dataclass defaults (keep them in one place)"


def test_data_info_reads_a_gcnet_label_pickle_beside_features(tmp_path, capsys):
    """The GCNet release layout: the label pickle sits beside features/, not under gcnet-meta/."""
    import pickle

    rng = np.random.default_rng(0)
    dialogues = {f"Ses0{s}_d{k}": [f"Ses0{s}_d{k}_u{j}" for j in range(3)] for s in range(1, 6) for k in range(2)}
    meta = [dialogues, {d: [j % 4 for j in range(3)] for d in dialogues}, {d: ["F", "M", "F"] for d in dialogues},
            {d: ["", "", ""] for d in dialogues}, [d for d in dialogues if not d.startswith("Ses05")], [d for d in dialogues if d.startswith("Ses05")]]
    (tmp_path / "labels.pkl").write_bytes(pickle.dumps(meta))
    for folder, width in (("fa", 3), ("ft", 5)):
        (tmp_path / "features" / folder).mkdir(parents=True)
        for utts in dialogues.values():
            for u in utts:
                np.save(tmp_path / "features" / folder / f"{u}.npy", rng.normal(size=width).astype(np.float32))
    argv = ["data", "info", "--dataset", "iemocap4", "--data-dir", str(tmp_path), "--json",
            "--set", "data.options.label_file=labels.pkl", "--set", 'data.options.features={audio="fa",text="ft"}']
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(argv) == 0
    finally:
        os.chdir(cwd)
    info = json.loads(capsys.readouterr().out)
    assert info["modalities"] == {"audio": 3, "text": 5} and info["utterances"] == 30 and sorted(info["folds"]) == ["1", "2", "3", "4", "5"]


def test_a_dataset_given_in_memory_needs_no_registered_name(tmp_path):
    from imer.config import RunConfig
    from imer.experiments.run import train

    config = RunConfig(method="early-fusion")
    config.data.name = "my-own-data"
    config.model = {"hidden": 4}
    config.train.epochs, config.train.progress = 1, False
    dataset = make_synthetic(num_groups=20, min_len=2, max_len=4, seed=0)
    assert train(config, tmp_path / "r", dataset=dataset)["dataset"] == "synthetic"
    np.savez(tmp_path / "in.npz", x_text=np.zeros((2, 32)))
    assert main(["predict", "--model", str(tmp_path / "r"), "--input", str(tmp_path / "in.npz"), "--out", str(tmp_path / "p.csv")]) == 0


def test_predict_from_a_csv_table(tmp_path):
    out = tmp_path / "r"
    assert main(["train", "--method", "early-fusion", "--dataset", "synthetic", "--epochs", "1", "--set", "hidden=8", "--no-progress", "--out", str(out)]) == 0
    rng = np.random.default_rng(0)
    header = ["utterance_id", *[f"text_{j}" for j in range(32)], *[f"video_{j}" for j in range(28)]]
    lines = [",".join(header)]
    for i in range(3):
        video = [""] * 28 if i == 1 else [f"{v:.3f}" for v in rng.normal(size=28)]  # row 1 has no video
        lines.append(",".join([f"u{i}", *[f"{v:.3f}" for v in rng.normal(size=32)], *video]))
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    np.savez(tmp_path / "in.npz", utterance_ids=np.array(["u0", "u1", "u2"]),
             x_text=np.loadtxt(tmp_path / "in.csv", delimiter=",", skiprows=1, usecols=range(1, 33)),
             x_video=np.genfromtxt(tmp_path / "in.csv", delimiter=",", skip_header=1, usecols=range(33, 61)))
    assert main(["predict", "--model", str(out), "--input", str(tmp_path / "in.csv"), "--out", str(tmp_path / "a.csv")]) == 0
    assert main(["predict", "--model", str(out), "--input", str(tmp_path / "in.npz"), "--out", str(tmp_path / "b.csv")]) == 0
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    rows = list(csv.DictReader((tmp_path / "a.csv").open()))
    assert [r["has_video"] for r in rows] == ["1", "0", "1"] and [r["utterance_id"] for r in rows] == ["u0", "u1", "u2"]
