"""`imer sweep`: grid layout, skip/resume after a kill, failure recording, parallel workers, Ray backend."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest

import imer.experiments.cells as cells_module
from imer.cli import main
from imer.errors import ConfigError
from imer.experiments.grid import Cell, SweepSpec, parse_list
from imer.experiments.spec import overrides_for
from imer.experiments.sweep import run_sweep
from imer.runfolder import RunFolder
from imer.training.trainer import Trainer

# Tiny synthetic data and model so a cell trains in well under a second.
TINY = ["data.options.num_groups=16", "data.options.max_len=5", "hidden=8", "train.batch_size=16"]


def spec(**kw) -> SweepSpec:
    values = dict(methods=["early-fusion", "late-fusion"], datasets=["synthetic"], rates=[0.4], seeds=[0, 1], epochs=2, overrides=list(TINY))
    values.update(kw)
    return SweepSpec(**values)


def test_grid_paths_and_parsing():
    cells = spec(rates=[0.1, 0.7]).cells()
    assert len(cells) == 8 and cells[0] == Cell("synthetic", "early-fusion", "early-fusion", 0.1, 0, dataset_id="synthetic")
    assert Cell("cmu-mosi", "comp", "comp", 0.4, 2).relpath == Path("runs/cmu-mosi/comp/rate=0.4/seed=2")
    assert Cell("iemocap4", "comp-x", "comp", 0.4, 2, fold=3).relpath == Path("runs/iemocap4/comp-x/rate=0.4/fold=3/seed=2")
    assert parse_list("0.1, 0.4,0.4,", float) == [0.1, 0.4]
    with pytest.raises(ConfigError):
        parse_list("0.1,x", float)
    assert overrides_for("late-fusion", ["hidden=8", "late-fusion:dropout=0.5", "comp:lam=2", "data.options.x=a:b"]) == ["hidden=8", "dropout=0.5", "data.options.x=a:b"]


def test_failures_are_recorded_and_the_rest_finishes(tmp_path):
    s = spec(methods=["early-fusion", "late-fusion"], seeds=[0], overrides=TINY + ["late-fusion:no_such_option=3"])
    manifest = run_sweep(s, tmp_path, workers=1, progress=False)
    status = {c["method"]: c["status"] for c in manifest["cells"]}
    assert status == {"early-fusion": "done", "late-fusion": "failed"}
    failures = [json.loads(line) for line in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert {f["cell"]["method"] for f in failures} == {"late-fusion"}
    assert all(f["user_error"] and "Traceback" in f["traceback"] for f in failures)
    error = json.loads((tmp_path / "runs/synthetic/late-fusion/rate=0.4/seed=0/error.json").read_text())
    assert "no_such_option" in error["error"]
    assert (tmp_path / "runs/synthetic/early-fusion/rate=0.4/seed=0/metrics.json").is_file()


@pytest.mark.parametrize("problem", ["no data folder", "wrong data folder", "unknown method", "out is a file", "out is a run"])
def test_sweep_checks_what_it_needs_before_the_first_cell(problem, tmp_path, monkeypatch, capsys):
    """One `imer: error:` line, status 2, nothing written: not a failure per cell."""
    monkeypatch.delenv("IMER_DATA", raising=False)
    out = tmp_path / "sweep"
    argv = ["sweep", "--methods", "early-fusion", "--datasets", "cmu-mosi-minilm", "--missing-rates", "0.3", "--seeds", "0,1", "--epochs", "1",
            "--no-progress", "--out", str(out)]
    expected = {"no data folder": "cmu-mosi-minilm: no data folder given", "wrong data folder": "data folder not found",
                "unknown method": "unknown method 'no-such-method'", "out is a file": "is a file", "out is a run": "holds a single run"}[problem]
    if problem == "wrong data folder":
        argv += ["--data-dir", str(tmp_path / "nowhere")]
    elif problem == "unknown method":
        argv[2] = "early-fusion,no-such-method"
        argv[4] = "synthetic"
    elif problem == "out is a file":
        argv[4] = "synthetic"
        out.write_text("")
    elif problem == "out is a run":
        argv[4] = "synthetic"
        assert main(["train", "--method", "early-fusion", "--dataset", "synthetic", "--epochs", "1", *sum((["--set", o] for o in TINY), []),
                     "--no-progress", "--out", str(out)]) == 0
    before = sorted(tmp_path.rglob("*"))
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("imer: error:") and err.count("\n") == 1 and expected in err, err
    assert sorted(tmp_path.rglob("*")) == before


def test_kill_midway_then_resume_repeats_nothing(tmp_path, monkeypatch):
    """First attempt: killed (KeyboardInterrupt) inside the 3rd cell after its first epoch's checkpoint.
    Second attempt: the 2 finished cells are skipped, the 3rd resumes at epoch 1, the 4th runs."""
    calls: list[tuple[str, bool]] = []
    real_train, real_checkpoint = cells_module.train, Trainer._checkpoint

    def counting_train(config, out, resume=False, **kw):
        calls.append((Path(out).relative_to(tmp_path).as_posix(), resume))
        return real_train(config, out, resume=resume, **kw)

    def killing_checkpoint(self, epoch, best, history):
        real_checkpoint(self, epoch, best, history)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(cells_module, "train", counting_train)
    monkeypatch.setattr(Trainer, "_checkpoint", killing_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec(), tmp_path, workers=1, progress=False)
    cells = spec().cells()
    states = [RunFolder(tmp_path / c.relpath).state() for c in cells]
    assert states == ["done", "done", "partial", "todo"]
    assert json.loads((tmp_path / "sweep.json").read_text())["counts"] == {"done": 2, "partial": 1, "todo": 1}
    finished = {c: (tmp_path / c.relpath / "metrics.json").stat().st_mtime_ns for c in cells[:2]}

    monkeypatch.setattr(Trainer, "_checkpoint", real_checkpoint)
    calls.clear()
    manifest = run_sweep(spec(), tmp_path, workers=1, progress=False)
    assert manifest["counts"] == {"done": 4}
    assert calls == [(cells[2].relpath.as_posix(), True), (cells[3].relpath.as_posix(), False)]
    assert {c: (tmp_path / c.relpath / "metrics.json").stat().st_mtime_ns for c in cells[:2]} == finished
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / cells[2].relpath / "history.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]
    calls.clear()
    assert run_sweep(spec(), tmp_path, workers=1, progress=False)["counts"] == {"done": 4} and calls == []


def test_other_settings_in_same_directory_are_refused(tmp_path):
    run_sweep(spec(methods=["early-fusion"], seeds=[0], epochs=1), tmp_path, workers=1, progress=False)
    with pytest.raises(ConfigError, match="other settings"):
        run_sweep(spec(methods=["early-fusion"], seeds=[0], epochs=3), tmp_path, workers=1, progress=False)


def test_parallel_sweep_with_conditions_and_report(tmp_path, capsys):
    """A real sweep: 2 spawned workers, 1 epoch, fixed-condition evaluation, then the report."""
    argv = ["sweep", "--methods", "early-fusion,late-fusion", "--datasets", "synthetic", "--missing-rates", "0.2,0.6", "--seeds", "0",
            "--epochs", "1", "--workers", "2", "--conditions", "--no-progress", "--out", str(tmp_path)]
    for item in TINY:
        argv += ["--set", item]
    assert main(argv) == 0
    run = tmp_path / "runs/synthetic/late-fusion/rate=0.6/seed=0"
    conditions = json.loads((run / "conditions.json").read_text())
    assert set(conditions["conditions"]) == {"a", "t", "v", "at", "av", "tv", "atv"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["missing"]["train_rate"] == 0.6 and json.loads((run / "config.json").read_text())["train"]["threads"] == 1
    assert main(["report", str(tmp_path), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "4 done of 4 cells" in out and "{atv}" in out
    assert f"{100 * metrics['test']['acc']:.2f}" in (tmp_path / "report/table.md").read_text()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed (pip install 'imer[ray]')")
def test_ray_backend_on_a_local_instance(tmp_path):
    manifest = run_sweep(spec(methods=["early-fusion"], epochs=1), tmp_path, workers=2, backend="ray", progress=False)
    assert manifest["counts"] == {"done": 2} and manifest["backend"] == "ray"
    assert all((tmp_path / c.relpath / "metrics.json").is_file() for c in spec(methods=["early-fusion"]).cells())


def test_sweep_and_report_help(capsys):
    for argv in (["sweep", "--help"], ["report", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--missing-rates" in text and "--workers" in text and "METHOD:KEY=VALUE" in text and "--format" in text


def test_report_reproduce_line_names_the_data_folder_the_sweep_read(data_dir, tmp_path, monkeypatch, capsys):
    """A sweep on $IMER_DATA records it (normalised, as a relative path with ``..`` is given); the report's "Reproduce" command
    then works without the environment variable."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setenv("IMER_DATA", os.path.join("elsewhere", os.path.relpath(data_dir.resolve(), tmp_path / "elsewhere")))  # elsewhere/../../…
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text('name = "s"\ndatasets = ["cmu-mosi-minilm"]\nmissing_rates = [0.3]\nseeds = [0]\nepochs = 1\n'
                                     'methods = ["early-fusion"]\nset = { "hidden" = 8 }\n')
    assert main(["sweep", "s.toml", "--no-progress", "--out", "sw"]) == 0
    assert main(["report", "sw", "--no-plots"]) == 0
    page = (tmp_path / "sw/report/report.md").read_text()
    assert f"imer sweep s.toml --data-dir {data_dir.resolve()} --out sw\n" in page
    monkeypatch.delenv("IMER_DATA")
    (tmp_path / "sw/runs").rename(tmp_path / "old-runs")
    command = re.search(r"^imer sweep .*$", page, flags=re.M).group(0).split()
    assert main(command[1:] + ["--no-progress"]) == 0  # as printed, without IMER_DATA
    assert (tmp_path / "sw/runs/cmu-mosi-minilm/early-fusion/rate=0.3/seed=0/metrics.json").is_file()
