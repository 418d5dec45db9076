"""The command line: help texts, train/evaluate/predict/data on synthetic data, clear errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from imer.cli import build_parser, main


def test_every_command_has_help(capsys):
    for argv in (["--help"], ["train", "--help"], ["evaluate", "--help"], ["predict", "--help"], ["data", "info", "--help"], ["data", "convert", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--missing-rate" in text and "--set" in text and "x_<modality>" in text


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(["train", "--method", "late-fusion", "--dataset", "synthetic", "--epochs", "3", "--missing-rate", "0.2", "--set", "hidden=16", "--no-progress", "--out", str(out)])
    assert code == 0
    return out


def test_train_writes_metrics_contract(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    for key in ("test", "valid", "missing_fraction", "method", "dataset", "seed"):
        assert key in metrics
    assert set(metrics["missing_fraction"]) >= {"train", "test"}
    assert json.loads((trained / "config.json").read_text())["model"]["hidden"] == 16


def test_evaluate_condition_and_json(trained, tmp_path, capsys):
    assert main(["evaluate", "--model", str(trained), "--condition", "at", "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["protocol"] == "at" and result["missing_fraction"] == pytest.approx(1 / 3)
    assert main(["evaluate", "--model", str(trained), "--all-conditions"]) == 0
    assert "average" in capsys.readouterr().out


def test_predict_with_missing_modalities(trained, tmp_path):
    rng = np.random.default_rng(0)
    video = rng.normal(size=(5, 28)).astype(np.float32)
    video[1] = np.nan  # absent for utterance 1
    path = tmp_path / "new.npz"
    np.savez(path, x_text=rng.normal(size=(5, 32)), x_video=video, utterance_ids=np.array([f"u{i}" for i in range(5)]))
    out = tmp_path / "pred.csv"
    assert main(["predict", "--model", str(trained), "--input", str(path), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["utterance_id"] for r in rows] == [f"u{i}" for i in range(5)]
    assert {"prediction", "p_class0", "p_class3"} <= set(rows[0])
    assert all(abs(sum(float(r[f"p_class{c}"]) for c in range(4)) - 1) < 1e-4 for r in rows)
    assert main(["predict", "--model", str(trained), "--input", str(path), "--out", str(tmp_path / "p.json")]) == 0
    assert len(json.loads((tmp_path / "p.json").read_text())) == 5


def test_predict_bad_input_is_reported(trained, tmp_path, capsys):
    path = tmp_path / "bad.npz"
    np.savez(path, x_text=np.zeros((3, 7)))
    assert main(["predict", "--model", str(trained), "--input", str(path), "--out", str(tmp_path / "o.csv")]) == 2
    assert "'x_text' has shape (3, 7), expected (3, 32)" in capsys.readouterr().err
    empty = tmp_path / "empty.npz"
    np.savez(empty, x_text=np.full((2, 32), np.nan))
    assert main(["predict", "--model", str(trained), "--input", str(empty), "--out", str(tmp_path / "o.csv")]) == 2
    assert "no modality at all" in capsys.readouterr().err


def test_data_info_and_convert_then_train_on_file(tmp_path, capsys):
    assert main(["data", "info", "--dataset", "synthetic", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["modalities"] == {"audio": 24, "text": 32, "video": 28}
    out = tmp_path / "syn.npz"
    assert main(["data", "convert", "--dataset", "synthetic", "--out", str(out)]) == 0
    assert main(["train", "--method", "early-fusion", "--dataset", str(out), "--epochs", "1", "--no-progress", "--out", str(tmp_path / "r")]) == 0


def test_user_errors_have_no_traceback(tmp_path, capsys):
    assert main(["train", "--method", "nope", "--dataset", "synthetic", "--out", str(tmp_path / "x")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["data", "info", "--dataset", "cmu-mosi", "--data-dir", str(tmp_path / "none")]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path)]) == 2
    assert "not a finished run directory" in capsys.readouterr().err


def test_parser_defaults_leave_config_alone():
    args = build_parser().parse_args(["train", "--method", "early-fusion", "--dataset", "synthetic", "--out", "x"])
    assert args.missing_rate is None and args.epochs is None and args.set == []


def test_every_model_command_takes_device(trained, tmp_path, capsys):
    """--device on train, evaluate, predict and sweep: cpu runs; an unknown device or an absent GPU is one error line before any work."""
    import torch

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "new.npz", x_text=rng.normal(size=(3, 32)), x_video=rng.normal(size=(3, 28)))
    sweep = ["sweep", "--methods", "late-fusion", "--datasets", "synthetic", "--missing-rates", "0.2", "--seeds", "0", "--epochs", "1",
             "--set", "data.options.num_groups=8", "--no-progress"]
    commands = {
        "train": ["train", "--method", "late-fusion", "--dataset", "synthetic", "--epochs", "1", "--set", "data.options.num_groups=8",
                  "--no-progress", "--out"],
        "evaluate": ["evaluate", "--model", str(trained), "--condition", "t", "--json"],
        "predict": ["predict", "--model", str(trained), "--input", str(tmp_path / "new.npz"), "--out"],
        "sweep": [*sweep, "--conditions", "--out"],
    }
    for name, argv in commands.items():
        target = tmp_path / f"{name}-cpu{'.json' if name in ('evaluate', 'predict') else ''}"
        assert main([*argv, str(target), "--device", "cpu"]) == 0, name
        assert target.exists()
        bad = [("tpu", "must be cpu, cuda, cuda:N, mps or auto")] + ([] if torch.cuda.is_available() else [("cuda", "no GPU is visible")])
        for device, message in bad:
            capsys.readouterr()
            out = tmp_path / f"{name}-{device}"
            assert main([*argv, str(out), "--device", device]) == 2, (name, device)
            err = capsys.readouterr().err
            assert err.startswith("imer: error:") and err.count("\n") == 1 and message in err, (name, err)
            assert not out.exists()


def test_table_titles_are_not_wrapped_to_the_table_width(trained, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["evaluate", "--model", str(trained), "--all-conditions"]) == 0
    out = capsys.readouterr().out
    assert f"{trained}: fixed conditions (test split)\n" in out  # one line, however narrow the table below it
