"""Every bad input ends in exit status 2 and one line ``imer: error: <where>: <what>``, never a traceback.

Grouped by where the mistake is: the command line, the config, a run folder,
and input data. Each case asserts the status, that stderr holds exactly one
error line (warnings aside) containing the expected text, and that no
traceback or hint towards unsafe loading is printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from imer.cli import main
from imer.data import make_synthetic, save_custom

UNSAFE_HINTS = ("allow_pickle", "weights_only", "Traceback")


def fails(capsys, argv: list[str], expected: str) -> str:
    """Run ``imer argv``; assert status 2 and one error line containing ``expected``; return that line."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if not line.startswith("imer: warning:")]
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("imer: error: "), captured.err
    assert expected in lines[0], lines[0]
    for hint in UNSAFE_HINTS:
        assert hint not in captured.err + captured.out
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad") / "run"
    assert main(["train", "--method", "late-fusion", "--dataset", "synthetic", "--epochs", "2", "--set", "hidden=8", "--no-progress", "--out", str(out)]) == 0
    return out


@pytest.fixture
def broken(run, tmp_path):
    """A copy of the trained run to damage."""

    def copy() -> Path:
        target = tmp_path / "copy"
        target.mkdir()
        for f in run.iterdir():
            (target / f.name).write_bytes(f.read_bytes())
        return target

    return copy


def small_dataset(task: str = "classification"):
    return make_synthetic(task=task, num_groups=12, min_len=2, max_len=4, dims={"audio": 3, "text": 4, "video": 2}, seed=3)


def custom_file(tmp_path: Path, task: str = "classification", **changes) -> Path:
    """A custom-format .npz with some arrays replaced (``None`` removes a key)."""
    path = tmp_path / "base.npz"
    save_custom(small_dataset(task), path)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value(arrays) if callable(value) else value
    out = tmp_path / "data.npz"
    np.savez(out, **arrays)
    return out


def train_argv(dataset, out, *extra) -> list[str]:
    return ["train", "--method", "early-fusion", "--dataset", str(dataset), "--epochs", "1", "--no-progress", "--out", str(out), *extra]


# ----------------------------------------------------------------------------- command line
@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "command line: the following arguments are required: COMMAND"),
        (["train", "--method", "early-fusion"], "train: the following arguments are required: --dataset, --out"),
        (["evaluate", "--model", "x", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["train", "--method", "early-fusion", "--dataset", "synthetic", "--out", "x", "--epochs", "abc"], "train: argument --epochs: invalid int value: 'abc'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["train", "--method", "nope", "--dataset", "synthetic", "--out", "x"], "unknown method 'nope'"),
        (["train", "--method", "early-fusion", "--dataset", "nosuchset", "--out", "x"], "data.name: unknown dataset 'nosuchset'"),
    ],
)
def test_command_line(capsys, argv, expected):
    fails(capsys, argv, expected)


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "setting, expected",
    [
        ("hidden=abc", "model.hidden: must be an integer, got 'abc'"),
        ("hidden=0", "model.hidden: must be >= 1, got 0"),
        ("hidden=2.5", "model.hidden: must be an integer, got 2.5"),
        ("train.lr=fast", "train.lr: must be a number, got 'fast'"),
        ("train.lr=-1", "train.lr: must be > 0"),
        ("train.lr=nan", "train.lr: must be > 0, got nan"),
        ("dropout=2", "model.dropout: must be in [0, 1)"),
        ("seed=2**40", "seed: must be an integer, got '2**40'"),
        ("seed=-1", "seed: must be in [0, 4.29497e+09]"),
        ("data.options.bogus=1", "data.options.bogus: dataset 'synthetic' has no option 'bogus'"),
        ("data.options.num_groups=many", "data.options.num_groups: must be an integer"),
        ("bogus=1", "--set: unknown key 'bogus'"),
        ("model.bogus=1", "model.bogus: method 'early-fusion' has no option 'bogus'"),
        ("train.select_metric=bogus", "train.select_metric: unknown value 'bogus'"),
        ("train.optimizer=rmsprop", "train.optimizer: unknown value 'rmsprop'"),
        ("train.batch_size=0", "train.batch_size: must be >= 1"),
        ("train.device=gpu", "train.device: must be cpu, cuda, cuda:N, mps or auto"),
        ("missing.rate=1.5", "missing.rate: must be in [0, 1]"),
        ("train.progress=maybe", "train.progress: must be true or false"),
        ("fusion=sum", "model.fusion: unknown value 'sum'; choose one of concat, mean"),
        ("regression_loss=huber", "model.regression_loss: unknown value 'huber'; choose one of mse, l1"),
        ("noequals", "--set expects key=value"),
        ("method=comp", "method is chosen with --method"),
        ("data.options.split_fractions=[0.5]", "data.options.split_fractions: must be 3 non-negative fractions"),
        ("data.options.num_classes=1", "data.options.num_classes: must be >= 2"),
        ("data.options.dims={audio=0,text=3}", "modality 'audio' has shape (1215, 0), expected [1215, width] with width >= 1"),
        ("missing.test_condition=xyz", "missing.test_condition: unknown condition 'xyz'"),
    ],
)
def test_config_values(capsys, tmp_path, setting, expected):
    fails(capsys, train_argv("synthetic", tmp_path / "r", "--set", setting), expected)
    written = sorted(p.name for p in (tmp_path / "r").iterdir()) if (tmp_path / "r").exists() else []
    assert written == [], "nothing may be written before config and data are valid"


