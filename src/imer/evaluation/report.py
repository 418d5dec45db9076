"""Tables of a sweep in the papers' layout: mean ± std over seeds, best per column marked.

Reads every ``metrics.json`` under a folder (a sweep directory or any tree of
run directories), groups runs by (dataset, variant, missing rate) and
aggregates the test metrics over seeds. Runs of one group must share their
config hash (the resolved config minus seed and fold): runs with different
settings are never averaged. Numbers are shown ×100 with two decimals; the
spread is the **population** standard deviation (``ddof=0``) over seeds, as in
``protocol.md``. For fold-based datasets a seed's value is first averaged over
its folds. The rate of a run is its training missing rate
(``missing.train_rate``; the test masks use the same rate unless the run set
another — the realised test fraction is kept in ``report.json``).

Outputs (``DIR/report/``): ``report.md`` (the whole page: spec, variants,
the frozen hyper-parameter search, main table, both selection rules side by
side, paired significance, ablation tables with deltas, per-metric tables,
conditions, cost, plots), ``table.md``, ``table.tex``, ``table.csv`` (one row per dataset ×
variant × rate, unrounded), ``ablations.md`` when the sweep's variants have
bases, ``report.json`` (everything, machine-readable),
``conditions.{md,tex,csv}`` when runs hold a ``conditions.json``, and the PNG
plots of :mod:`imer.evaluation.plots`.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from imer.errors import IMERError
from imer.evaluation.metrics import headline_metrics, is_better
from imer.evaluation.plots import write_plots
from imer.evaluation.runs import METRIC_LABELS, RUN_LOCAL, RunRecord, best_per_stage, collect_runs, selected_by_rule, selected_diagnostics
from imer.evaluation.significance import Comparison, compare_runs
from imer.io import atomic_write, flatten, read_json, write_json

STD_NOTE = "mean ± population std (ddof=0) over seeds, ×100"


@dataclass
class Aggregate:
    """One (dataset, variant, rate) over its seeds: ``metrics[name] = (mean, std)``."""

    dataset: str
    variant: str
    method: str
    rate: float
    task: str
    seeds: list[int]
    n_runs: int
    metrics: dict[str, tuple[float, float]]
    modality_acc: dict[str, tuple[float, float]] = field(default_factory=dict)
    test_missing_fraction: float = 0.0
    conditions: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    config_hash: str | None = None
    cost: dict[str, float] = field(default_factory=dict)

    @property
    def headline(self) -> tuple[str, str]:
        return headline_metrics(self.task)


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


def _current_defaults(method: str) -> dict[str, Any]:
    """Every run-config field of ``method`` at this code's defaults, flattened (model fields from its dataclass)."""
    from imer.experiments.config import RunConfig
    from imer.models.registry import build_config

    values = RunConfig(method=method).to_dict()
    values["model"] = asdict(build_config(method))
    return flatten(values)


def settings_difference(a: RunRecord, b: RunRecord) -> list[str]:
    """The config fields on which two runs of one cell differ, as ``field (a vs b)``; empty when they share every setting.

    Compared from each run's ``config.json``, ignoring :data:`RUN_LOCAL`. A field
    that one run lacks was added to imer after that run was made: it counts as
    equal when the other run holds this code's default for it (new options are
    opt-in), so a grid can be finished by a later version of imer. Without both
    ``config.json`` files only the stored config hashes can say.
    """
    if a.config_hash == b.config_hash:
        return []
    if not (a.path / "config.json").is_file() or not (b.path / "config.json").is_file():
        return [f"config_hash ({a.config_hash!r} vs {b.config_hash!r})"]
    ca, cb = flatten(read_json(a.path / "config.json")), flatten(read_json(b.path / "config.json"))
    for config, run in ((ca, a), (cb, b)):
        if (run.metrics or {}).get("dataset_id"):
            config["data.name"] = run.metrics["dataset_id"]
    missing = object()
    defaults: dict[str, Any] | None = None
    out = []
    for key in sorted((set(ca) | set(cb)) - RUN_LOCAL):
        left, right = ca.get(key, missing), cb.get(key, missing)
        if left is missing or right is missing:
            if defaults is None:
                defaults = _current_defaults(a.method)
            if defaults.get(key, missing) == (right if left is missing else left):
                continue
        if left != right:
            out.append(f"{key} ({'absent' if left is missing else repr(left)} vs {'absent' if right is missing else repr(right)})")
    return out


def aggregate(runs: list[RunRecord], order: dict[str, int] | None = None) -> list[Aggregate]:
    """Group runs by (dataset, variant, rate) and reduce every scalar test metric over seeds.

    ``order`` ranks variants (the spec's order); others follow alphabetically.
    Refuses (``IMERError``) a group whose runs differ in a setting (:func:`settings_difference`).
    """
    groups: dict[tuple[str, str, float], list[RunRecord]] = defaultdict(list)
    for r in runs:
        groups[(r.dataset, r.variant, r.rate)].append(r)
    rank = order or {}
    out = []
    for (dataset, variant, rate), members in sorted(groups.items(), key=lambda kv: (kv[0][0], rank.get(kv[0][1], len(rank)), kv[0][1], kv[0][2])):
        where = f"{dataset}/{variant} rate={rate:g}"
        tasks = {r.task for r in members}
        if len(tasks) > 1:
            raise IMERError(f"{where}: runs disagree on the task ({sorted(tasks)})")
        task = tasks.pop()
        first = members[0]
        protocols = sorted({r.protocol for r in members})
        if len(protocols) > 1:
            raise IMERError(f"{where}: refusing to average runs made by different selection protocols ({', '.join(protocols)}); "
                            "each protocol's runs belong in their own row (another variant name or sweep folder)")
        for other in members[1:]:
            differing = [f"method ({first.method!r} vs {other.method!r})"] if other.method != first.method else settings_difference(first, other)
            if differing:
                raise IMERError(f"{where}: refusing to average runs with different configs ({first.path} vs {other.path}; differing: "
                                f"{', '.join(differing[:4])}); give each setting its own variant name")
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
        out.append(Aggregate(dataset, variant, first.method, rate, task, seeds, len(members), metrics, modality_acc,
                             float(np.nanmean([r.test_missing_fraction for r in members])), conditions,
                             next((r.config_hash for r in sorted(members, key=lambda r: (r.seed, r.fold or 0)) if r.config_hash), None),
                             _cost(members)))
    return out


