"""`imer report`: aggregation and formatting checked against hand-made run directories."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from imer.cli import main
from imer.errors import IMERError
from imer.reports.aggregate import aggregate, mean_std
from imer.reports.render import build_report
from imer.reports.runs import collect_runs


def write_run(root: Path, dataset: str, method: str, rate: float, seed: int, test: dict, task: str = "regression", fold: int | None = None,
              conditions: dict | None = None, history: list[dict] | None = None) -> Path:
    """A fake finished run directory with exactly the files the report reads."""
    run = root / "runs" / dataset / method / f"rate={rate:g}" / (f"fold={fold}/" if fold is not None else "") / f"seed={seed}"
    run.mkdir(parents=True)
    metrics = {"method": method, "dataset": dataset, "seed": seed, "fold": fold, "task": task,
               "missing": {"train_rate": rate, "test_protocol": f"rate={rate:g}"},
               "missing_fraction": {"train": rate, "valid": rate, "test": min(rate, 2 / 3)}, "test": test, "valid": test}
    (run / "metrics.json").write_text(json.dumps(metrics))
    if conditions is not None:
        (run / "conditions.json").write_text(json.dumps({"conditions": conditions, "average": {}}))
    if history is not None:
        (run / "history.jsonl").write_text("".join(json.dumps({"epoch": e, "valid": h}) + "\n" for e, h in enumerate(history)))
    return run


@pytest.fixture()
def sweep_dir(tmp_path):
    """cmu-mosi (regression): A and B at rates 0.1 / 0.7, 3 seeds; B at 0.7 only 2 seeds."""
    acc = {("A", 0.1): [0.80, 0.82, 0.84], ("B", 0.1): [0.85, 0.85, 0.85], ("A", 0.7): [0.70, 0.72, 0.74], ("B", 0.7): [0.60, 0.64]}
    f1 = {("A", 0.1): [0.79, 0.80, 0.81], ("B", 0.1): [0.70, 0.70, 0.70], ("A", 0.7): [0.69, 0.70, 0.71], ("B", 0.7): [0.75, 0.77]}
    for (method, rate), values in acc.items():
        for seed, (a, f) in enumerate(zip(values, f1[(method, rate)])):
            test = {"acc2": a, "f1": f, "mae": 1.0 + seed, "corr": 0.5}
            if method == "B":
                test["modality_acc"] = {"audio": 0.55 + 0.01 * seed, "text": 0.75, "video": 0.52}
            write_run(tmp_path, "cmu-mosi", method, rate, seed, test,
                      history=[{"modality_acc": {"audio": 0.5, "text": 0.6 + 0.05 * e, "video": 0.5}} for e in range(3)] if method == "B" else None)
    return tmp_path


def test_mean_and_population_std():
    assert mean_std([0.80, 0.82, 0.84]) == pytest.approx((0.82, np.sqrt(0.0008 / 3)))
    assert mean_std([0.5]) == (0.5, 0.0)


def test_aggregation_equals_metrics_files(sweep_dir):
    runs = collect_runs(sweep_dir)
    assert len(runs) == 11
    by_key = {(a.method, a.rate): a for a in aggregate(runs)}
    a = by_key[("A", 0.1)]
    assert a.seeds == [0, 1, 2] and a.task == "regression" and a.headline == ("acc2", "f1")
    assert a.metrics["acc2"] == pytest.approx((0.82, np.std([0.80, 0.82, 0.84])))
    assert a.metrics["mae"] == pytest.approx((2.0, np.std([1.0, 2.0, 3.0])))
    assert by_key[("B", 0.7)].seeds == [0, 1]
    assert by_key[("B", 0.1)].modality_acc["audio"] == pytest.approx((0.56, np.std([0.55, 0.56, 0.57])))
    assert by_key[("A", 0.1)].modality_acc == {}


def test_markdown_cells_and_best_marking(sweep_dir):
    report = build_report(sweep_dir, plots=False)
    lines = (sweep_dir / "report" / "table.md").read_text().splitlines()
    assert lines[0] == "| dataset | variant | metric | rate 0.1 | rate 0.7 |"
    # A: acc2 82.00 ± 1.63, best F1 at 0.1 (80.00 ± 0.82); best ACC at 0.7
    assert lines[2] == "| cmu-mosi | A | ACC/F1 | 82.00 ± 1.63 / **80.00 ± 0.82** | **72.00 ± 1.63** / 70.00 ± 0.82 |"
    # B: best ACC at 0.1 (std 0), best F1 at 0.7, only 2 seeds there
    assert lines[3] == "| cmu-mosi | B | ACC/F1 | **85.00 ± 0.00** / 70.00 ± 0.00 | 62.00 ± 2.00 / **76.00 ± 1.00** (n=2) |"
    assert "population std" in report.text("md") and "realised test missing fraction: 0.1 → 0.100, 0.7 → 0.667" in report.text("md")


def test_latex_csv_and_json(sweep_dir):
    report = build_report(sweep_dir, plots=False)
    tex = (sweep_dir / "report" / "table.tex").read_text()
    assert r"cmu-mosi (ACC/F1) & A & 82.00$\pm$1.63 / \textbf{80.00}$\pm$0.82 & \textbf{72.00}$\pm$1.63 / 70.00$\pm$0.82 \\" in tex
    rows = list(csv.DictReader(io.StringIO((sweep_dir / "report" / "table.csv").read_text())))
    row = next(r for r in rows if r["method"] == "A" and r["rate"] == "0.1")
    assert float(row["metric1_mean"]) == pytest.approx(0.82) and row["metric1"] == "acc2"
    assert row["metric1_best"] == "False" and row["metric2_best"] == "True" and row["n_seeds"] == "3"
    data = json.loads((sweep_dir / "report" / "report.json").read_text())
    agg = next(a for a in data["aggregates"] if a["method"] == "B" and a["rate"] == 0.7)
    assert agg["metrics"]["f1"]["mean"] == pytest.approx(0.76) and agg["best"] == ["f1"] and agg["seeds"] == [0, 1]
    assert "ddof=0" in data["std"]
    assert report.text("csv").startswith("dataset,variant,method,rate,task")


def test_classification_folds_and_conditions(tmp_path):
    """ACC/UA for classification; folds are averaged inside a seed before the std over seeds."""
    cond = {"a": {"acc": 0.4, "ua": 0.3}, "t": {"acc": 0.6, "ua": 0.5}, "at": {"acc": 0.8, "ua": 0.7}}
    for seed, (f1_acc, f2_acc) in enumerate([(0.50, 0.70), (0.70, 0.70)]):
        for fold, value in ((1, f1_acc), (2, f2_acc)):
            write_run(tmp_path, "iemocap4", "C", 0.4, seed, {"acc": value, "ua": value - 0.1, "wf1": value}, task="classification", fold=fold, conditions=cond)
    (a,) = aggregate(collect_runs(tmp_path))
    assert a.headline == ("acc", "ua") and a.n_runs == 4
    assert a.metrics["acc"] == pytest.approx((0.65, 0.05))  # seed means 0.60 and 0.70
    report = build_report(tmp_path, plots=False)
    assert "| iemocap4 | C | ACC/UA | **65.00 ± 5.00** / **55.00 ± 5.00** |" in report.text("md")
    cmd = (tmp_path / "report" / "conditions.md").read_text().splitlines()
    assert cmd[0] == "| dataset | variant | train rate | metric | {a} | {t} | {at} | avg |"
    assert cmd[2] == "| iemocap4 | C | 0.4 | ACC | 40.00 ± 0.00 | 60.00 ± 0.00 | 80.00 ± 0.00 | 60.00 |"
    assert (tmp_path / "report" / "conditions.tex").is_file() and (tmp_path / "report" / "conditions.csv").is_file()


def test_plots_are_written(sweep_dir):
    report = build_report(sweep_dir)
    names = sorted(p.name for p in report.plots)
    assert names == ["metric_vs_rate.png", "modality_balance.png", "modality_over_epochs.png"]
    for p in report.plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_cli_report_formats_and_errors(sweep_dir, tmp_path, capsys):
    assert main(["report", str(sweep_dir), "--format", "latex", "--no-plots"]) == 0
    assert r"\toprule" in capsys.readouterr().out
    assert main(["report", str(sweep_dir), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "85.00 ± 0.00*" in out and "rate 0.7" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "no finished runs" in capsys.readouterr().err
    with pytest.raises(IMERError):
        build_report(tmp_path / "missing")


def test_method_diagnostics_at_the_selected_epoch(tmp_path):
    """The report page shows each method's own per-epoch diagnostics at the selected epoch, mean over seeds."""
    for variant, split in (("P", "test"), ("Q", "valid")):  # Q did not log the test split: validation is shown, and said
        for seed, matched in ((0, 0.2), (1, 0.4)):
            history = [{"modality_acc": {"a": 0.5}} for _ in range(3)]
            run = write_run(tmp_path, "cmu-mosi", variant, 0.4, seed, {"acc2": 0.7, "f1": 0.7})
            metrics = json.loads((run / "metrics.json").read_text())
            metrics["selection"] = {"rule": "valid", "best_epoch": 1, "epochs": 3}
            (run / "metrics.json").write_text(json.dumps(metrics))
            logged = {"valid": {"gen": {"audio": {"matched": 5.0, "count": 9}}}}
            lines = [{"epoch": e, "test": h, "diagnostics": {**logged, **({"test": {"gen": {"audio": {"matched": matched + e, "count": 9}}}} if split == "test" else {})}}
                     for e, h in enumerate(history)]
            (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    build_report(tmp_path, plots=False)
    page = (tmp_path / "report" / "report.md").read_text()
    assert "| dataset | variant | rate | split | n | gen/audio/matched | gen/audio/count |" in page
    assert "| cmu-mosi | P | 0.4 | test | 2 | 1.300 | 9.000 |" in page
    assert "| cmu-mosi | Q | 0.4 | valid | 2 | 5.000 | 9.000 |" in page


def test_pattern_table_averages_each_availability_pattern_over_seeds(tmp_path):
    from imer.reports.sections import pattern_table
    from imer.reports.runs import RunRecord

    def run(variant: str, seed: int, both: float, audio: float) -> RunRecord:
        patterns = {"audio+text": {"n": 10, "acc2": both}, "audio": {"n": 4 + seed, "acc2": audio}}
        return RunRecord(tmp_path, "ds", variant, 0.3, seed, None, "regression", {"acc2": 0.7}, 0.3, variant=variant, metrics={"test_by_pattern": patterns})

    runs = [run("a", 0, 0.8, 0.5), run("a", 1, 0.6, 0.7), run("b", 0, 0.9, 0.4)]
    lines = pattern_table(runs, {"a": 0, "b": 1}).splitlines()
    assert lines[0] == "| dataset | variant | rate | {audio+text} | {audio} |"
    assert lines[2] == "| ds | a | 0.3 | 70.00 ± 10.00 (10) | 60.00 ± 10.00 (4) |"  # mean sizes 4.5 -> "4" (banker's rounding)
    assert lines[3] == "| ds | b | 0.3 | 90.00 ± 0.00 (10) | 40.00 ± 0.00 (4) |"
    assert pattern_table([RunRecord(tmp_path, "ds", "a", 0.3, 0, None, "regression", {}, 0.3)], {}) is None


def _figure_of(monkeypatch, draw):
    """The matplotlib figure a plot function draws (captured when it closes it)."""
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    draw()
    return figures[0]


def test_metric_vs_rate_plots_realised_fractions_bars_for_one_rate_and_the_dataset_caveat(tmp_path, monkeypatch):
    from imer.reports.aggregate import Aggregate
    from imer.reports.plots import plot_metric_vs_rate

    def agg(variant, rate, realised, dataset="cmu-mosi"):
        return Aggregate(dataset, variant, variant, rate, "regression", [0, 1], 2, {"acc2": (0.7, 0.01), "f1": (0.69, 0.02)},
                         test_missing_fraction=realised)

    figure = _figure_of(monkeypatch, lambda: plot_metric_vs_rate([agg(v, r, f) for v in ("ef", "lf") for r, f in ((0.1, 0.1), (0.7, 0.667))],
                                                                 tmp_path / "a.png"))
    assert list(figure.axes[0].get_xticks()) == pytest.approx([0.1, 0.667])  # where the masks really were, not 0.7
    assert any("cmu-mosi: its text and video features come from extractors trained" in t.get_text() for t in figure.texts)
    figure = _figure_of(monkeypatch, lambda: plot_metric_vs_rate([agg(v, 0.3, 0.3, "synthetic") for v in ("ef", "lf", "linear")], tmp_path / "b.png"))
    ax = figure.axes[0]
    assert len(ax.patches) == 3 and [t.get_text() for t in ax.get_xticklabels()] == ["ef", "lf", "linear"]  # one bar per variant
    assert "realised on test: 0.300" in ax.get_xlabel() and not any("caveat" in t.get_text() or ":" in t.get_text() for t in figure.texts)