def test_select_metric_of_the_other_task_is_refused_before_training(capsys, tmp_path):
    fails(capsys, train_argv("synthetic", tmp_path / "r", "--set", "train.select_metric=acc2"), "train.select_metric: 'acc2' is not computed for classification")
    assert not (tmp_path / "r" / "history.jsonl").exists()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[train]\nlr = ", "not valid TOML"),
        ("this is not toml at all", "not valid TOML"),
        ("[bogus]\nx = 1\n", "unknown section 'bogus'"),
        ("[train]\nspeed = 3\n", "unknown option 'train.speed'"),
        ("[data]\noptions = 3\n", "'data.options' must be a table"),
    ],
)
def test_config_files(capsys, tmp_path, text, expected):
    path = tmp_path / "c.toml"
    path.write_text(text)
    fails(capsys, train_argv("synthetic", tmp_path / "r", "--config", path), expected)


def test_binary_and_missing_config_files(capsys, tmp_path):
    binary = tmp_path / "c.toml"
    binary.write_bytes(bytes(range(256)))
    fails(capsys, train_argv("synthetic", tmp_path / "r", "--config", binary), "not a text file")
    fails(capsys, train_argv("synthetic", tmp_path / "r", "--config", tmp_path / "absent.toml"), "config file not found")


def test_inline_table_is_accepted_for_gcnet_features():
    from imer.config import build_run_config

    config = build_run_config("early-fusion", "iemocap4", overrides=['data.options.features={audio="a",text="t"}'])
    assert config.data.options["features"] == {"audio": "a", "text": "t"}


def test_feature_table_given_as_plain_text_says_how_to_write_it(capsys, tmp_path):
    fails(capsys, train_argv("iemocap4", tmp_path / "r", "--set", "data.options.features=audio:a"), 'data.options.features: must be a table like {name="value"}')


# ----------------------------------------------------------------------------- run folders
def test_run_folder_missing(capsys, tmp_path):
    fails(capsys, ["evaluate", "--model", tmp_path / "nothing"], "run folder not found")


def test_truncated_config_json(capsys, broken):
    run = broken()
    (run / "config.json").write_text((run / "config.json").read_text()[:40])
    fails(capsys, ["evaluate", "--model", run], "config.json: run config is not valid JSON")


def test_config_json_with_bad_value(capsys, broken):
    run = broken()
    (run / "config.json").write_text((run / "config.json").read_text().replace('"lr": 0.001', '"lr": "fast"'))
    fails(capsys, ["evaluate", "--model", run], "config.json: train.lr: must be a number")


