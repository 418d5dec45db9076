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
plots of :mod:`imer.reports.plots`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from imer.data.registry import dataset_caveat
from imer.errors import IMERError
from imer.evaluation.metrics import metric_label, shown_raw
from imer.evaluation.significance import Comparison
from imer.experiments.spec import overrides_for
from imer.io import atomic_write, write_json
from imer.reports.aggregate import Aggregate, SweepInfo, aggregate, comparisons
from imer.reports.plots import write_plots
from imer.reports.runs import RunRecord, collect_runs
from imer.reports.sections import SECTIONS, AblationTable, Section, ablation_tables, search_table
from imer.reports.tables import ConditionTable, PaperTable, cost_table, csv_rows, latex_table, markdown_table, metric_table
from imer.reports.text import STD_NOTE, csv_text, fmt_cell, metric_pair, rate_text
from imer.runfolder import sweepdir


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
    def tables(self) -> dict[Section, str]:
        """The further tables of the page (:data:`~imer.reports.sections.SECTIONS`) that apply to these runs."""
        built = {section: section.build(self) for section in SECTIONS}
        return {section: text for section, text in built.items() if text}

    @property
    def sections(self) -> dict[str, str]:
        """The further tables that are also written to a file of their own, by file name."""
        return {section.file: text for section, text in self.tables.items() if section.file}

    def text(self, fmt: str) -> str:
        """The main table as ``md``, ``latex`` or ``csv`` text."""
        if fmt == "md":
            return markdown_table(self.table)
        if fmt == "latex":
            return latex_table(self.table)
        if fmt == "csv":
            return csv_text(csv_rows(self.aggregates, self.table))
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
            table.add_column(f"rate {rate_text(r)}", justify="right")
        for dataset, method in self.table.rows:
            task = next(a.task for (d, m, _), a in self.table.cells.items() if d == dataset and m == method)
            cells = []
            for r in self.table.rates:
                entry = self.table.entry(dataset, method, r)
                cells.append("–" if entry is None else " / ".join((f"[bold]{fmt_cell(m, s, b, 'plain')}[/bold]" if b else fmt_cell(m, s, b, "plain")) for m, s, b in entry))
            table.add_row(dataset, method, metric_pair(task), *cells)
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
                ct.add_row(a.dataset, a.variant, rate_text(a.rate), *[f"{100 * a.conditions[c][k][0]:.2f}" if k in a.conditions.get(c, {}) else "–" for c in self.conditions.labels],
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


def variants_section(report: "Report") -> list[str]:
    """The page's variants table: each variant's method, base, settings (and searched choices) and epochs."""
    info = report.info
    used = {a.variant for a in report.aggregates}
    epochs = {r.variant: r.epochs for r in report.runs}
    lines = ["## Variants", "", "| variant | method | base | settings (on top of the method's packaged config) | epochs |", "|---|---|---|---|---:|"]
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
    return lines + [""]


def section_lines(report: "Report", place: str) -> list[str]:
    """The page lines of the further tables at ``place``: heading, table, note."""
    lines: list[str] = []
    for section, text in report.tables.items():
        if section.place == place:
            lines += [f"## {section.heading}", "", text] + ([section.note(report), ""] if section.note else [])
    return lines


def report_page(report: "Report") -> str:
    """The whole report as one markdown page (what docs/ links to)."""
    info = report.info
    root = report.root.as_posix()
    out = "" if report.out_dir == report.root / "report" else f" --out {report.out_dir.as_posix()}"
    title = info.title or (f"Experiment `{info.name}`" if info.name else f"Report of `{root}`")
    lines = [f"# {title}", ""]
    if info.description:
        lines += [info.description.strip(), ""]
    budget = report.runs[0].budget
    if budget != 1.0:
        lines += [f"**Every run had {budget:g} of its epoch budget** (`imer sweep --budget {budget:g}`): a quick trial of the pipeline, "
                  "not a result.", ""]
    if info.spec_path:
        lines += [f"Spec: `{info.spec_path}`. Reproduce (resumable; finished runs are kept):", "", "```bash",
                  f"imer sweep {info.spec_path}{f' --data-dir {info.data_dir}' if info.data_dir else ''}"
                  f"{f' --budget {budget:g}' if budget != 1.0 else ''} --out {root}", f"imer report {root}{out}", "```", ""]
    else:
        lines += ["Reproduce the tables from the runs:", "", "```bash", f"imer report {root}{out}", "```", ""]
    if info.variants:
        lines += variants_section(report)
    if info.search.get("datasets"):
        lines += ["## Hyper-parameter search", "", search_table(info.search)]
    lines += ["## Test results", "", markdown_table(report.table)]
    lines += section_lines(report, "results")
    if report.ablations:
        lines += ["## Ablations", "", "Mean ± std over seeds ×100; (Δ) = mean paired difference to the base over the seeds both ran "
                  "(same seed = same test masks).", ""]
        lines += [t.markdown() for t in report.ablations]
    for k in info.metrics:
        label = metric_label(k)
        scale = "as is" if shown_raw(k) else "×100"
        lines += [f"## Test {label} (`{k}`)", "", metric_table(report.aggregates, k), f"mean ± population std over seeds, {scale}; best per dataset and column in bold.", ""]
    lines += section_lines(report, "breakdown")
    if report.conditions is not None:
        lines += ["## Fixed conditions", "", report.conditions.markdown()]
    lines += section_lines(report, "analysis")
    if any(a.cost for a in report.aggregates):
        lines += ["## Cost", "", cost_table(report.aggregates),
                  "From each run's `metrics.json`: training seconds per epoch (evaluation excluded), wall seconds of the whole run, "
                  "peak resident memory of the process that ran it, parameters.", ""]
    if report.plots:
        caveats = [f"**{d}**: {dataset_caveat(d)}." for d in dict.fromkeys(r.dataset for r in report.runs) if dataset_caveat(d)]
        lines += ["## Plots", ""] + ([" ".join(caveats), ""] if caveats else [])
        lines += [f"![{p.stem.replace('_', ' ')}]({p.name})" for p in report.plots] + [""]
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
    budgets = sorted({r.budget for r in runs})
    if len(budgets) > 1:
        raise IMERError(f"{root}: runs at {' and '.join(f'{b:g}' for b in budgets)} of their epoch budget side by side (train.budget); "
                        "a shortened trial (imer sweep --budget) is not comparable with full-budget runs: report them from separate folders")
    info = SweepInfo.read(root)
    aggregates = aggregate(runs, info.order)
    report = Report(root, out, runs, aggregates, PaperTable.build(aggregates, runs), ConditionTable.build(aggregates), sweepdir.failed_cells(root),
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
                           ("conditions.csv", csv_text(report.conditions.csv_rows()))):
            with atomic_write(out / name) as fh:
                fh.write(text)
    for name, text in report.sections.items():
        with atomic_write(out / name) as fh:
            fh.write(text)
    if plots:
        report.plots = write_plots(report.aggregates, report.runs, out)
    with atomic_write(out / "report.md") as fh:
        fh.write(report_page(report))
    write_json(out / "report.json", report.to_json())
    return report
