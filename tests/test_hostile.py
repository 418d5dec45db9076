"""Hostile inputs, second round (issue 22): run folders that are not imer's, bad spec and config values, damaged
artefacts, predictions outside the task's range, paths out of their folder. Each asserts status 2 and one line
naming the input (``fails``), and that nothing of the user's or of a run was changed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import pytest

from imer.cli import main
from test_bad_inputs import broken, fails  # noqa: F401  (broken: a fixture, a copy of `run` to damage)


def _train(out: Path, *extra: str) -> list[str]:
    return ["train", "--method", "late-fusion", "--dataset", "synthetic", "--epochs", "2", "--set", "hidden=8", "--no-progress",
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "run"
    assert main(_train(out)) == 0
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# ----------------------------------------------------------------------------- item 1: a run folder is imer's or refused
@pytest.mark.parametrize("name", ["metrics.json", "config.json", "predictions_test.csv", "history.jsonl", ".imer-run"])
def test_evaluate_json_never_replaces_a_run_file(capsys, run, name):
    before = _snapshot(run)
    fails(capsys, ["evaluate", "--model", run, "--json", run / name], f"{name}: is a file of the imer run")
    assert _snapshot(run) == before


def test_predict_out_never_replaces_a_run_file_even_through_a_linked_folder(capsys, run, tmp_path):
    np.savez(tmp_path / "in.npz", x_text=np.zeros((2, 32)))
    (tmp_path / "alias").symlink_to(run)
    before = _snapshot(run)
    for target in (run / "predictions_test.csv", tmp_path / "alias" / "metrics.json"):
        fails(capsys, ["predict", "--model", run, "--input", tmp_path / "in.npz", "--out", target], "is a file of the imer run")
    assert _snapshot(run) == before


def test_outputs_into_a_sweep_directory_never_replace_its_files(capsys, run, tmp_path):
    sweep = tmp_path / "s"
    sweep.mkdir()
    (sweep / "sweep.json").write_text("{}")
    fails(capsys, ["evaluate", "--model", run, "--json", sweep / "sweep.json"], "is a file of the sweep")
    assert (sweep / "sweep.json").read_text() == "{}"


def test_output_that_is_a_folder_is_named(capsys, run, tmp_path):
    fails(capsys, ["evaluate", "--model", run, "--json", tmp_path], f"{tmp_path}: is a folder")
    fails(capsys, ["data", "convert", "--dataset", "synthetic", "--out", tmp_path], f"{tmp_path}: is a folder")


@pytest.mark.parametrize("flag", [[], ["--overwrite"], ["--resume"]])
def test_train_refuses_a_folder_of_the_users_own_files(capsys, tmp_path, flag):
    out = tmp_path / "mine"
    out.mkdir()
    for name, text in (("config.json", '{"mine": 1}'), ("history.jsonl", "my notes\n"), ("predictions_test.csv", "a,b\n")):
        (out / name).write_text(text)
    before = _snapshot(out)
    fails(capsys, _train(out, *flag), "is not empty and not an imer run folder (it holds config.json, history.jsonl, predictions_test.csv)")
    assert _snapshot(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)


def test_train_refuses_links(capsys, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    fails(capsys, _train(tmp_path / "link"), "is a symbolic link")
    out = tmp_path / "withlink"
    out.mkdir()
    (out / "history.jsonl").symlink_to(tmp_path / "outside.txt")
    fails(capsys, _train(out), "holds symbolic link(s) ['history.jsonl']")
    assert not (tmp_path / "outside.txt").exists()


def test_a_model_is_never_saved_into_a_foreign_folder(run, tmp_path):
    import imer
    from imer.errors import IMERError

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(IMERError, match="is not empty and not an imer run folder"):
        imer.load(run).save(mine)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    saved = imer.load(run).save(tmp_path / "copy")
    assert (saved / ".imer-run").is_file() and (saved / "model.safetensors").is_file()


def test_a_new_run_is_marked_and_an_older_run_without_marker_still_counts(capsys, run, tmp_path):
    assert (run / ".imer-run").is_file() and not (run / ".imer.lock").exists()
    old = tmp_path / "old"
    old.mkdir()
    for f in run.iterdir():
        if f.name != ".imer-run":
            (old / f.name).write_bytes(f.read_bytes())
    fails(capsys, _train(old), "already holds a finished run")  # recognised as a run, not as foreign
    assert main(_train(old, "--overwrite")) == 0


def test_a_live_lock_refuses_a_second_writer_and_a_stale_one_is_taken_over(capsys, tmp_path):
    import socket

    out = tmp_path / "r"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".imer.lock").write_text(f"{socket.gethostname()} {sleeper.pid}\n")
        fails(capsys, _train(out), f"another imer process (pid {sleeper.pid}) is writing this run now")
        sweep = tmp_path / "s"
        sweep.mkdir()
        (sweep / ".imer.lock").write_text(f"{socket.gethostname()} {sleeper.pid}\n")
        fails(capsys, ["sweep", "--methods", "late-fusion", "--datasets", "synthetic", "--missing-rates", "0", "--seeds", "0",
                       "--epochs", "1", "--no-progress", "--out", sweep], "is writing this sweep now")
        assert not (sweep / "sweep.json").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main(_train(out)) == 0  # the holder is gone: the lock is stale and taken over
    assert not (out / ".imer.lock").exists() and (out / "metrics.json").is_file()
    (out / ".imer.lock").write_text(f"{socket.gethostname()} {os.getppid()} 1\n")  # a live pid, but another process's start time
    assert main(_train(out, "--overwrite")) == 0  # the pid was reused after the holder died: stale too


def test_a_sweep_folder_without_sweep_json_is_foreign(capsys, tmp_path):
    out = tmp_path / "s"
    (out / "runs").mkdir(parents=True)
    fails(capsys, ["sweep", "--methods", "late-fusion", "--datasets", "synthetic", "--missing-rates", "0", "--seeds", "0", "--epochs", "1",
                   "--no-progress", "--out", out], "holds no sweep (no sweep.json")


def test_cells_are_keyed_by_exact_values():
    from imer.experiments.grid import SweepSpec, parse_list

    spec = SweepSpec(["late-fusion"], ["synthetic"], parse_list("0.1,0.1000001,-0.0,1", float), [0])
    paths = [str(c.relpath) for c in spec.cells()]
    assert len(set(paths)) == 4, paths
    assert [p.split("/")[3] for p in paths] == ["rate=0.1", "rate=0.1000001", "rate=0", "rate=1"]  # short where exact (old folders kept)


# ----------------------------------------------------------------------------- item 2: bad values are one line, status 2
SPEC = """datasets = ["synthetic"]
missing_rates = [0.2]
seeds = [0]
methods = ["late-fusion"]
epochs = 1
"""


@pytest.mark.parametrize(
    "change, expected",
    [
        (("seeds = [0]", "seeds = [1.7]"), "seeds: must be an integer, got 1.7"),
        (("seeds = [0]", "seeds = [true]"), "seeds: must be an integer, got True"),
        (("missing_rates = [0.2]", 'missing_rates = ["0.2"]'), "missing_rates: must be a number, got '0.2'"),
        (("missing_rates = [0.2]", "missing_rates = [nan]"), "missing_rates: must be finite, got nan"),
        (("missing_rates = [0.2]", "missing_rates = 0.2"), "'missing_rates' must be a non-empty list"),
        (("epochs = 1", "epochs = 2.5"), "epochs: must be an integer, got 2.5"),
        (("epochs = 1", "epochs = 0"), "epochs: must be >= 1, got 0"),
        (("epochs = 1", 'epochs = 1\nthreads = "four"'), "threads: must be an integer, got 'four'"),
        (("epochs = 1", "epochs = 1\nconditions = 1"), "conditions: must be true or false, got 1"),
        (("epochs = 1", 'epochs = 1\ndatasets = ["synthetic"]'), "not a valid TOML spec"),
        (("epochs = 1", "epochs = 1\ndata_dir = 3"), "data_dir: must be a string, got 3"),
        (("epochs = 1", "epochs = 1\n[variants.x]\nmethod = \"late-fusion\"\nseeds = [0.5]"), "[variants.x] seeds: must be an integer, got 0.5"),
        (("epochs = 1", "epochs = 1\nvariants = 3"), "'variants' must be tables [variants.<name>], got 3"),
        (('methods = ["late-fusion"]', 'methods = "late-fusion"'), "methods: must be a non-empty list, got 'late-fusion'"),
        (('methods = ["late-fusion"]', '[variants.a]\nmethod = ["late-fusion"]'), "[variants.a] method: must be a string, got ['late-fusion']"),
        (('methods = ["late-fusion"]', '[variants.a]\nmethod = "late-fusion"\nbase = 3'), "[variants.a] base: must be a string, got 3"),
        (("epochs = 1", "epochs = 1\nname = " + "[" * 40 + "]" * 40), "nested more than 16 levels deep"),
        (("epochs = 1", "epochs = 1\nname = " + "[" * 3000 + "]" * 3000), "nested more than 16 levels deep"),
        (("epochs = 1", "epochs = 1\n[search]\nrate = 0.2\n[search.grid]\n" + "\n".join(f"k{i} = [{', '.join(str(j) for j in range(10))}]" for i in range(8))),
         "10 x 10 x 10 x 10 x 10 x 10 x 10 x 10 = 100000000 trials, more than the 1000"),
    ],
)
def test_spec_values_are_type_checked(capsys, tmp_path, change, expected):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.replace(*change))
    fails(capsys, ["sweep", path, "--out", tmp_path / "s"], expected)
    assert not (tmp_path / "s").exists()


def test_a_huge_command_line_grid_is_counted_before_anything_is_built(capsys, tmp_path):
    seeds = ",".join(str(i) for i in range(400))
    rates = ",".join(f"0.{i:03d}" for i in range(300))
    fails(capsys, ["sweep", "--methods", "late-fusion", "--datasets", "synthetic", "--missing-rates", rates, "--seeds", seeds, "--out", tmp_path / "s"],
          "= 120000 cells, more than 100000")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[train]\nlr = " + "[" * 50 + "]" * 50, "nested more than 16 levels deep"),
        ("[train]\nlr = " + "[" * 5000 + "]" * 5000, "nested more than 16 levels deep"),
    ],
)
def test_deeply_nested_config_files(capsys, tmp_path, text, expected):
    path = tmp_path / "c.toml"
    path.write_text(text)
    fails(capsys, ["train", "--method", "late-fusion", "--dataset", "synthetic", "--config", path, "--out", tmp_path / "r"], expected)
    deep = tmp_path / "c.json"
    deep.write_text('{"train": {"lr": ' + "[" * 5000 + "]" * 5000 + "}}")
    fails(capsys, ["train", "--method", "late-fusion", "--dataset", "synthetic", "--config", deep, "--out", tmp_path / "r"], "nested more than 16 levels deep")


@pytest.mark.parametrize("value", ["[" * 40 + "]" * 40, "[" * 5000 + "]" * 5000])
def test_deeply_nested_set_values(capsys, tmp_path, value):
    fails(capsys, ["train", "--method", "late-fusion", "--dataset", "synthetic", "--set", f"train.lr={value}", "--out", tmp_path / "r"], "nested more than 16 levels deep")


def test_symlink_loops_are_named(capsys, tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop")
    fails(capsys, ["train", "--method", "late-fusion", "--dataset", "cmu-mosi", "--data-dir", loop, "--out", tmp_path / "r"], "loop")
    fails(capsys, ["train", "--method", "late-fusion", "--dataset", loop / "d.npz", "--out", tmp_path / "r"], "loop")


# ----------------------------------------------------------------------------- item 3: loaded artefacts are checked like inputs
@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda w, n: w.__setitem__(n, torch.full_like(w[n], float("nan"))), "holds NaN or infinite values"),
        (lambda w, n: w.__setitem__(n, torch.full_like(w[n], float("inf"))), "holds NaN or infinite values"),
        (lambda w, n: w.__setitem__(n, w[n].to(torch.int64)), "is int64, the model's is float32"),
        (lambda w, n: w.__setitem__(n, w[n].to(torch.float64)), "is float64, the model's is float32"),
    ],
)
def test_damaged_weights_say_which_tensor(capsys, broken, damage, expected):
    from safetensors.torch import load_file, save_file

    run = broken()
    weights = load_file(str(run / "model.safetensors"))
    name = sorted(weights)[0]
    damage(weights, name)
    save_file(weights, str(run / "model.safetensors"))
    line = fails(capsys, ["evaluate", "--model", run], expected)
    assert "model.safetensors" in line and name in line


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"class_names": ["a", "b"]}, "2 class_names (2 distinct) for 4 classes"),
        ({"class_names": ["a", "a", "b", "c"]}, "4 class_names (3 distinct) for 4 classes"),
        ({"num_classes": 4.0}, "lacks modalities (names), dims (whole numbers)"),
        ({"dims": [24.7, 32, 28]}, "lacks modalities (names), dims (whole numbers)"),
        ({"modalities": "atv"}, "lacks modalities (names)"),
        ({"modalities": ["audio", "audio", "video"]}, "inconsistent modalities"),
        ({"num_classes": True}, "lacks modalities"),
    ],
)
def test_damaged_run_spec(capsys, broken, spec, expected):
    import json

    run = broken()
    values = json.loads((run / "run_spec.json").read_text())
    values.update(spec)
    (run / "run_spec.json").write_text(json.dumps(values))
    line = fails(capsys, ["evaluate", "--model", run], expected)
    assert "run_spec.json" in line


def test_scaler_std_below_the_floor(capsys, broken):
    run = broken()
    with np.load(run / "scaler.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["std_text"] = np.full_like(arrays["std_text"], 1e-30)
    np.savez(run / "scaler.npz", **arrays)
    fails(capsys, ["evaluate", "--model", run], "scaler.npz: a standard deviation is below 1e-08")


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"epoch": -5}, "epoch is -5, not a whole number >= 0"),
        ({"epoch": 1.5}, "epoch is 1.5"),
        ({"best_epoch": 7}, "best_epoch is 7, not a whole number in [-1, 1]"),
        ({"model": [1, 2]}, "model or best_state is not a table of tensors"),
        ({"history": "[]"}, "history does not hold epochs 0..1 in order"),
        ({"history": 3}, "history is not JSON text"),
        ({"torch_rng": torch.zeros(3)}, "torch_rng is not a byte tensor"),
        ({"best_score": "high"}, "best_score is str"),
    ],
)
def test_damaged_checkpoint_fields(capsys, broken, change, expected):
    run = broken()
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state.update(change)
    torch.save(state, run / "checkpoint.pt")
    (run / "metrics.json").unlink()
    line = fails(capsys, _train(run, "--resume"), expected)
    assert "checkpoint.pt: damaged or not an imer checkpoint" in line


def test_a_checkpoint_that_is_not_a_table(capsys, broken):
    run = broken()
    torch.save([1, 2, 3], run / "checkpoint.pt")
    (run / "metrics.json").unlink()
    fails(capsys, _train(run, "--resume"), "a list, not a table of fields")


# ----------------------------------------------------------------------------- item 4: predictions stay in range, far inputs are named
@pytest.fixture(scope="module")
def regression_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reg") / "run"
    assert main(["train", "--method", "early-fusion", "--dataset", "synthetic-reg", "--epochs", "2",
                 "--set", "hidden=8", "--no-progress", "--out", str(out)]) == 0
    return out


def test_regression_scores_are_clipped_to_the_training_range_and_say_so(capsys, regression_run, tmp_path):
    import csv
    import json

    low, high = json.loads((regression_run / "run_spec.json").read_text())["label_range"]
    x = np.random.default_rng(0).normal(size=(6, 32)) * np.array([[0], [0], [0], [500], [-500], [0]])
    np.savez(tmp_path / "in.npz", x_text=x)
    assert main(["predict", "--model", str(regression_run), "--input", str(tmp_path / "in.npz"), "--out", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    scores = [float(r["score"]) for r in rows]
    assert all(low <= s <= high for s in scores), (scores, low, high)
    assert "2 row(s) have features more than 20 training standard deviations from the training mean: '3', '4'" in err, err
    clipped = [float(r["score"]) for r in rows if r["clipped"] == "1"]
    assert clipped and all(s in (low, high) for s in clipped) and "were clipped to it (column 'clipped')" in err


@pytest.mark.parametrize("value", [3e38, -3e38, 2e37])
def test_inputs_too_far_out_to_compute_are_refused_by_row(capsys, run, tmp_path, value):
    x = np.zeros((3, 32))
    x[1, 5] = value
    np.savez(tmp_path / "in.npz", x_text=x)
    fails(capsys, ["predict", "--model", run, "--input", tmp_path / "in.npz", "--out", tmp_path / "p.csv"],
          "1 row(s) have features more than 1e+06 training standard deviations from the training mean: '1'")
    assert not (tmp_path / "p.csv").exists()


# ----------------------------------------------------------------------------- item 6 and label pickles: ids stay in their folder, inner types checked
def _gcnet(tmp_path: Path, edit=None, raw: bytes | None = None) -> list[str]:
    """A small GCNet-layout data folder (label pickle + features), its pickle edited by ``edit(meta)`` or replaced by ``raw``."""
    import pickle

    rng = np.random.default_rng(0)
    dialogues = {f"Ses0{s}_d{k}": [f"Ses0{s}_d{k}_u{j}" for j in range(3)] for s in range(1, 6) for k in range(2)}
    meta = [dialogues, {d: [j % 4 for j in range(3)] for d in dialogues}, {d: ["F", "M", "F"] for d in dialogues},
            {d: ["", "", ""] for d in dialogues}, [d for d in dialogues if not d.startswith("Ses05")], [d for d in dialogues if d.startswith("Ses05")]]
    for folder, width in (("fa", 3), ("ft", 5)):
        (tmp_path / "data" / "features" / folder).mkdir(parents=True, exist_ok=True)
        for utts in dialogues.values():
            for u in utts:
                np.save(tmp_path / "data" / "features" / folder / f"{u}.npy", rng.normal(size=width).astype(np.float32))
    if edit is not None:
        edit(meta)
    (tmp_path / "data" / "labels.pkl").write_bytes(raw if raw is not None else pickle.dumps(meta))
    return ["data", "info", "--dataset", "iemocap4", "--data-dir", str(tmp_path / "data"), "--set", f"data.options.label_file={tmp_path / 'data' / 'labels.pkl'}",
            "--set", 'data.options.features={audio="fa",text="ft"}']


def _set_label(value):
    def edit(meta):
        meta[1]["Ses01_d0"][1] = value
    return edit


def _set_utterance(value):
    def edit(meta):
        meta[0]["Ses01_d0"][1] = value
    return edit


@pytest.mark.parametrize(
    "edit, expected",
    [
        (_set_utterance("../../outside/secret"), "utterance id '../../outside/secret' is not a plain file name"),
        (_set_utterance("/etc/passwd"), "utterance id '/etc/passwd' is not a plain file name"),
        (_set_utterance(".."), "utterance id '..' is not a plain file name"),
        (_set_utterance("a\\..\\b"), "is not a plain file name"),
        (_set_utterance(3.5), "utterance id 3.5 is a float, expected a string"),
        (_set_label(1e20), "unknown label 1e+20 for utterance 'Ses01_d0_u1'"),
        (_set_label(-3), "unknown label -3 for utterance"),
        (_set_label("NA"), "label 'NA' of utterance 'Ses01_d0_u1' is not a class index"),
        (_set_label(float("nan")), "label nan of utterance 'Ses01_d0_u1' is not a class index"),
        (_set_label(None), "label None of utterance"),
        (_set_label(1.5), "classification labels must be integers, got 1.5"),
        (_set_label(np.float64(2e19)), "unknown label 2e+19"),
        (lambda meta: meta.__setitem__(1, [1, 2]), "videoLabels (item 2) is a list"),
        (lambda meta: meta[0].__setitem__("Ses01_d0", 7), "video 'Ses01_d0' needs a list of utterance ids and a list of labels, got int"),
        (lambda meta: meta[1].__setitem__("Ses01_d0", "abc"), "got list and str"),
        (lambda meta: meta[1].pop("Ses01_d0"), "got list and NoneType"),
    ],
)
def test_label_pickle_contents(capsys, tmp_path, edit, expected):
    (tmp_path / "outside").mkdir()
    np.save(tmp_path / "outside" / "secret.npy", np.zeros(3, np.float32))
    line = fails(capsys, _gcnet(tmp_path, edit), expected)
    assert "labels.pkl" in line


def test_a_pickle_declaring_a_huge_string_is_refused_before_allocating(capsys, tmp_path):
    import pickle
    import struct

    raw = b"\x80\x04" + pickle.BINBYTES8 + struct.pack("<Q", 10**12) + b"abc" + pickle.STOP
    line = fails(capsys, _gcnet(tmp_path, raw=raw), "labels.pkl: not a readable pickle")
    assert "batch_size" not in line and "memory" not in line


# ----------------------------------------------------------------------------- inputs of predict, data and the Python API
@pytest.mark.parametrize(
    "text, expected",
    [
        ("text_0,text_1,text_1\n1,2,3\n", "column(s) ['text_1'] appear more than once"),
        ("text_0,text_2\n1,2\n", "the 'text' columns must be text_0 .. text_1 without gaps, but text_1 is missing"),
        ("text_1,text_2\n1,2\n", "but text_0 is missing"),
        ("text_0,utterance_id,utterance_id\n1,a,b\n", "column(s) ['utterance_id'] appear more than once"),
    ],
)
def test_predict_csv_columns_never_shift(capsys, run, tmp_path, text, expected):
    (tmp_path / "in.csv").write_text(text)
    fails(capsys, ["predict", "--model", run, "--input", tmp_path / "in.csv", "--out", tmp_path / "p.csv"], expected)
    assert not (tmp_path / "p.csv").exists()


def _custom(tmp_path: Path, **changes) -> Path:
    from imer.data import make_synthetic, save_custom

    path = tmp_path / "base.npz"
    save_custom(make_synthetic(num_groups=12, min_len=2, max_len=4, dims={"audio": 3, "text": 4, "video": 2}, seed=3), path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for key, value in changes.items():
        arrays[key] = value(arrays) if callable(value) else value
    np.savez(tmp_path / "d.npz", **arrays)
    return tmp_path / "d.npz"


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"modalities": np.array("audio")}, "'modalities' has shape () and dtype <U5, expected a 1-D array of names"),
        ({"modalities": np.array([1, 2, 3])}, "'modalities' has shape (3,) and dtype int64"),
        ({"modalities": np.array(["audio", "audio", "text"])}, "must be distinct, non-empty names"),
        ({"class_names": np.array("abcd")}, "'class_names' has shape ()"),
        ({"class_names": np.array(["a", "a", "b", "c"])}, "class_names ['a'] appear more than once"),
        ({"task": np.array(["classification"])}, "'task' has shape (1,)"),
        ({"labels": lambda a: np.where(np.arange(len(a["labels"])) == 4, 1e20, a["labels"])}, "unknown label 1e+20 at utterance"),
        ({"labels": lambda a: np.where(np.arange(len(a["labels"])) == 4, -1e12, a["labels"])}, "unknown label -1000000000000.0 at utterance"),
    ],
)
def test_custom_dataset_arrays(capsys, tmp_path, changes, expected):
    fails(capsys, ["train", "--method", "early-fusion", "--dataset", _custom(tmp_path, **changes), "--epochs", "1", "--out", tmp_path / "r"], expected)


def test_python_api_raises_imers_own_errors(tmp_path, run):
    import imer
    from imer.data import MultimodalDataset
    from imer.errors import DataError

    x = np.zeros((6, 3))
    with pytest.raises(DataError, match=r"features\['a'\]: has shape \(6, 3\), expected \(5, d\)"):
        MultimodalDataset.from_arrays({"a": x, "t": x}, np.arange(5) % 2)
    with pytest.raises(DataError, match=r"features\['a'\]: holds <U1 values, expected numbers"):
        MultimodalDataset.from_arrays({"a": np.full((6, 3), "x"), "t": x}, np.arange(6) % 2)
    with pytest.raises(DataError, match="features: must be a dict"):
        MultimodalDataset.from_arrays(x, np.arange(6) % 2)
    with pytest.raises(DataError, match=r"labels hold \['NA'\], which reads as a missing label"):
        MultimodalDataset.from_arrays({"a": x, "t": x}, np.array(["pos", "neg", "NA", "pos", "neg", "pos"]))
    with pytest.raises(DataError, match="dataset: imer.fit takes a MultimodalDataset, got str"):
        imer.fit("early-fusion", "data.npz")
    model = imer.load(run)
    with pytest.raises(DataError, match="predict: features must be a dict modality -> array"):
        model.predict(np.zeros((2, 32)))
    with pytest.raises(DataError, match="is a file of the imer run"):
        imer.experiments.inference.predict(run, tmp_path / "x.npz", run / "metrics.json")


def test_text_features_without_sentence_transformers_give_the_install_hint(capsys, tmp_path, monkeypatch):
    (tmp_path / "t.csv").write_text("utterance_id,text\nu1,hello\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "modules.json").write_text("[]")
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    fails(capsys, ["features", "text", tmp_path / "t.csv", "--out", tmp_path / "t.npz", "--model-dir", model, "--no-progress"],
          "text features need sentence-transformers: pip install 'imer[text]'")


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("data.options.num_groups=1e20", "data.options.num_groups: must be an integer, got 1e+20"),
        ("data.options.num_groups=2e6", "data.options.num_groups: must be <= 1000000"),
        ("data.options.seed=-1", "data.options.seed: must be >= 0"),
        ("data.options.seed=1.5", "data.options.seed: must be an integer, got 1.5"),
        ("data.options.dims={audio=100000000}", "data.options.dims.audio: must be <= 100000"),
        ("data.options.max_len=1e9", "data.options.max_len: must be <= 10000"),
    ],
)
def test_synthetic_sizes_are_bounded_before_anything_is_allocated(capsys, setting, expected):
    line = fails(capsys, ["data", "info", "--dataset", "synthetic", "--set", setting], expected)
    assert "memory" not in line.split(":", 3)[-1] or "would not fit in memory" in line


def _edit_json(path: Path, change) -> None:
    import json

    values = json.loads(path.read_text())
    change(values)
    path.write_text(json.dumps(values))


@pytest.mark.parametrize(
    "file, change, command, expected",
    [
        ("metrics.json", lambda m: m["selection"].__setitem__("best_epoch", -5), "evaluate", "selection.best_epoch is -5, not an epoch the run trained (0..1)"),
        ("metrics.json", lambda m: m["selection"].__setitem__("best_epoch", 1e30), "evaluate", "selection.best_epoch is 1e+30"),
        ("metrics.json", lambda m: m["selection"].__setitem__("best_epoch", True), "evaluate", "selection.best_epoch is True"),
        ("metrics.json", lambda m: m["selection"].__setitem__("best_epoch", 2), "evaluate", "selection.best_epoch is 2"),
        ("metrics.json", lambda m: m.__setitem__("seed", 1.5), "report", "seed is 1.5, not a whole number"),
        ("metrics.json", lambda m: m.__setitem__("test", 5), "report", "'test' is not a table of metrics"),
        ("metrics.json", lambda m: m.clear(), "report", "not a metrics file written by imer"),
    ],
)
def test_damaged_run_files_are_named(capsys, broken, file, change, command, expected):
    run = broken()
    _edit_json(run / file, change)
    line = fails(capsys, ["evaluate", "--model", run] if command == "evaluate" else ["report", run, "--no-plots"], expected)
    assert file in line


@pytest.mark.parametrize(
    "file, text, expected",
    [
        ("history.jsonl", "garbage\n", "history.jsonl: line 1 is not a JSON object of one epoch"),
        ("history.jsonl", '{"epoch": 0}\n[1, 2]\n', "history.jsonl: line 2 is not a JSON object"),
        ("metrics.json", "[]", "metrics.json: not a metrics file written by imer"),
        ("conditions.json", "[]", "conditions.json: not a conditions file written by imer"),
        ("config.json", '{"a": ' + "[" * 5000 + "]" * 5000 + "}", "config.json: run config nests lists or objects too deeply"),
    ],
)
def test_damaged_run_files_in_reports_and_evaluation(capsys, broken, file, text, expected):
    run = broken()
    (run / file).write_text(text)
    fails(capsys, ["evaluate", "--model", run] if file == "config.json" else ["report", run, "--no-plots"], expected)


@pytest.mark.parametrize("setting, expected", [("hidden=1e400", "--set hidden: 1e400 is beyond the largest number"),
                                               ("train.lr=-1e999", "--set train.lr: -1e999 is beyond the largest number"),
                                               ("train.epochs=1e20", "train.epochs: must be an integer, got 1e+20"),
                                               ("hidden=3e16", "model.hidden: must be an integer, got 3e+16")])
def test_numbers_are_shown_as_written(capsys, tmp_path, setting, expected):
    fails(capsys, ["train", "--method", "late-fusion", "--dataset", "synthetic", "--set", setting, "--out", tmp_path / "r"], expected)


def _crafted_npy(shape=(10**7, 10**5)) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 64


def test_arrays_declaring_more_than_they_hold_are_refused_before_allocating(capsys, run, tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "big.npz", "w") as archive:
        archive.writestr("x_text.npy", _crafted_npy())
    for argv in (["predict", "--model", run, "--input", tmp_path / "big.npz", "--out", tmp_path / "p.csv"],
                 ["train", "--method", "late-fusion", "--dataset", tmp_path / "big.npz", "--out", tmp_path / "r"]):
        line = fails(capsys, argv, "array 'x_text' declares shape (10000000, 100000) (8000000000000 bytes) but holds")
        assert "batch_size" not in line
    argv = _gcnet(tmp_path)
    (tmp_path / "data" / "features" / "fa" / "Ses01_d0_u1.npy").write_bytes(_crafted_npy())
    fails(capsys, argv, "Ses01_d0_u1.npy declares shape (10000000, 100000)")


@pytest.mark.parametrize(
    "arrays, expected",
    [
        ({"x_text": np.zeros((2, 32)), "utterance_ids": np.array(["a", "a"])}, "utterance id(s) ['a'] appear more than once"),
        ({"x_text": np.zeros((2, 32)), "utterance_id": np.array(["a", "b"])}, "unknown key(s) ['utterance_id']"),
        ({"x_text": np.zeros((2, 32)), "available": np.array([[0, 2, 0], [0, 1, 0]])}, "'available' holds values other than 0 and 1"),
        ({"x_text": np.zeros((2, 32)), "group_ids": np.array(["g", "g"]), "order": np.array([0, 0])}, "dialogue 'g' has two rows at position 0"),
        ({"x_text": np.where(np.arange(32) == 3, 1e300, np.zeros((2, 32)))}, "'x_text' has values beyond the float32 range (about 3.4e38) in rows 0, 1"),
    ],
)
def test_predict_input_hostile_variants(capsys, run, tmp_path, arrays, expected):
    np.savez(tmp_path / "in.npz", **arrays)
    fails(capsys, ["predict", "--model", run, "--input", tmp_path / "in.npz", "--out", tmp_path / "p.csv"], expected)
    assert not (tmp_path / "p.csv").exists()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "s"
    assert main(["sweep", "--methods", "late-fusion", "--datasets", "synthetic", "--missing-rates", "0", "--seeds", "0", "--epochs", "1",
                 "--set", "hidden=8", "--no-progress", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(
    "file, text, expected",
    [
        ("sweep.json", "[]", "sweep.json: not a sweep manifest written by imer (not a JSON object)"),
        ("sweep.json", "{}", "'spec' is not an object"),
        ("sweep.json", '{"spec": {"bogus": 1}, "cells": []}', "(its spec: TypeError)"),
        ("sweep.json", '{"spec": {}, "cells": 3}', "'cells' is not a list of cells"),
        ("sweep.json", '{"spec": {"epochs": "x"}, "cells": []}', "'spec.epochs' is 'x'"),
        ("search.json", "[1]", "search.json: not the search choices imer froze"),
    ],
)
def test_damaged_sweep_files_are_named(capsys, sweep, tmp_path, file, text, expected):
    import shutil

    copy = tmp_path / "s"
    shutil.copytree(sweep, copy)
    (copy / file).write_text(text)
    for argv in (["sweep", "--methods", "late-fusion", "--datasets", "synthetic", "--missing-rates", "0", "--seeds", "0", "--epochs", "1",
                  "--set", "hidden=8", "--no-progress", "--out", copy], ["report", copy, "--no-plots"]):
        if (file == "search.json" and argv[0] == "sweep") or ("bogus" in text and argv[0] == "report"):
            continue  # a sweep without [search] never reads search.json; a report reads no spec key it does not know
        fails(capsys, argv, expected)
    assert (copy / file).read_text() == text