def test_missing_weights(capsys, broken):
    run = broken()
    (run / "model.safetensors").unlink()
    fails(capsys, ["evaluate", "--model", run], "model.safetensors missing")


def test_corrupt_weights(capsys, broken):
    run = broken()
    (run / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    fails(capsys, ["evaluate", "--model", run], "not a valid safetensors weights file")


def test_crafted_huge_header(capsys, broken):
    run = broken()
    (run / "model.safetensors").write_bytes((2**62).to_bytes(8, "little") + b"{}")
    fails(capsys, ["predict", "--model", run, "--input", "x.npz", "--out", run / "p.csv"], "not a valid safetensors weights file (bad header)")


def test_weights_of_wrong_shape(capsys, broken):
    run = broken()
    from safetensors.torch import load_file

    weights = load_file(str(run / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = torch.zeros(3, 3)
    save_file(weights, str(run / "model.safetensors"))
    fails(capsys, ["evaluate", "--model", run], f"tensor '{name}' has shape (3, 3)")


def test_bad_scaler(capsys, broken):
    run = broken()
    (run / "scaler.npz").write_text("not an archive")
    fails(capsys, ["evaluate", "--model", run], "scaler.npz: not a .npz archive")
    np.savez(run / "scaler.npz", mean_audio=np.zeros(24, np.float32))
    fails(capsys, ["evaluate", "--model", run], "'mean_text' is missing or not a finite float vector")


def test_bad_run_spec(capsys, broken):
    run = broken()
    (run / "run_spec.json").write_text('{"modalities": ["a"], "dims": [1, 2], "task": "classification", "num_classes": 4}')
    fails(capsys, ["evaluate", "--model", run], "run_spec.json: inconsistent modalities/dims")


def test_training_into_a_finished_run_is_refused(capsys, run):
    before = (run / "metrics.json").read_bytes()
    fails(capsys, train_argv("synthetic", run), "already holds a finished run (metrics.json); pass --resume to continue it, --overwrite")
    assert (run / "metrics.json").read_bytes() == before


def test_training_over_an_interrupted_run_is_refused_without_overwrite(capsys, broken, tmp_path):
    run = broken()
    (run / "metrics.json").unlink()
    fails(capsys, train_argv("synthetic", run, "--set", "hidden=8"), "already holds an interrupted run (checkpoint.pt)")
    assert (run / "checkpoint.pt").is_file()


def test_resume_with_fewer_epochs_is_refused(capsys, broken):
    run = broken()
    argv = ["train", "--method", "late-fusion", "--dataset", "synthetic", "--set", "hidden=8", "--no-progress", "--out", run, "--resume", "--epochs", "1"]
    fails(capsys, argv, "already trained 2 epochs, more than the 1 asked for")


def test_resume_of_a_finished_run_without_checkpoint(capsys, broken):
    run = broken()
    (run / "checkpoint.pt").unlink()
    argv = ["train", "--method", "late-fusion", "--dataset", "synthetic", "--set", "hidden=8", "--no-progress", "--out", run, "--resume", "--epochs", "5"]
    fails(capsys, argv, "the finished run has no checkpoint.pt to continue from")


def test_damaged_checkpoint_on_resume(capsys, broken):
    run = broken()
    (run / "checkpoint.pt").write_bytes(b"garbage")
    argv = ["train", "--method", "late-fusion", "--dataset", "synthetic", "--set", "hidden=8", "--no-progress", "--out", run, "--resume", "--epochs", "5"]
    fails(capsys, argv, "checkpoint.pt: damaged or not an imer checkpoint")


def test_resume_and_overwrite_together(capsys, tmp_path):
    fails(capsys, train_argv("synthetic", tmp_path / "r", "--resume", "--overwrite"), "--resume and --overwrite contradict each other")


# ----------------------------------------------------------------------------- input data
@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"labels": lambda a: a["labels"][:, None]}, "labels have shape (32, 1), expected one label per utterance, shape (N,); take labels[:, 0]"),
        ({"labels": lambda a: np.eye(4)[a["labels"]]}, "for one-hot rows use labels.argmax(axis=1)"),
        ({"labels": lambda a: a["labels"] + 0.5}, "classification labels must be whole class indices"),
        ({"labels": lambda a: np.array(["x"] * len(a["labels"]))}, "labels are <U1; give class indices"),
        ({"x_video": lambda a: np.where(np.arange(len(a["x_video"]))[:, None] % 7 == 3, np.inf, a["x_video"])}, "modality 'video' has infinite values in 5 utterance(s) where it is present: 'dlg0000_3'"),
        ({"x_text": lambda a: a["x_text"][:, :2].astype(str)}, "features of 'text' are <U"),
        ({"group_ids": None}, "missing key(s) ['group_ids']"),
        ({"x_audio": None}, "feature array(s) ['x_audio'] missing"),
        ({"format": np.array("something-else")}, "is not 'imer-dataset-v1'"),
        ({"split": None}, "needs a 'split' or a 'fold' array"),
    ],
)
def test_custom_dataset(capsys, tmp_path, changes, expected):
    fails(capsys, train_argv(custom_file(tmp_path, **changes), tmp_path / "r"), expected)