def _cost(members: list[RunRecord]) -> dict[str, float]:
    """Mean seconds per epoch and per run, largest peak RSS and parameters of a group (what metrics.json holds)."""
    cost = {}
    for key, reduce in (("seconds_per_epoch", np.mean), ("wall_seconds", np.mean), ("peak_rss_mb", np.max), ("parameters", np.max)):
        values = [float(r.metrics[key]) for r in members if r.metrics and r.metrics.get(key) is not None]
        if values:
            cost[key] = float(reduce(values))
    return cost


@dataclass
class PaperTable:
    """Rows = dataset × variant, columns = rates; ``best[(dataset, rate, metric)]`` = best variants."""

    rates: list[float]
    rows: list[tuple[str, str]]
    cells: dict[tuple[str, str, float], Aggregate]
    best: dict[tuple[str, float, str], set[str]]
    max_seeds: int
    notes: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, aggregates: list[Aggregate], runs: list[RunRecord] | None = None) -> "PaperTable":
        rates = sorted({a.rate for a in aggregates})
        rows = list(dict.fromkeys((a.dataset, a.variant) for a in aggregates))
        cells = {(a.dataset, a.variant, a.rate): a for a in aggregates}
        best: dict[tuple[str, float, str], set[str]] = {}
        for dataset in dict.fromkeys(d for d, _ in rows):
            for rate in rates:
                here = [a for a in aggregates if a.dataset == dataset and a.rate == rate]
                for k in (here[0].headline if here else ()):
                    scores = {a.variant: a.metrics[k][0] for a in here if k in a.metrics}
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
    """Facts a reader needs next to the numbers: seeds per cell, realised test missing fraction, selection rule, epochs."""
    counts = sorted({len(a.seeds) for a in aggregates})
    notes = [f"seeds per cell: {counts[-1]}" + (f" (cells marked (n=k) have k: {', '.join(map(str, counts[:-1]))})" if len(counts) > 1 else "")] if counts else []
    realised = {r: float(np.mean([a.test_missing_fraction for a in aggregates if a.rate == r])) for r in sorted({a.rate for a in aggregates})}
    if any(abs(v - r) > 5e-4 for r, v in realised.items()):
        notes.append("realised test missing fraction: " + ", ".join(f"{_rate(r)} → {v:.3f}" for r, v in realised.items()))
    if runs:
        notes.append("model selection: " + _protocols(runs) + " (see docs/protocol.md)")
        epochs = sorted({r.epochs for r in runs if r.epochs is not None})
        if epochs:
            notes.append("epochs: " + ", ".join(map(str, epochs)))
    return notes


PROTOCOL_NOTES = {"cv": "cv (hyper-parameters and epochs chosen by cross-validation over the development videos, one refit on all of "
                        "them, the final epoch tested)", "cv-fold": "cv-fold (a held-out development fold as validation)"}


