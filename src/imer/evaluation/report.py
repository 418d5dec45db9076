"""Tables of a sweep in the papers' layout: mean ± std over seeds, best per column marked.

Reads every ``metrics.json`` under a folder (a sweep directory or any tree of
run directories), groups runs by (dataset, method, missing rate) and
aggregates the test metrics over seeds. Numbers are shown ×100 with two
decimals; the spread is the **population** standard deviation (``ddof=0``)
over seeds, as in ``protocol.md``. For fold-based datasets a seed's value is
first averaged over its folds. The rate of a run is its training missing rate
(``missing.train_rate``; the test masks use the same rate unless the run set
another — the realised test fraction is kept in ``report.json``).

Outputs (``DIR/report/``): ``table.md``, ``table.tex``, ``table.csv`` (one row
per dataset × method × rate, unrounded), ``report.json`` (everything,
machine-readable), ``conditions.{md,tex,csv}`` when runs hold a
``conditions.json``, and the PNG plots of :mod:`imer.evaluation.plots`.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imer.errors import IMERError
from imer.evaluation.metrics import headline_metrics
from imer.io import atomic_write, read_json, write_json

METRIC_LABELS = {"acc": "ACC", "ua": "UA", "acc2": "ACC", "f1": "F1", "wf1": "WF1", "mae": "MAE", "corr": "Corr", "acc7": "ACC7"}
STD_NOTE = "mean ± population std (ddof=0) over seeds, ×100"


@dataclass
class RunRecord:
    """One finished run, as read from its directory."""

    path: Path
    dataset: str
    method: str
    rate: float
    seed: int
    fold: int | None
    task: str
    test: dict[str, Any]
    test_missing_fraction: float
    selection: str = "valid"
    epochs: int | None = None
    conditions: dict[str, dict[str, Any]] | None = None

    @property
    def has_history(self) -> bool:
        return (self.path / "history.jsonl").is_file()


@dataclass
class Aggregate:
    """One (dataset, method, rate) over its seeds: ``metrics[name] = (mean, std)``."""

    dataset: str
    method: str
    rate: float
    task: str
    seeds: list[int]
    n_runs: int
    metrics: dict[str, tuple[float, float]]
    modality_acc: dict[str, tuple[float, float]] = field(default_factory=dict)
    test_missing_fraction: float = 0.0
    conditions: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)

    @property
    def headline(self) -> tuple[str, str]:
        return headline_metrics(self.task)


def collect_runs(root: str | Path) -> list[RunRecord]:
    """Every finished run (a folder with ``metrics.json``) under ``root``, sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise IMERError(f"{root}: not a directory")
    runs = []
    for path in sorted(root.rglob("metrics.json")):
        run_dir = path.parent
        try:
            m = read_json(path)
            missing = m.get("missing", {})
            record = RunRecord(
                path=run_dir,
                dataset=str(m["dataset"]),
                method=str(m["method"]),
                rate=float(missing.get("train_rate", 0.0)),
                seed=int(m["seed"]),
                fold=m.get("fold"),
                task=str(m["task"]),
                test=m["test"],
                test_missing_fraction=float(m.get("missing_fraction", {}).get("test", float("nan"))),
                selection=str(m.get("selection", {}).get("rule", "valid")),
                epochs=m.get("selection", {}).get("epochs"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IMERError(f"{path}: not a metrics file written by imer ({type(exc).__name__}: {exc})") from None
        if (run_dir / "conditions.json").is_file():
            record.conditions = read_json(run_dir / "conditions.json")["conditions"]
        runs.append(record)
    return runs


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (``ddof=0``)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


def _per_seed(runs: list[RunRecord], value) -> tuple[list[int], list[float]]:
    """Values of ``value(run)`` averaged over folds within each seed (runs without a value are left out)."""
    by_seed: dict[int, list[float]] = defaultdict(list)
    for r in runs:
        v = value(r)
        if v is not None and np.isfinite(v):
            by_seed[r.seed].append(float(v))
    seeds = sorted(by_seed)
    return seeds, [float(np.mean(by_seed[s])) for s in seeds]


def aggregate(runs: list[RunRecord]) -> list[Aggregate]:
    """Group runs by (dataset, method, rate) and reduce every scalar test metric over seeds."""
    groups: dict[tuple[str, str, float], list[RunRecord]] = defaultdict(list)
    for r in runs:
        groups[(r.dataset, r.method, r.rate)].append(r)
    out = []
    for (dataset, method, rate), members in sorted(groups.items()):
        tasks = {r.task for r in members}
        if len(tasks) > 1:
            raise IMERError(f"{dataset}/{method} rate={rate:g}: runs disagree on the task ({sorted(tasks)})")
        task = tasks.pop()
        scalar = sorted({k for r in members for k, v in r.test.items() if isinstance(v, (int, float))})
        metrics = {}
        for k in scalar:
            _, values = _per_seed(members, lambda r, k=k: r.test.get(k))
            if values:
                metrics[k] = mean_std(values)
        modality = sorted({m for r in members for m in r.test.get("modality_acc", {})})
        modality_acc = {}
        for mod in modality:
            _, values = _per_seed(members, lambda r, mod=mod: r.test.get("modality_acc", {}).get(mod))
            if values:
                modality_acc[mod] = mean_std(values)
        conditions: dict[str, dict[str, tuple[float, float]]] = {}
        labels = list(dict.fromkeys(c for r in members if r.conditions for c in r.conditions))
        for label in labels:
            conditions[label] = {}
            for k in headline_metrics(task):
                _, values = _per_seed(members, lambda r, label=label, k=k: (r.conditions or {}).get(label, {}).get(k))
                if values:
                    conditions[label][k] = mean_std(values)
        seeds = sorted({r.seed for r in members})
        out.append(Aggregate(dataset, method, rate, task, seeds, len(members), metrics, modality_acc,
                             float(np.nanmean([r.test_missing_fraction for r in members])), conditions))
    return out


@dataclass
class PaperTable:
    """Rows = dataset × method, columns = rates; ``best[(dataset, rate, metric)]`` = best methods."""

    rates: list[float]
    rows: list[tuple[str, str]]
    cells: dict[tuple[str, str, float], Aggregate]
    best: dict[tuple[str, float, str], set[str]]
    max_seeds: int
    notes: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, aggregates: list[Aggregate], runs: list[RunRecord] | None = None) -> "PaperTable":
        rates = sorted({a.rate for a in aggregates})
        rows = list(dict.fromkeys((a.dataset, a.method) for a in aggregates))
        cells = {(a.dataset, a.method, a.rate): a for a in aggregates}
        best: dict[tuple[str, float, str], set[str]] = {}
        for dataset in dict.fromkeys(d for d, _ in rows):
            for rate in rates:
                here = [a for a in aggregates if a.dataset == dataset and a.rate == rate]
                for k in (here[0].headline if here else ()):
                    scores = {a.method: a.metrics[k][0] for a in here if k in a.metrics}
                    if scores:
                        top = max(scores.values())
                        best[(dataset, rate, k)] = {m for m, v in scores.items() if np.isclose(v, top, rtol=0, atol=1e-12)}
        return cls(rates, rows, cells, best, max((len(a.seeds) for a in aggregates), default=0), table_notes(aggregates, runs or []))

    def entry(self, dataset: str, method: str, rate: float) -> list[tuple[float, float, bool]] | None:
        """``[(mean×100, std×100, is_best)]`` for the two headline metrics, or None if the cell has no runs."""
        a = self.cells.get((dataset, method, rate))
        if a is None:
            return None
        return [(100 * a.metrics[k][0], 100 * a.metrics[k][1], method in self.best.get((dataset, rate, k), set())) for k in a.headline if k in a.metrics]


def table_notes(aggregates: list[Aggregate], runs: list[RunRecord]) -> list[str]:
    """Facts a reader needs next to the numbers: realised test missing fraction, selection rule, epochs."""
    notes = []
    realised = {r: float(np.mean([a.test_missing_fraction for a in aggregates if a.rate == r])) for r in sorted({a.rate for a in aggregates})}
    if any(abs(v - r) > 5e-4 for r, v in realised.items()):
        notes.append("realised test missing fraction: " + ", ".join(f"{_rate(r)} → {v:.3f}" for r, v in realised.items()))
    if runs:
        notes.append("model selection: " + ", ".join(sorted({r.selection for r in runs})) + " (see docs/protocol.md)")
        epochs = sorted({r.epochs for r in runs if r.epochs is not None})
        if epochs:
            notes.append("epochs: " + ", ".join(map(str, epochs)))
    return notes


def _metric_pair(task: str) -> str:
    return "/".join(METRIC_LABELS[k] for k in headline_metrics(task))


def _rate(rate: float) -> str:
    return f"{rate:g}"


def _fmt(mean: float, std: float, best: bool, style: str) -> str:
    if style == "latex":
        core = f"{mean:.2f}"
        return (rf"\textbf{{{core}}}" if best else core) + rf"$\pm${std:.2f}"
    text = f"{mean:.2f} ± {std:.2f}"
    if style == "md":
        return f"**{text}**" if best else text
    return text + ("*" if best else "")


def _cell_text(table: PaperTable, dataset: str, method: str, rate: float, style: str) -> str:
    entry = table.entry(dataset, method, rate)
    if entry is None:
        return "–"
    text = " / ".join(_fmt(m, s, b, style) for m, s, b in entry)
    a = table.cells[(dataset, method, rate)]
    if len(a.seeds) < table.max_seeds:
        text += f" (n={len(a.seeds)})" if style != "latex" else rf"$^{{n={len(a.seeds)}}}$"
    return text


def markdown_table(table: PaperTable) -> str:
    """The paper table as GitHub markdown (best per column in bold)."""
    header = ["dataset", "method", "metric", *[f"rate {_rate(r)}" for r in table.rates]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * len(table.rates)]
    for dataset, method in table.rows:
        task = next(a.task for (d, m, _), a in table.cells.items() if d == dataset and m == method)
        cells = [_cell_text(table, dataset, method, r, "md") for r in table.rates]
        lines.append("| " + " | ".join([dataset, method, _metric_pair(task), *cells]) + " |")
    notes = [f"{STD_NOTE}; best per dataset and column in bold; (n=k): fewer seeds than the others", *table.notes]
    return "\n".join(lines) + "\n\n" + "  \n".join(notes) + "\n"


def latex_table(table: PaperTable) -> str:
    """The paper table as a LaTeX ``tabular`` (booktabs), best per column in ``\\textbf``."""
    cols = "ll" + "c" * len(table.rates)
    lines = [r"\begin{tabular}{" + cols + "}", r"\toprule", "Dataset & Method & " + " & ".join(_rate(r) for r in table.rates) + r" \\", r"\midrule"]
    previous = None
    for dataset, method in table.rows:
        if previous is not None and dataset != previous:
            lines.append(r"\midrule")
        task = next(a.task for (d, m, _), a in table.cells.items() if d == dataset and m == method)
        name = f"{dataset} ({_metric_pair(task)})" if dataset != previous else ""
        cells = [_cell_text(table, dataset, method, r, "latex") for r in table.rates]
        lines.append(" & ".join([_tex_escape(name), _tex_escape(method), *cells]) + r" \\")
        previous = dataset
    lines += [r"\bottomrule", r"\end{tabular}", f"% {STD_NOTE}; best per dataset and column in bold", *[f"% {n}" for n in table.notes]]
    return "\n".join(lines) + "\n"


def _tex_escape(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def csv_rows(aggregates: list[Aggregate], table: PaperTable) -> list[dict[str, Any]]:
    """One row per dataset × method × rate with unrounded means/stds (fractions, not %) and best flags."""
    rows = []
    for a in aggregates:
        first, second = a.headline
        row: dict[str, Any] = {
            "dataset": a.dataset, "method": a.method, "rate": a.rate, "task": a.task, "n_seeds": len(a.seeds),
            "seeds": " ".join(map(str, a.seeds)), "n_runs": a.n_runs, "test_missing_fraction": a.test_missing_fraction,
        }
        for slot, k in (("metric1", first), ("metric2", second)):
            mean, std = a.metrics.get(k, (float("nan"), float("nan")))
            row.update({slot: k, f"{slot}_mean": mean, f"{slot}_std": std, f"{slot}_best": a.method in table.best.get((a.dataset, a.rate, k), set())})
        rows.append(row)
    return rows


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


@dataclass
class ConditionTable:
    """Fixed-condition results: rows = dataset × method × training rate, columns = conditions + average."""

    labels: list[str]
    rows: list[Aggregate]

    @classmethod
    def build(cls, aggregates: list[Aggregate]) -> "ConditionTable | None":
        rows = [a for a in aggregates if a.conditions]
        if not rows:
            return None
        return cls(list(dict.fromkeys(c for a in rows for c in a.conditions)), rows)

    def average(self, a: Aggregate, k: str) -> float | None:
        """Mean over conditions of the seed-averaged metric ``k`` (None if a condition is missing)."""
        values = [a.conditions.get(c, {}).get(k) for c in self.labels]
        return None if any(v is None for v in values) else float(np.mean([v[0] for v in values]))

    def markdown(self) -> str:
        lines = ["| dataset | method | train rate | metric | " + " | ".join(f"{{{c}}}" for c in self.labels) + " | avg |",
                 "|---|---|---|---|" + "---:|" * (len(self.labels) + 1)]
        for a in self.rows:
            k = a.headline[0]
            cells = [f"{100 * a.conditions[c][k][0]:.2f} ± {100 * a.conditions[c][k][1]:.2f}" if k in a.conditions.get(c, {}) else "–" for c in self.labels]
            avg = self.average(a, k)
            lines.append(f"| {a.dataset} | {a.method} | {_rate(a.rate)} | {METRIC_LABELS[k]} | " + " | ".join(cells) + f" | {'–' if avg is None else f'{100 * avg:.2f}'} |")
        return "\n".join(lines) + f"\n\nTest split under each fixed condition (every utterance keeps exactly that subset); {STD_NOTE}.\n"

    def latex(self) -> str:
        lines = [r"\begin{tabular}{lll" + "c" * (len(self.labels) + 1) + "}", r"\toprule",
                 "Dataset & Method & Rate & " + " & ".join(r"\{" + c + r"\}" for c in self.labels) + r" & Avg \\", r"\midrule"]
        for a in self.rows:
            k = a.headline[0]
            cells = [f"{100 * a.conditions[c][k][0]:.2f}" + rf"$\pm${100 * a.conditions[c][k][1]:.2f}" if k in a.conditions.get(c, {}) else "--" for c in self.labels]
            avg = self.average(a, k)
            lines.append(" & ".join([_tex_escape(a.dataset), _tex_escape(a.method), _rate(a.rate), *cells, "--" if avg is None else f"{100 * avg:.2f}"]) + r" \\")
        return "\n".join(lines + [r"\bottomrule", r"\end{tabular}", f"% {METRIC_LABELS.get('acc')} per fixed condition; {STD_NOTE}"]) + "\n"

    def csv_rows(self) -> list[dict[str, Any]]:
        rows = []
        for a in self.rows:
            for c in self.labels:
                for k, (mean, std) in a.conditions.get(c, {}).items():
                    rows.append({"dataset": a.dataset, "method": a.method, "rate": a.rate, "condition": c, "metric": k, "mean": mean, "std": std, "n_seeds": len(a.seeds)})
        return rows


@dataclass
class Report:
    """Everything ``imer report`` shows and writes."""

    root: Path
    out_dir: Path
    runs: list[RunRecord]
    aggregates: list[Aggregate]
    table: PaperTable
    conditions: ConditionTable | None
    failed: list[str]
    plots: list[Path] = field(default_factory=list)

    def text(self, fmt: str) -> str:
        """The main table as ``md``, ``latex`` or ``csv`` text."""
        if fmt == "md":
            return markdown_table(self.table)
        if fmt == "latex":
            return latex_table(self.table)
        if fmt == "csv":
            return _csv_text(csv_rows(self.aggregates, self.table))
        raise IMERError(f"unknown report format {fmt!r}; use md, latex or csv")

    def print_terminal(self) -> None:
        """The paper table (and the condition table) with rich; best cells bold and starred."""
        from rich.console import Console
        from rich.table import Table

        console = Console()
        if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
            console = Console(width=220)
        table = Table(title=f"{self.root}: test {STD_NOTE}", caption="* = best of the dataset in that column")
        for c in ("dataset", "method", "metric"):
            table.add_column(c)
        for r in self.table.rates:
            table.add_column(f"rate {_rate(r)}", justify="right")
        for dataset, method in self.table.rows:
            task = next(a.task for (d, m, _), a in self.table.cells.items() if d == dataset and m == method)
            cells = []
            for r in self.table.rates:
                entry = self.table.entry(dataset, method, r)
                cells.append("–" if entry is None else " / ".join((f"[bold]{_fmt(m, s, b, 'plain')}[/bold]" if b else _fmt(m, s, b, "plain")) for m, s, b in entry))
            table.add_row(dataset, method, _metric_pair(task), *cells)
        console.print(table)
        for note in self.table.notes:
            console.print(f"  {note}")
        if self.conditions is not None:
            ct = Table(title="fixed conditions (test), first headline metric ×100")
            for c in ("dataset", "method", "rate", *[f"{{{c}}}" for c in self.conditions.labels], "avg"):
                ct.add_column(c, justify="left" if c in ("dataset", "method") else "right")
            for a in self.conditions.rows:
                k = a.headline[0]
                avg = self.conditions.average(a, k)
                ct.add_row(a.dataset, a.method, _rate(a.rate), *[f"{100 * a.conditions[c][k][0]:.2f}" if k in a.conditions.get(c, {}) else "–" for c in self.conditions.labels],
                           "–" if avg is None else f"{100 * avg:.2f}")
            console.print(ct)
        if self.failed:
            console.print(f"[yellow]{len(self.failed)} cell(s) failed in the last sweep (see failures.jsonl):[/yellow] " + ", ".join(self.failed[:8]) + (" ..." if len(self.failed) > 8 else ""))

    def to_json(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "std": "population (ddof=0) over seeds; fold values averaged within a seed first",
            "scale": "fractions (tables show ×100)",
            "runs": [{"path": str(r.path.relative_to(self.root)), "dataset": r.dataset, "method": r.method, "rate": r.rate, "seed": r.seed, "fold": r.fold} for r in self.runs],
            "aggregates": [
                {**{k: v for k, v in asdict(a).items() if k not in ("metrics", "modality_acc", "conditions")},
                 "headline": list(a.headline),
                 "best": [k for k in a.headline if a.method in self.table.best.get((a.dataset, a.rate, k), set())],
                 "metrics": {k: {"mean": m, "std": s} for k, (m, s) in a.metrics.items()},
                 "modality_acc": {k: {"mean": m, "std": s} for k, (m, s) in a.modality_acc.items()},
                 "conditions": {c: {k: {"mean": m, "std": s} for k, (m, s) in v.items()} for c, v in a.conditions.items()}}
                for a in self.aggregates
            ],
            "notes": self.table.notes,
            "failed_cells": self.failed,
            "plots": [str(p.name) for p in self.plots],
        }


def _failed_cells(root: Path) -> list[str]:
    path = root / "sweep.json"
    if not path.is_file():
        return []
    return [c["path"] for c in read_json(path).get("cells", []) if c.get("status") == "failed"]


def build_report(root: str | Path, out_dir: str | Path | None = None, plots: bool = True) -> Report:
    """Collect, aggregate and write all tables (and plots) of the runs under ``root``."""
    root = Path(root)
    out = Path(out_dir) if out_dir else root / "report"
    runs = [r for r in collect_runs(root) if out not in r.path.parents]
    if not runs:
        raise IMERError(f"{root}: no finished runs (metrics.json) found; run `imer sweep ... --out {root}` first")
    aggregates = aggregate(runs)
    report = Report(root, out, runs, aggregates, PaperTable.build(aggregates, runs), ConditionTable.build(aggregates), _failed_cells(root))
    out.mkdir(parents=True, exist_ok=True)
    for name, fmt in (("table.md", "md"), ("table.tex", "latex"), ("table.csv", "csv")):
        with atomic_write(out / name) as fh:
            fh.write(report.text(fmt))
    if report.conditions is not None:
        for name, text in (("conditions.md", report.conditions.markdown()), ("conditions.tex", report.conditions.latex()),
                           ("conditions.csv", _csv_text(report.conditions.csv_rows()))):
            with atomic_write(out / name) as fh:
                fh.write(text)
    if plots:
        from imer.evaluation.plots import write_plots

        report.plots = write_plots(report, out)
    write_json(out / "report.json", report.to_json())
    return report


def history_modality_acc(run_dir: Path) -> list[dict[str, float]] | None:
    """Per-epoch validation ``modality_acc`` from ``history.jsonl``; None if the run has none.

    Validation, not test: the test split is not evaluated during training
    unless ``train.eval_test_each_epoch`` is set, and curves over epochs are
    a model-selection view anyway.
    """
    path = run_dir / "history.jsonl"
    if not path.is_file():
        return None
    series = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        split = record.get("valid") or {}
        if "modality_acc" not in split:
            return None
        series.append(split["modality_acc"])
    return series or None