def test_non_zip_npz(capsys, tmp_path):
    path = tmp_path / "data.npz"
    path.write_text("a,b,c\n1,2,3\n")
    fails(capsys, train_argv(path, tmp_path / "r"), "data.npz: not a .npz archive")


def test_npz_with_object_arrays(capsys, tmp_path):
    path = custom_file(tmp_path, speakers=np.array([{"who": 1}] * 120, dtype=object))
    fails(capsys, train_argv(path, tmp_path / "r"), "array 'speakers' holds Python objects (dtype=object)")


def test_uncentred_regression_labels(capsys, tmp_path):
    path = custom_file(tmp_path, "regression", labels=lambda a: np.clip(np.round(a["labels"]) + 3, 1, 5))
    fails(capsys, train_argv(path, tmp_path / "r"), "regression labels lie in [1, 5], but acc2, f1 and acc7 read the sign")


def test_modality_absent_in_all_training_rows(capsys, tmp_path):
    def no_video_in_train(a):
        available = a["available"].copy()
        available[a["split"] == "train", 2] = False
        return available

    path = custom_file(tmp_path, available=no_video_in_train)
    fails(capsys, train_argv(path, tmp_path / "r"), "modality 'video' is absent in every training utterance")


def test_data_info_takes_only_data_settings(capsys):
    fails(capsys, ["data", "info", "--dataset", "synthetic", "--set", "hidden=3"], "'hidden=3' is not a data setting")


@pytest.mark.parametrize(
    "arrays, expected",
    [
        ({"x_text": np.zeros((3, 7))}, "'x_text' has shape (3, 7), expected (3, 32)"),
        ({"x_text": np.zeros((0, 32))}, "has no rows; there is nothing to predict"),
        ({"x_text": np.where(np.arange(4)[:, None] >= 2, np.inf, np.zeros((4, 32)))}, "'x_text' has infinite values in rows 2, 3"),
        ({"x_text": np.where(np.arange(32) == 0, np.nan, np.zeros((2, 32)))}, "NaN in only some columns of rows 0, 1"),
        ({"x_text": np.full((2, 32), np.nan)}, "rows 0, 1 have no modality at all"),
        ({"x_text": np.zeros((2, 32)), "x_smell": np.zeros((2, 3))}, "unknown modality array(s) ['x_smell']"),
        ({"features": np.zeros((2, 32))}, "no feature array"),
        ({"x_text": np.zeros((2, 32)), "available": np.ones((2, 2), bool)}, "'available' has shape (2, 2)"),
        ({"x_text": np.zeros((2, 32)), "utterance_ids": np.array(["a"])}, "'utterance_ids' has shape (1,), expected (2,)"),
        ({"x_text": np.array([[{"a": 1}]], dtype=object)}, "array 'x_text' holds Python objects"),
    ],
)
def test_predict_input(capsys, run, tmp_path, arrays, expected):
    path = tmp_path / "in.npz"
    np.savez(path, **arrays)
    fails(capsys, ["predict", "--model", run, "--input", path, "--out", tmp_path / "p.csv"], expected)
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "empty table; the first line must name the columns"),
        ("text_0,smell_0\n1,2\n", "unknown column(s) ['smell_0']"),
        ("text_0,text_1\n1\n", "line 2 has a different number of cells than the header"),
        ("text_0,text_1\n1,abc\n", "line 2 has a non-numeric 'text' feature"),
        ("utterance_id\nu1\n", "no feature array"),
        ("text_0,text_1\n1,2\n", "'x_text' has shape (1, 2), expected (1, 32)"),
    ],
)
def test_predict_csv_table(capsys, run, tmp_path, text, expected):
    path = tmp_path / "in.csv"
    path.write_text(text)
    fails(capsys, ["predict", "--model", run, "--input", path, "--out", tmp_path / "p.csv"], expected)