def _protocols(runs: list[RunRecord]) -> str:
    """The selection protocols of ``runs``; with several, which rows each made (a row never mixes them, see :func:`aggregate`)."""
    by_protocol: dict[str, list[str]] = {}
    for r in runs:
        names = by_protocol.setdefault(r.protocol, [])
        if r.variant not in names:
            names.append(r.variant)
    if len(by_protocol) == 1:
        return PROTOCOL_NOTES.get(next(iter(by_protocol)), next(iter(by_protocol)))
    return "; ".join(f"{PROTOCOL_NOTES.get(p, p)}: {', '.join(v)}" for p, v in sorted(by_protocol.items()))


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
    header = ["dataset", "variant", "metric", *[f"rate {_rate(r)}" for r in table.rates]]
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
    lines = [r"\begin{tabular}{" + cols + "}", r"\toprule", "Dataset & Variant & " + " & ".join(_rate(r) for r in table.rates) + r" \\", r"\midrule"]
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
    """One row per dataset × variant × rate with unrounded means/stds (fractions, not %) and best flags."""
    rows = []
    for a in aggregates:
        first, second = a.headline
        row: dict[str, Any] = {
            "dataset": a.dataset, "variant": a.variant, "method": a.method, "rate": a.rate, "task": a.task, "n_seeds": len(a.seeds),
            "seeds": " ".join(map(str, a.seeds)), "n_runs": a.n_runs, "test_missing_fraction": a.test_missing_fraction,
        }
        for slot, k in (("metric1", first), ("metric2", second)):
            mean, std = a.metrics.get(k, (float("nan"), float("nan")))
            row.update({slot: k, f"{slot}_mean": mean, f"{slot}_std": std, f"{slot}_best": a.variant in table.best.get((a.dataset, a.rate, k), set())})
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
    """Fixed-condition results: rows = dataset × variant × training rate, columns = conditions + average."""

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
        lines = ["| dataset | variant | train rate | metric | " + " | ".join(f"{{{c}}}" for c in self.labels) + " | avg |",
                 "|---|---|---|---|" + "---:|" * (len(self.labels) + 1)]
        for a in self.rows:
            k = a.headline[0]
            cells = [f"{100 * a.conditions[c][k][0]:.2f} ± {100 * a.conditions[c][k][1]:.2f}" if k in a.conditions.get(c, {}) else "–" for c in self.labels]
            avg = self.average(a, k)
            lines.append(f"| {a.dataset} | {a.variant} | {_rate(a.rate)} | {METRIC_LABELS[k]} | " + " | ".join(cells) + f" | {'–' if avg is None else f'{100 * avg:.2f}'} |")
        return "\n".join(lines) + f"\n\nTest split under each fixed condition (every utterance keeps exactly that subset); {STD_NOTE}.\n"

    def latex(self) -> str:
        lines = [r"\begin{tabular}{lll" + "c" * (len(self.labels) + 1) + "}", r"\toprule",
                 "Dataset & Variant & Rate & " + " & ".join(r"\{" + c + r"\}" for c in self.labels) + r" & Avg \\", r"\midrule"]
        for a in self.rows:
            k = a.headline[0]
            cells = [f"{100 * a.conditions[c][k][0]:.2f}" + rf"$\pm${100 * a.conditions[c][k][1]:.2f}" if k in a.conditions.get(c, {}) else "--" for c in self.labels]
            avg = self.average(a, k)
            lines.append(" & ".join([_tex_escape(a.dataset), _tex_escape(a.variant), _rate(a.rate), *cells, "--" if avg is None else f"{100 * avg:.2f}"]) + r" \\")
        return "\n".join(lines + [r"\bottomrule", r"\end{tabular}", f"% {METRIC_LABELS.get('acc')} per fixed condition; {STD_NOTE}"]) + "\n"

    def csv_rows(self) -> list[dict[str, Any]]:
        rows = []
        for a in self.rows:
            for c in self.labels:
                for k, (mean, std) in a.conditions.get(c, {}).items():
                    rows.append({"dataset": a.dataset, "variant": a.variant, "method": a.method, "rate": a.rate, "condition": c, "metric": k, "mean": mean, "std": std, "n_seeds": len(a.seeds)})
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
    info: SweepInfo = field(default_factory=lambda: SweepInfo())
    ablations: list[AblationTable] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)

    @cached_property
    def sections(self) -> dict[str, str]:
        """The further tables of the page, by the file each is also written to (only those that apply to these runs)."""
        order = self.info.order
        tables = {"selection.md": selection_table(self.runs, order),
                  "significance.md": significance_table(self.comparisons) if self.comparisons else None,
                  "patterns.md": pattern_table(self.runs, order),
                  "stages.md": stage_table(self.runs, order),
                  "gap.md": gap_table(self.runs, order)}
        return {name: text for name, text in tables.items() if text}

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
        for c in ("dataset", "variant", "metric"):
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
            for c in ("dataset", "variant", "rate", *[f"{{{c}}}" for c in self.conditions.labels], "avg"):
                ct.add_column(c, justify="left" if c in ("dataset", "variant") else "right")
            for a in self.conditions.rows:
                k = a.headline[0]
                avg = self.conditions.average(a, k)
                ct.add_row(a.dataset, a.variant, _rate(a.rate), *[f"{100 * a.conditions[c][k][0]:.2f}" if k in a.conditions.get(c, {}) else "–" for c in self.conditions.labels],
                           "–" if avg is None else f"{100 * avg:.2f}")
            console.print(ct)
        if self.failed:
            console.print(f"[yellow]{len(self.failed)} cell(s) failed in the last sweep (see failures.jsonl):[/yellow] " + ", ".join(self.failed[:8]) + (" ..." if len(self.failed) > 8 else ""))

    def to_json(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "std": "population (ddof=0) over seeds; fold values averaged within a seed first",
            "scale": "fractions (tables show ×100)",
            "runs": [{"path": str(r.path.relative_to(self.root)), "dataset": r.dataset, "variant": r.variant, "method": r.method, "config_hash": r.config_hash, "rate": r.rate, "seed": r.seed, "fold": r.fold} for r in self.runs],
            "aggregates": [
                {**{k: v for k, v in asdict(a).items() if k not in ("metrics", "modality_acc", "conditions")},
                 "headline": list(a.headline),
                 "best": [k for k in a.headline if a.variant in self.table.best.get((a.dataset, a.rate, k), set())],
                 "metrics": {k: {"mean": m, "std": s} for k, (m, s) in a.metrics.items()},
                 "modality_acc": {k: {"mean": m, "std": s} for k, (m, s) in a.modality_acc.items()},
                 "conditions": {c: {k: {"mean": m, "std": s} for k, (m, s) in v.items()} for c, v in a.conditions.items()}}
                for a in self.aggregates
            ],
            "ablations": [{"dataset": t.dataset, "rate": t.rate, "base": t.base.variant, "variants": [a.variant for a in t.variants],
                           "delta": {f"{v}/{k}": d for (v, k), d in t.deltas.items()}} for t in self.ablations],
            "significance": [c.to_json() for c in self.comparisons],
            "search": self.info.search,
            "notes": self.table.notes,
            "failed_cells": self.failed,
            "plots": [str(p.name) for p in self.plots],
        }


def _failed_cells(root: Path) -> list[str]:
    path = root / "sweep.json"
    if not path.is_file():
        return []
    return [c["path"] for c in read_json(path).get("cells", []) if c.get("status") == "failed"]


RAW_METRICS = ("mae", "corr")  # shown as they are (3 decimals); every other metric is a fraction shown ×100


def _metric_text(k: str, mean: float, std: float) -> str:
    if k in RAW_METRICS:
        return f"{mean:.3f} ± {std:.3f}"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _value_text(k: str, value: float) -> str:
    return f"{value:.3f}" if k in RAW_METRICS else f"{100 * value:.2f}"


def _delta_text(k: str, delta: float) -> str:
    return f"{delta:+.3f}" if k in RAW_METRICS else f"{100 * delta:+.2f}"


def _seed_values(runs: list[RunRecord], value) -> dict[int, float]:
    seeds, values = _per_seed(runs, value)
    return dict(zip(seeds, values))


