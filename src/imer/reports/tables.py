"""The paper table (rows = dataset × variant, columns = rates) in markdown, LaTeX and CSV, and the per-metric,
fixed-condition and cost tables."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imer.evaluation.metrics import is_better, metric_label
from imer.reports.aggregate import Aggregate
from imer.reports.runs import RunRecord
from imer.reports.text import STD_NOTE, fmt_cell, metric_pair, metric_text, rate_text, tex_escape


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
        notes.append("realised test missing fraction: " + ", ".join(f"{rate_text(r)} → {v:.3f}" for r, v in realised.items()))
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


def _cell_text(table: PaperTable, dataset: str, method: str, rate: float, style: str) -> str:
    entry = table.entry(dataset, method, rate)
    if entry is None:
        return "–"
    text = " / ".join(fmt_cell(m, s, b, style) for m, s, b in entry)
    a = table.cells[(dataset, method, rate)]
    if len(a.seeds) < table.max_seeds:
        text += f" (n={len(a.seeds)})" if style != "latex" else rf"$^{{n={len(a.seeds)}}}$"
    return text


def markdown_table(table: PaperTable) -> str:
    """The paper table as GitHub markdown (best per column in bold)."""
    header = ["dataset", "variant", "metric", *[f"rate {rate_text(r)}" for r in table.rates]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * len(table.rates)]
    for dataset, method in table.rows:
        task = next(a.task for (d, m, _), a in table.cells.items() if d == dataset and m == method)
        cells = [_cell_text(table, dataset, method, r, "md") for r in table.rates]
        lines.append("| " + " | ".join([dataset, method, metric_pair(task), *cells]) + " |")
    notes = [f"{STD_NOTE}; best per dataset and column in bold; (n=k): fewer seeds than the others", *table.notes]
    return "\n".join(lines) + "\n\n" + "  \n".join(notes) + "\n"


def latex_table(table: PaperTable) -> str:
    """The paper table as a LaTeX ``tabular`` (booktabs), best per column in ``\\textbf``."""
    cols = "ll" + "c" * len(table.rates)
    lines = [r"\begin{tabular}{" + cols + "}", r"\toprule", "Dataset & Variant & " + " & ".join(rate_text(r) for r in table.rates) + r" \\", r"\midrule"]
    previous = None
    for dataset, method in table.rows:
        if previous is not None and dataset != previous:
            lines.append(r"\midrule")
        task = next(a.task for (d, m, _), a in table.cells.items() if d == dataset and m == method)
        name = f"{dataset} ({metric_pair(task)})" if dataset != previous else ""
        cells = [_cell_text(table, dataset, method, r, "latex") for r in table.rates]
        lines.append(" & ".join([tex_escape(name), tex_escape(method), *cells]) + r" \\")
        previous = dataset
    lines += [r"\bottomrule", r"\end{tabular}", f"% {STD_NOTE}; best per dataset and column in bold", *[f"% {n}" for n in table.notes]]
    return "\n".join(lines) + "\n"


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
            lines.append(f"| {a.dataset} | {a.variant} | {rate_text(a.rate)} | {metric_label(k)} | " + " | ".join(cells) + f" | {'–' if avg is None else f'{100 * avg:.2f}'} |")
        return "\n".join(lines) + f"\n\nTest split under each fixed condition (every utterance keeps exactly that subset); {STD_NOTE}.\n"

    def latex(self) -> str:
        lines = [r"\begin{tabular}{lll" + "c" * (len(self.labels) + 1) + "}", r"\toprule",
                 "Dataset & Variant & Rate & " + " & ".join(r"\{" + c + r"\}" for c in self.labels) + r" & Avg \\", r"\midrule"]
        for a in self.rows:
            k = a.headline[0]
            cells = [f"{100 * a.conditions[c][k][0]:.2f}" + rf"$\pm${100 * a.conditions[c][k][1]:.2f}" if k in a.conditions.get(c, {}) else "--" for c in self.labels]
            avg = self.average(a, k)
            lines.append(" & ".join([tex_escape(a.dataset), tex_escape(a.variant), rate_text(a.rate), *cells, "--" if avg is None else f"{100 * avg:.2f}"]) + r" \\")
        return "\n".join(lines + [r"\bottomrule", r"\end{tabular}", f"% {metric_label('acc')} per fixed condition; {STD_NOTE}"]) + "\n"

    def csv_rows(self) -> list[dict[str, Any]]:
        rows = []
        for a in self.rows:
            for c in self.labels:
                for k, (mean, std) in a.conditions.get(c, {}).items():
                    rows.append({"dataset": a.dataset, "variant": a.variant, "method": a.method, "rate": a.rate, "condition": c, "metric": k, "mean": mean, "std": std, "n_seeds": len(a.seeds)})
        return rows


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
    lines = [f"| dataset | variant | {' | '.join(f'rate {rate_text(r)}' for r in rates)} |", "|---|---|" + "---:|" * len(rates)]
    for dataset, variant in rows:
        texts = []
        for r in rates:
            a = cells.get((dataset, variant, r))
            if a is None or k not in a.metrics:
                texts.append("–")
                continue
            text = metric_text(k, *a.metrics[k])
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