def test_predict_input_not_a_zip(capsys, run, tmp_path):
    path = tmp_path / "in.npz"
    path.write_bytes(b"\x93NUMPY not really")
    fails(capsys, ["predict", "--model", run, "--input", path, "--out", tmp_path / "p.csv"], "in.npz: not a .npz archive")


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--missing-rates", "0.2,1.2"], "--missing-rates: must be in [0, 1], got 1.2"),
        (["--missing-rates", "0.2,x"], "cannot read '0.2,x' as a comma-separated list of float"),
        (["--missing-rates", "0.2", "--methods", "early-fusion,nope"], "nope on synthetic: unknown method 'nope'"),
        (["--missing-rates", "0.2", "--set", "late-fusion:hidden=abc"], "late-fusion on synthetic: model.hidden: must be an integer"),
    ],
)
def test_sweep_is_checked_before_any_cell_runs(capsys, tmp_path, extra, expected):
    argv = ["sweep", "--methods", "early-fusion,late-fusion", "--datasets", "synthetic", "--seeds", "0", "--out", tmp_path / "s", *extra]
    fails(capsys, argv, expected)
    assert not (tmp_path / "s").exists()


def test_report_of_nothing(capsys, tmp_path):
    fails(capsys, ["report", tmp_path / "none"], "not a directory")
    fails(capsys, ["report", tmp_path], "no finished runs")


def test_moved_data_folder_says_how_to_point_to_it(capsys, tmp_path):
    fails(capsys, ["data", "info", "--dataset", "cmu-mosi", "--data-dir", tmp_path / "gone"], "data folder not found; pass --data-dir PATH")


# ----------------------------------------------------------------------------- the process as a user sees it
def _imer(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "imer.cli", *argv], capture_output=True, text=True, env=env, timeout=300)


def test_process_prints_one_line_and_debug_shows_the_traceback(tmp_path):
    plain = _imer("train", "--method", "early-fusion", "--dataset", "synthetic", "--out", str(tmp_path / "r"), "--set", "hidden=abc")
    assert plain.returncode == 2
    assert plain.stderr.strip() == "imer: error: model.hidden: must be an integer, got 'abc'"
    debug = _imer("--debug", "train", "--method", "early-fusion", "--dataset", "synthetic", "--out", str(tmp_path / "r"), "--set", "hidden=abc")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_internal_errors_are_one_line_with_status_1(monkeypatch, capsys):
    from imer.cli import listing

    def broken(args):
        raise KeyError("oops")

    monkeypatch.setattr(listing, "cmd_list", broken)
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error (KeyError: 'oops'); rerun with --debug" in err


def test_pickled_feature_file_in_gcnet_layout_is_refused_without_hint(tmp_path):
    from imer.data.gcnet_layout import load_feature_file
    from imer.errors import DataError

    np.save(tmp_path / "u1.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError) as err:
        load_feature_file(tmp_path / "u1")
    assert "pickled Python objects" in str(err.value) and "allow_pickle" not in str(err.value)