@dataclass
class AblationTable:
    """One base variant and the variants built on it, at one dataset and rate.

    Cells are mean ± std over seeds; for a variant, ``(Δ)`` is the mean paired
    difference to the base over the seeds both have (same seeds = same test
    masks), in points (×100) or raw units for MAE/Corr.
    """

    dataset: str
    rate: float
    base: Aggregate
    variants: list[Aggregate]
    columns: list[tuple[str, str]]  # (label, key): key = metric name or "modality_acc.<m>"
    deltas: dict[tuple[str, str], float | None]  # (variant, key) -> paired delta

    @staticmethod
    def value(a: Aggregate, key: str) -> tuple[float, float] | None:
        if key.startswith("modality_acc."):
            return a.modality_acc.get(key.split(".", 1)[1])
        return a.metrics.get(key)

    def markdown(self) -> str:
        lines = [f"Variants of `{self.base.variant}` on {self.dataset}, rate {_rate(self.rate)}:", "",
                 "| variant | n | " + " | ".join(label for label, _ in self.columns) + " |",
                 "|---|---:|" + "---:|" * len(self.columns)]
        for a in [self.base, *self.variants]:
            cells = []
            for _, key in self.columns:
                v = self.value(a, key)
                metric = key.split(".")[0] if key.startswith("modality_acc.") else key
                text = "–" if v is None else _metric_text(metric, *v)
                if a is not self.base and v is not None:
                    d = self.deltas.get((a.variant, key))
                    text += "" if d is None else f" ({_delta_text(metric, d)})"
                cells.append(text)
            name = f"{a.variant} (base)" if a is self.base else a.variant
            lines.append(f"| {name} | {len(a.seeds)} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def ablation_tables(aggregates: list[Aggregate], runs: list[RunRecord], bases: dict[str, str]) -> list[AblationTable]:
    """Every (dataset, rate, base) where at least one variant with that ``base`` has runs."""
    cells = {(a.dataset, a.variant, a.rate): a for a in aggregates}
    by_cell: dict[tuple[str, str, float], list[RunRecord]] = defaultdict(list)
    for r in runs:
        by_cell[(r.dataset, r.variant, r.rate)].append(r)
    tables = []
    seen: set[tuple[str, float, str]] = set()
    for a in aggregates:
        base_name = bases.get(a.variant)
        if base_name is None or (a.dataset, a.rate, base_name) in seen or (a.dataset, base_name, a.rate) not in cells:
            continue
        seen.add((a.dataset, a.rate, base_name))
        base = cells[(a.dataset, base_name, a.rate)]
        members = [b for b in aggregates if b.dataset == a.dataset and b.rate == a.rate and bases.get(b.variant) == base_name]
        columns = [(METRIC_LABELS.get(k, k), k) for k in base.headline]
        modalities = list(dict.fromkeys(m for b in [base, *members] for m in b.modality_acc))
        columns += [(f"{m} head", f"modality_acc.{m}") for m in modalities]
        deltas: dict[tuple[str, str], float | None] = {}
        for b in members:
            for _, key in columns:
                if key.startswith("modality_acc."):
                    mod = key.split(".", 1)[1]
                    value = lambda r, mod=mod: r.test.get("modality_acc", {}).get(mod)  # noqa: E731
                else:
                    value = lambda r, key=key: r.test.get(key)  # noqa: E731
                mine = _seed_values(by_cell[(b.dataset, b.variant, b.rate)], value)
                theirs = _seed_values(by_cell[(base.dataset, base.variant, base.rate)], value)
                common = sorted(set(mine) & set(theirs))
                deltas[(b.variant, key)] = float(np.mean([mine[s] - theirs[s] for s in common])) if common else None
        tables.append(AblationTable(a.dataset, a.rate, base, members, columns, deltas))
    return tables


def metric_table(aggregates: list[Aggregate], k: str) -> str:
    """One metric: rows = dataset × variant, columns = rates, best per dataset and column in bold."""
    rates = sorted({a.rate for a in aggregates})
    rows = list(dict.fromkeys((a.dataset, a.variant) for a in aggregates))
    cells = {(a.dataset, a.variant, a.rate): a for a in aggregates}
    best: dict[tuple[str, float], float] = {}
    for a in aggregates:
        if k in a.metrics:
            key = (a.dataset, a.rate)
            if key not in best or is_better(k, a.metrics[k][0], best[key]):
                best[key] = a.metrics[k][0]
    lines = [f"| dataset | variant | {' | '.join(f'rate {_rate(r)}' for r in rates)} |", "|---|---|" + "---:|" * len(rates)]
    for dataset, variant in rows:
        texts = []
        for r in rates:
            a = cells.get((dataset, variant, r))
            if a is None or k not in a.metrics:
                texts.append("–")
                continue
            text = _metric_text(k, *a.metrics[k])
            texts.append(f"**{text}**" if np.isclose(a.metrics[k][0], best[(dataset, r)], rtol=0, atol=1e-12) else text)
        lines.append(f"| {dataset} | {variant} | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def cost_table(aggregates: list[Aggregate]) -> str:
    """Per dataset × variant: runs, mean s/epoch, mean wall s/run, largest peak RSS, parameters."""
    groups: dict[tuple[str, str], list[Aggregate]] = defaultdict(list)
    for a in aggregates:
        groups[(a.dataset, a.variant)].append(a)
    lines = ["| dataset | variant | runs | s / epoch | s / run | peak RSS (MB) | parameters |", "|---|---|---:|---:|---:|---:|---:|"]
    for (dataset, variant), members in groups.items():
        def pick(key, reduce, fmt):
            values = [a.cost[key] for a in members if key in a.cost]
            return fmt.format(reduce(values)) if values else "–"
        runs = sum(a.n_runs for a in members)
        lines.append(f"| {dataset} | {variant} | {runs} | {pick('seconds_per_epoch', np.mean, '{:.2f}')} | {pick('wall_seconds', np.mean, '{:.1f}')} | "
                     f"{pick('peak_rss_mb', np.max, '{:.0f}')} | {pick('parameters', np.max, '{:,.0f}')} |")
    return "\n".join(lines) + "\n"


def diagnostics_table(runs: list[RunRecord], order: dict[str, int]) -> str | None:
    """Methods' own per-epoch diagnostics at the selected epoch, mean over seeds (None if no run logs any).

    On the test split where the runs logged it every epoch, else on validation; the ``split`` column says which.
    """
    groups: dict[tuple[str, str, float, str], list[dict[str, float]]] = defaultdict(list)
    for r in runs:
        found = selected_diagnostics(r)
        if found:
            split, values = found
            groups[(r.dataset, r.variant, r.rate, split)].append(values)
    if not groups:
        return None
    keys = list(dict.fromkeys(k for group in groups.values() for values in group for k in values))
    lines = ["| dataset | variant | rate | split | n | " + " | ".join(keys) + " |", "|---|---|---|---|---:|" + "---:|" * len(keys)]
    for (dataset, variant, rate, split), group in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], len(order)), kv[0][1], kv[0][2], kv[0][3])):
        cells = [f"{np.mean([g[k] for g in group if k in g]):.3f}" if any(k in g for g in group) else "–" for k in keys]
        lines.append(f"| {dataset} | {variant} | {_rate(rate)} | {split} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pattern_table(runs: list[RunRecord], order: dict[str, int]) -> str | None:
    """Headline test metric per availability pattern of the test mask (``test_by_pattern``), mean ± std over seeds.

    Where a method wins or loses its points: e.g. utterances that kept only a
    weak modality. None when no run records patterns.
    """
    groups: dict[tuple[str, str, float], list[RunRecord]] = defaultdict(list)
    for r in runs:
        if (r.metrics or {}).get("test_by_pattern"):
            groups[(r.dataset, r.variant, r.rate)].append(r)
    if not groups:
        return None
    patterns = sorted({p for members in groups.values() for r in members for p in r.metrics["test_by_pattern"]}, key=lambda p: (-p.count("+"), p))
    metric = headline_metrics(next(iter(groups.values()))[0].task)[0]
    lines = ["| dataset | variant | rate | " + " | ".join(f"{{{p}}}" for p in patterns) + " |", "|---|---|---|" + "---:|" * len(patterns)]
    for (dataset, variant, rate), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], order.get(kv[0][1], len(order)), kv[0][1])):
        cells = []
        for p in patterns:
            _, values = _per_seed(members, lambda r, p=p: r.metrics["test_by_pattern"].get(p, {}).get(metric))
            sizes = [r.metrics["test_by_pattern"][p]["n"] for r in members if p in r.metrics["test_by_pattern"]]
            cells.append(f"{_metric_text(metric, *mean_std(values))} ({np.mean(sizes):.0f})" if values else "–")
        lines.append(f"| {dataset} | {variant} | {_rate(rate)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def selection_table(runs: list[RunRecord], order: dict[str, int]) -> str | None:
    """Validation-selected (the honest numbers) beside test-selected (the published code's rule), per dataset × variant × rate.

    Both come from the same runs: the run's own rule from ``metrics.json``,
    the other from its per-epoch history (``train.eval_test_each_epoch``).
    None when no run logged the test split every epoch.
    """
    groups: dict[tuple[str, str, float], list[RunRecord]] = defaultdict(list)
    for r in runs:
        groups[(r.dataset, r.variant, r.rate)].append(r)
    lines: list[str] = []
    missing: list[str] = []
    header = None
    for (dataset, variant, rate), members in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], len(order)), kv[0][1], kv[0][2])):
        picked = {rule: {id(r): selected_by_rule(r, rule) for r in members} for rule in ("valid", "test-published")}
        usable = [r for r in members if all(picked[rule][id(r)] is not None for rule in picked)]
        if not usable:
            missing.append(variant)
            continue
        keys = headline_metrics(members[0].task)
        if header != keys:
            if header is not None:
                lines.append("")
            header = keys
            labels = [METRIC_LABELS.get(k, k) for k in keys]
            lines += ["| dataset | variant | rate | n | " + " | ".join(f"{lab} valid-selected | {lab} test-selected (Δ)" for lab in labels) + " | epochs (valid / test) |",
                      "|---|---|---|---:|" + "---:|---:|" * len(keys) + "---|"]
        cells = []
        for k in keys:
            values = {rule: _seed_values(usable, lambda r, rule=rule, k=k: picked[rule][id(r)]["test"].get(k)) for rule in picked}
            common = sorted(set(values["valid"]) & set(values["test-published"]))
            honest = mean_std([values["valid"][s] for s in common])
            chosen = mean_std([values["test-published"][s] for s in common])
            delta = float(np.mean([values["test-published"][s] - values["valid"][s] for s in common]))
            cells += [_metric_text(k, *honest), f"{_metric_text(k, *chosen)} ({_delta_text(k, delta)})"]
        epochs = [f"{picked['valid'][id(r)]['epoch']}/{picked['test-published'][id(r)]['epoch']}" for r in sorted(usable, key=lambda r: (r.seed, r.fold or 0))]
        lines.append(f"| {dataset} | {variant} | {_rate(rate)} | {len({r.seed for r in usable})} | " + " | ".join(cells) + f" | {' '.join(epochs)} |")
    if not lines:
        return None
    notes = [f"{STD_NOTE}. Valid-selected: the epoch with the best validation score (imer's rule; the numbers of the tables above). "
             "Test-selected: the epoch with the best *test* score of the same run (`train.selection=test-published`, the published "
             "ComP/MoMKE code's rule), read from its per-epoch history (`train.eval_test_each_epoch`); for `linear` an epoch is a "
             "regularisation candidate. (Δ) = mean paired difference test-selected − valid-selected: how much of a paper-style number "
             "is selection on the test set. Epochs: valid / test choice per seed."]
    if missing:
        notes.append("not logged per epoch (no test-selected numbers): " + ", ".join(dict.fromkeys(missing)))
    return "\n".join(lines) + "\n\n" + "  \n".join(notes) + "\n"


