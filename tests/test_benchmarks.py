"""Benchmark and analysis scripts: speed.py measures on the device it is given (refused on a GPU torch does not see); the
ComP side-by-side report and the context-ceiling oracle compute what their pages say."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _speed():
    return _script("speed")


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_speed_benchmark_measures_on_the_device_given(device, tmp_path):
    out = tmp_path / "speed"
    assert _speed().main(["--methods", "early-fusion", "--sizes", "n=300", "--epochs", "2", "--eval-repeats", "1", "--variants", "after",
                          "--device", device, "--out", str(out)]) == 0
    (result,) = json.loads((out / "speed.json").read_text())["results"]
    expected = "cuda" if device == "auto" and torch.cuda.is_available() else "cpu"
    assert result["device"] == expected and result["variants"]["after"]["seconds_train"] > 0
    assert (result["gpu"] is None) == (expected == "cpu") and f"device {result['gpu'] or 'cpu'}." in (out / "speed.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_speed_benchmark_refuses_a_gpu_it_cannot_see(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        _speed().main(["--sizes", "n=300", "--device", "cuda", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "torch sees no GPU" in capsys.readouterr().err


def test_context_ceiling_oracle_reads_the_other_utterances_of_the_video():
    """Only non-zero-labelled utterances that lost the modality are scored (0, 3 and 4; not 1), each from the others of its
    video: all of them, or those that kept it (none: predicted positive)."""
    oracle = _script("context_ceiling").oracle_accuracy
    labels = np.array([2.0, 0.0, -1.0, 1.0, -2.0, -0.5])
    groups = np.array(["a", "a", "a", "b", "b", "c"])
    kept = np.array([False, False, True, False, False, True])
    # lost & non-zero: 0 (truth +; all-others mean -0.5 -> wrong; kept-others mean -1 -> wrong),
    # 3 (truth +; others mean -2 -> wrong; no kept other -> positive -> right), 4 (truth -; others +1 -> wrong; none kept -> positive -> wrong)
    assert oracle(labels, groups, kept) == (0.0, 1 / 3, 3)


def _write_history(folder: Path, test_f1: list[float], valid_f1: list[float], finished: bool = True) -> None:
    folder.mkdir(parents=True)
    lines = [json.dumps({"epoch": e, "seconds": 1.0 + e % 2, "test": {"f1": t}, "valid": {"f1": v}}) for e, (t, v) in enumerate(zip(test_f1, valid_f1))]
    (folder / "history.jsonl").write_text("\n".join(lines) + "\n")
    if finished:
        (folder / "metrics.json").write_text("{}")


def test_comp_side_by_side_report_reads_both_selection_rules_and_checks_the_acceptance(tmp_path):
    """Published rule = first epoch of best test F1; validation rule = test F1 at the first best validation F1; steady state =
    mean test F1 from 20 epochs after the switch; the acceptance line compares mean best test F1 with one seed std; the gap to
    `published` splits into protocol and fixed defects, and those into absent modalities acting and the rest; a run without metrics.json (still training) is left out."""
    side = _script("comp_side_by_side")
    epochs, switch = 30, 5  # steady state: epochs 25-29
    flat = [0.5] * epochs
    for seed, peak in ((0, 0.70), (1, 0.74)):
        test = flat[:10] + [peak] + [0.6] * (epochs - 11)
        _write_history(tmp_path / f"published-code/rate=0.4/seed={seed}", test, [0.1] * 3 + [0.9] + [0.1] * (epochs - 4))
    for seed in (0, 1):
        _write_history(tmp_path / f"runs/cmu-mosi/comp-published-exact@0.4/rate=0.4/seed={seed}", [0.5] * 12 + [0.73] + [0.62] * (epochs - 13), flat)
    for variant, peak, steady in (("comp-published-exact-fixed-masks", 0.70, 0.61), ("comp-published-absent-act", 0.69, 0.60), ("comp-published", 0.66, 0.58)):
        for seed in (0, 1):
            _write_history(tmp_path / f"runs/cmu-mosi/{variant}/rate=0.4/seed={seed}", [0.5] * 12 + [peak] + [steady] * (epochs - 13), flat)
    _write_history(tmp_path / "runs/cmu-mosi/comp-published-exact@0.4/rate=0.4/seed=2", [0.9] * 3, [0.9] * 3, finished=False)  # still training: left out
    side.report(tmp_path, tmp_path / "out", stage_epoch=switch)
    page = (tmp_path / "out" / "report.md").read_text()
    assert "| published-exact, fixed masks | 0,1 | 70.00 ± 0.00 |" in page and "| published | 0,1 | 66.00 ± 0.00 |" in page
    # published-exact - published = (published-exact - its fixed-masks run) + (fixed masks - published)
    assert "published-exact − published, best test F1: +7.00 points = +3.00 from the protocol" in page and "+4.00 from the fixed defects" in page
    assert "published-exact − published, steady-state test F1: +4.00 points = +1.00 from the protocol" in page and "+3.00 from the fixed defects" in page
    assert "+3.00 from the fixed defects (fixed masks − published), of which +2.00 from absent modalities acting" in page and "+1.00 from the rest" in page
    assert "| published code | 0,1 | 72.00 ± 2.83 | 10/10 | 50.00 ± 0.00 | 3/3 | 60.00 ± 0.00 | 1.50 |" in page
    assert "| published-exact | 0,1 | 73.00 ± 0.00 | 12/12 | 50.00 ± 0.00 | 0/0 | 62.00 ± 0.00 | 1.50 |" in page
    assert "mean best test F1 (the acceptance): +1.00 points; one seed std of the published code: 2.83 (within it)" in page
    assert "mean steady-state test F1: +2.00 points; one seed std of the published code: 0.00 (NOT within it)" in page
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0 and len((tmp_path / "out" / "runs.csv").read_text().splitlines()) == 11


def test_committed_comp_side_by_side_report_renders_from_the_committed_runs(tmp_path, monkeypatch):
    """docs/results/comp_exact/report.md and runs.csv are what the report command makes of results/comp_exact."""
    root = BENCHMARKS.parent
    if not (root / "results" / "comp_exact").is_dir():
        pytest.skip("no committed results/comp_exact")
    monkeypatch.chdir(root)
    _script("comp_side_by_side").report(Path("results/comp_exact"), tmp_path, stage_epoch=150)
    committed = root / "docs" / "results" / "comp_exact"
    assert (tmp_path / "report.md").read_text().replace(str(tmp_path), "docs/results/comp_exact") == (committed / "report.md").read_text()
    assert (tmp_path / "runs.csv").read_text() == (committed / "runs.csv").read_text()