def gap_table(runs: list[RunRecord], order: dict[str, int]) -> str | None:
    """Validation score at the selected epoch beside the test score of that epoch, per dataset × variant × rate.

    The gap (validation − test) shows how much of what selection saw carries
    over to the test videos: a method that equals its rivals on validation and
    loses on test lost to the split, not to training. None when no run holds a
    validation score for its selection metric.
    """
    groups: dict[tuple[str, str, float], list[RunRecord]] = defaultdict(list)
    for r in runs:
        selection = (r.metrics or {}).get("selection", {})
        if selection.get("metric") in (r.metrics or {}).get("valid", {}):
            groups[(r.dataset, r.variant, r.rate)].append(r)
    if not groups:
        return None
    metric = next(iter(groups.values()))[0].metrics["selection"]["metric"]
    label = METRIC_LABELS.get(metric, metric)
    lines = [f"| dataset | variant | rate | n | validation {label} (selected epoch) | test {label} | gap (validation − test) |",
             "|---|---|---|---:|---:|---:|---:|"]
    for (dataset, variant, rate), members in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], len(order)), kv[0][1], kv[0][2])):
        valid = _seed_values(members, lambda r: r.metrics["valid"].get(metric))
        test = _seed_values(members, lambda r: r.test.get(metric))
        common = sorted(set(valid) & set(test))
        if not common:
            continue
        gap = float(np.mean([valid[s] - test[s] for s in common]))
        lines.append(f"| {dataset} | {variant} | {_rate(rate)} | {len(common)} | {_metric_text(metric, *mean_std([valid[s] for s in common]))} | "
                     f"{_metric_text(metric, *mean_std([test[s] for s in common]))} | {_delta_text(metric, gap)} |")
    return "\n".join(lines) + "\n"


def stage_table(runs: list[RunRecord], order: dict[str, int]) -> str | None:
    """Per training stage of staged methods: the best validation score within the stage and the test score at that epoch.

    Answers "does the method's later stage (e.g. ComP's prompting) improve on
    its earlier one?" and says in which stage validation selection ended up.
    None when no run's history has more than one stage.
    """
    groups: dict[tuple[str, str, float], list[tuple[RunRecord, list[dict[str, Any]]]]] = defaultdict(list)
    for r in runs:
        stages = best_per_stage(r)
        if len(stages) > 1:
            groups[(r.dataset, r.variant, r.rate)].append((r, stages))
    if not groups:
        return None
    metric = (groups[next(iter(groups))][0][0].metrics or {})["selection"]["metric"]
    label = METRIC_LABELS.get(metric, metric)
    lines = [f"| dataset | variant | rate | stage | epochs | n | best validation {label} in the stage | test {label} at that epoch | "
             "selected in this stage (seeds) |", "|---|---|---|---|---|---:|---:|---:|---:|"]
    for (dataset, variant, rate), members in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], len(order)), kv[0][1], kv[0][2])):
        names = list(dict.fromkeys(s["stage"] for _, stages in members for s in stages))
        for name in names:
            entries = [(r, next(s for s in stages if s["stage"] == name)) for r, stages in members if any(s["stage"] == name for s in stages)]
            valid = [e["valid"] for _, e in entries if e["valid"] is not None]
            test = [e["test"][metric] for _, e in entries if e["test"] and metric in e["test"]]
            chosen = sum(1 for r, e in entries if e["first"] <= (r.metrics or {}).get("selection", {}).get("best_epoch", -1) <= e["last"])
            spans = sorted({f"{e['first']}–{e['last']}" for _, e in entries})
            lines.append(f"| {dataset} | {variant} | {_rate(rate)} | {name} | {', '.join(spans)} | {len(entries)} | "
                         f"{_metric_text(metric, *mean_std(valid)) if valid else '–'} | {_metric_text(metric, *mean_std(test)) if test else '–'} | "
                         f"{chosen} of {len(entries)} |")
    return "\n".join(lines) + "\n"


def comparisons(aggregates: list[Aggregate], runs: list[RunRecord], info: "SweepInfo") -> list[Comparison]:
    """``[report] compare`` variants against the best baseline (or ``[report] baseline``), paired over seeds and rates."""
    if not info.compare or not aggregates:
        return []
    methods = {a.variant: a.method for a in aggregates}
    bases = info.bases
    compared_methods = {methods[c] for c in info.compare if c in methods}
    ordered = sorted(methods, key=lambda v: (info.order.get(v, len(info.order)), v))
    baselines = [v for v in ordered if v not in info.compare and v not in bases and methods[v] not in compared_methods]
    by_cell: dict[tuple[str, str, float], list[RunRecord]] = defaultdict(list)
    for r in runs:
        by_cell[(r.dataset, r.variant, r.rate)].append(r)
    out = []
    for dataset in dict.fromkeys(a.dataset for a in aggregates):
        metric = next(a for a in aggregates if a.dataset == dataset).headline[0]
        per_seed = {key: _seed_values(members, lambda r: r.test.get(metric)) for key, members in by_cell.items() if key[0] == dataset}
        named = None if info.baseline in ("best", "both") else info.baseline
        compared = [c for c in info.compare if c in methods]
        if info.baseline != "both":
            out += compare_runs(per_seed, compared, baselines, metric, named)
            continue
        on_test = compare_runs(per_seed, compared, baselines, metric)
        on_valid = compare_runs(per_seed, compared, baselines, metric, chosen=_chosen_on_validation(dataset, baselines, by_cell, info, metric))
        out += [replace(c, baseline=f"{c.baseline} (on test)") for c in on_test]
        out += [replace(c, baseline=f"{c.baseline} (on validation)") for c in on_valid]
    return out


def _chosen_on_validation(dataset: str, baselines: list[str], by_cell: dict[tuple[str, str, float], list[RunRecord]],
                          info: "SweepInfo", metric: str) -> dict[tuple[str, float], str]:
    """Per rate, the baseline with the best validation score: under the ``cv`` protocol the fold-averaged score of its
    frozen cross-validation choice (search.json; the same at every rate), else the seed mean of the runs' validation metric."""
    frozen = info.search.get("datasets", {}).get(dataset, {})
    chosen = {}
    for rate in sorted({r for d, _, r in by_cell if d == dataset}):
        scores = {}
        for b in baselines:
            members = by_cell.get((dataset, b, rate), [])
            if not members:
                continue
            if all(r.protocol == "cv" for r in members) and b in frozen:
                scores[b] = float(frozen[b]["trials"][frozen[b]["winner"]]["score"])
            else:
                values = [r.metrics["valid"][metric] for r in members if r.metrics and metric in r.metrics.get("valid", {})]
                if values:
                    scores[b] = float(np.mean(values))
        best = None
        for b in baselines:
            if b in scores and (best is None or is_better(metric, scores[b], scores[best])):
                best = b
        if best is not None:
            chosen[(dataset, rate)] = best
    return chosen


def _p_text(p: float | None) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def significance_table(rows: list[Comparison]) -> str:
    """One row per compared variant × dataset × rate, plus the pooled row (rate "all")."""
    lines = ["| dataset | variant | rate | baseline | pairs | metric | mean Δ | wins / ties / losses | sign test p | paired t-test p |",
             "|---|---|---|---|---:|---|---:|---|---:|---:|"]
    for c in rows:
        rate = "all" if c.rate is None else _rate(c.rate)
        lines.append(f"| {c.dataset} | {c.variant} | {rate} | {c.baseline} | {c.n} | {METRIC_LABELS.get(c.metric, c.metric)} | "
                     f"{_delta_text(c.metric, c.mean)} | {c.wins} / {c.ties} / {c.losses} | {_p_text(c.p_sign)} | {_p_text(c.p_t)} |")
    note = ("Δ = variant − baseline on the test split (points ×100; raw for MAE/Corr), paired by seed: runs with the same seed on "
            "the same dataset and rate share their test masks. The baseline is, per rate, the baseline variant with the best mean "
            "test score (chosen on test, which favours the baseline), unless the spec names one; \"all\" pools every rate's "
            "(rate, seed) pairs. Sign test: exact, two-sided, ties dropped; with n pairs it cannot go below 2 / 2^n (0.25 for "
            "3 seeds at one rate). Paired t-test: two-sided (– when undefined). See docs/protocol.md.")
    if any(c.baseline.endswith("(on validation)") for c in rows):
        note += (" Rows whose baseline is marked (on validation) take instead, per rate, the baseline with the best validation "
                 "score, which does not look at the test split: under the cv protocol the fold-averaged cross-validation score "
                 "of its frozen choice (search.json), otherwise the seed mean of its runs' validation metric.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def search_table(search: dict[str, Any]) -> str:
    """The frozen search: every trial's settings and validation score, the chosen one marked."""
    lines = ["| dataset | variant | trial | settings | validation score | chosen |", "|---|---|---:|---|---:|:---:|"]
    settings = None
    for dataset, entries in search.get("datasets", {}).items():
        for name, entry in entries.items():
            settings = entry["settings"]
            label = METRIC_LABELS.get(entry["metric"], entry["metric"])
            for t in entry["trials"]:
                score = "failed" if t["score"] is None else f"{label} {_value_text(entry['metric'], t['score'])}"
                mark = "✓" if t["trial"] == entry["winner"] else ""
                lines.append(f"| {dataset} | {name} | {t['trial']} | {' '.join(f'`{o}`' for o in t['overrides'])} | {score} | {mark} |")
    head = ""
    if settings is not None:
        head = (f"Run before the grid at seed {settings['seed']}, missing rate {_rate(settings['rate'])}, one run per trial; chosen on the "
                "validation split only (score at each trial's validation-selected epoch; ties keep the earlier trial), frozen in "
                "`search.json` before any grid cell ran. The grid then runs every variant with its choice (variants with a base take "
                "their base's).\n\n")
    return head + "\n".join(lines) + "\n"


@dataclass
class SweepInfo:
    """What the sweep directory says about its experiment (``sweep.json``); empty for a plain run tree."""

    name: str = ""
    description: str = ""
    spec_path: str = ""
    variants: list[dict[str, Any]] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    title: str = ""
    compare: list[str] = field(default_factory=list)
    baseline: str = "best"
    search: dict[str, Any] = field(default_factory=dict)  # search.json: frozen hyper-parameter choices

    @classmethod
    def read(cls, root: Path) -> "SweepInfo":
        path = root / "sweep.json"
        if not path.is_file():
            return cls()
        spec = read_json(path).get("spec", {})
        experiment = spec.get("experiment") or {}
        report = experiment.get("report", {})
        variants = spec.get("variants") or [{"name": m, "method": m, "overrides": [], "epochs": None, "base": None} for m in spec.get("methods", [])]
        search = read_json(root / "search.json") if (root / "search.json").is_file() else {}
        return cls(experiment.get("name", ""), experiment.get("description", ""), experiment.get("path", ""), variants,
                   list(spec.get("overrides", [])), list(report.get("metrics", [])), report.get("title", ""),
                   list(report.get("compare", [])), str(report.get("baseline", "best")), search)

    def chosen(self, dataset: str, variant: str) -> list[str]:
        """The frozen search winner's overrides that apply to ``variant`` on ``dataset`` (its own or its base's)."""
        entries = self.search.get("datasets", {}).get(dataset, {})
        by_name = {v["name"]: v for v in self.variants}
        name: str | None = variant
        while name is not None and name not in entries:
            name = by_name.get(name, {}).get("base")
        return list(entries[name]["overrides"]) if name is not None else []

    @property
    def order(self) -> dict[str, int]:
        return {v["name"]: i for i, v in enumerate(self.variants)}

    @property
    def bases(self) -> dict[str, str]:
        return {v["name"]: v["base"] for v in self.variants if v.get("base")}


def report_page(report: "Report") -> str:
    """The whole report as one markdown page (what docs/ links to)."""
    info = report.info
    root = report.root.as_posix()
    out = "" if report.out_dir == report.root / "report" else f" --out {report.out_dir.as_posix()}"
    title = info.title or (f"Experiment `{info.name}`" if info.name else f"Report of `{root}`")
    lines = [f"# {title}", ""]
    if info.description:
        lines += [info.description.strip(), ""]
    if info.spec_path:
        lines += [f"Spec: `{info.spec_path}`. Reproduce (resumable; finished runs are kept):", "", "```bash",
                  f"imer sweep {info.spec_path} --out {root}", f"imer report {root}{out}", "```", ""]
    else:
        lines += ["Reproduce the tables from the runs:", "", "```bash", f"imer report {root}{out}", "```", ""]
    if info.variants:
        from imer.experiments.sweep import overrides_for

        used = {a.variant for a in report.aggregates}
        epochs = {r.variant: r.epochs for r in report.runs}
        lines += ["## Variants", "", "| variant | method | base | settings (on top of the method's packaged config) | epochs |", "|---|---|---|---|---:|"]
        datasets = list(dict.fromkeys(a.dataset for a in report.aggregates))
        for v in info.variants:
            if v["name"] not in used:
                continue
            settings = " ".join(f"`{o}`" for o in overrides_for(v["method"], info.overrides) + list(v.get("overrides") or [])) or "–"
            if v.get("config"):
                settings = f"preset `{v['config']}` " + settings
            for dataset in datasets:
                chosen = info.chosen(dataset, v["name"])
                if chosen:
                    settings += f" + searched{f' ({dataset})' if len(datasets) > 1 else ''}: " + " ".join(f"`{o}`" for o in chosen)
            lines.append(f"| {v['name']} | {v['method']} | {v.get('base') or '–'} | {settings} | {epochs.get(v['name'], '–')} |")
        lines.append("")
    if info.search.get("datasets"):
        lines += ["## Hyper-parameter search", "", search_table(info.search)]
    lines += ["## Test results", "", markdown_table(report.table)]
    selection = report.sections.get("selection.md")
    if selection:
        lines += ["## Selection rules side by side", "", selection]
    if "significance.md" in report.sections:
        lines += ["## Significance: paired comparisons with the best baseline", "", report.sections["significance.md"]]
    if report.ablations:
        lines += ["## Ablations", "", "Mean ± std over seeds ×100; (Δ) = mean paired difference to the base over the seeds both ran "
                  "(same seed = same test masks).", ""]
        lines += [t.markdown() for t in report.ablations]
    for k in info.metrics:
        label = METRIC_LABELS.get(k, k)
        scale = "as is" if k in RAW_METRICS else "×100"
        lines += [f"## Test {label} (`{k}`)", "", metric_table(report.aggregates, k), f"mean ± population std over seeds, {scale}; best per dataset and column in bold.", ""]
    patterns = report.sections.get("patterns.md")
    if patterns:
        lines += ["## Test results by availability pattern", "", patterns,
                  f"Test {_metric_pair(report.runs[0].task).split('/')[0]} of the utterances that kept exactly the modalities in braces under "
                  "the random test mask (`test_by_pattern` in metrics.json), mean ± population std over seeds ×100, (mean number of "
                  "utterances). Post-hoc: where the points of the main table are won or lost.", ""]
    if report.conditions is not None:
        lines += ["## Fixed conditions", "", report.conditions.markdown()]
    gap = report.sections.get("gap.md")
    if gap:
        lines += ["## Validation and test at the selected epoch", "", gap,
                  f"{STD_NOTE}. The validation score the selection rule saw at the epoch it picked, the test score of that epoch, "
                  "and their mean paired gap. Validation and test are different videos: a gap larger than the other methods' "
                  "means what the method learned to win validation does not carry over to the test videos.", ""]
    stages = report.sections.get("stages.md")
    if stages:
        lines += ["## Training stages", "", stages,
                  f"{STD_NOTE}. For methods trained in stages (ComP: warm-up, then joint prompting; MMIN, MoMKE, PROMISE: their "
                  "pre-training stages), each stage's best validation score by the selection metric and the test score of that "
                  "same epoch (– unless the runs logged the test split every epoch), and in how many seeds the validation-selected "
                  "epoch of the whole run lies in that stage. A later stage that never beats an earlier one adds nothing to the "
                  "selected model.", ""]
    diagnostics = diagnostics_table(report.runs, info.order)
    if diagnostics:
        lines += ["## Method diagnostics at the selected epoch", "", diagnostics,
                  "What the method logs each epoch (`diagnostics` in history.jsonl: e.g. PROMISE's cosine similarity of a "
                  "generated modality to the real one of the same utterance, `matched`, and of another utterance, `shuffled`), "
                  "on the split in the `split` column under its fixed mask (test when the runs logged the test split every epoch, "
                  "`train.eval_test_each_epoch`, else validation), mean over seeds.", ""]
    if any(a.cost for a in report.aggregates):
        lines += ["## Cost", "", cost_table(report.aggregates),
                  "From each run's `metrics.json`: training seconds per epoch (evaluation excluded), wall seconds of the whole run, "
                  "peak resident memory of the process that ran it, parameters.", ""]
    if report.plots:
        lines += ["## Plots", ""] + [f"![{p.stem.replace('_', ' ')}]({p.name})" for p in report.plots] + [""]
    if report.failed:
        lines += [f"Failed cells in the last sweep: {', '.join(report.failed)} (see `failures.jsonl`).", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def build_report(root: str | Path, out_dir: str | Path | None = None, plots: bool = True) -> Report:
    """Collect, aggregate and write all tables, the report page (and plots) of the runs under ``root``."""
    root = Path(root)
    out = Path(out_dir) if out_dir else root / "report"
    runs = [r for r in collect_runs(root) if out not in r.path.parents]
    if not runs:
        raise IMERError(f"{root}: no finished runs (metrics.json) found; run `imer sweep ... --out {root}` first")
    info = SweepInfo.read(root)
    aggregates = aggregate(runs, info.order)
    report = Report(root, out, runs, aggregates, PaperTable.build(aggregates, runs), ConditionTable.build(aggregates), _failed_cells(root),
                    info=info, ablations=ablation_tables(aggregates, runs, info.bases), comparisons=comparisons(aggregates, runs, info))
    out.mkdir(parents=True, exist_ok=True)
    for name, fmt in (("table.md", "md"), ("table.tex", "latex"), ("table.csv", "csv")):
        with atomic_write(out / name) as fh:
            fh.write(report.text(fmt))
    if report.ablations:
        with atomic_write(out / "ablations.md") as fh:
            fh.write("\n".join(t.markdown() for t in report.ablations))
    if report.conditions is not None:
        for name, text in (("conditions.md", report.conditions.markdown()), ("conditions.tex", report.conditions.latex()),
                           ("conditions.csv", _csv_text(report.conditions.csv_rows()))):
            with atomic_write(out / name) as fh:
                fh.write(text)
    for name, text in report.sections.items():
        with atomic_write(out / name) as fh:
            fh.write(text)
    if plots:
        report.plots = write_plots(report, out)
    with atomic_write(out / "report.md") as fh:
        fh.write(report_page(report))
    write_json(out / "report.json", report.to_json())
    return report
