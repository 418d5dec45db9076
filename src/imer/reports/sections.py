"""The report's further tables: ablations, selection rules side by side, availability patterns, the
validation-test gap, training stages, method diagnostics, significance and the frozen search."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from imer.evaluation.metrics import headline_metrics, metric_label
from imer.evaluation.significance import Comparison
from imer.reports.aggregate import Aggregate, mean_std, per_seed, seed_values
from imer.reports.runs import RunRecord, best_per_stage, selected_by_rule, selected_diagnostics
from imer.reports.text import STD_NOTE, delta_text, metric_pair, metric_text, p_text, rate_text, value_text


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
        lines = [f"Variants of `{self.base.variant}` on {self.dataset}, rate {rate_text(self.rate)}:", "",
                 "| variant | n | " + " | ".join(label for label, _ in self.columns) + " |",
                 "|---|---:|" + "---:|" * len(self.columns)]
        for a in [self.base, *self.variants]:
            cells = []
            for _, key in self.columns:
                v = self.value(a, key)
                metric = key.split(".")[0] if key.startswith("modality_acc.") else key
                text = "–" if v is None else metric_text(metric, *v)
                if a is not self.base and v is not None:
                    d = self.deltas.get((a.variant, key))
                    text += "" if d is None else f" ({delta_text(metric, d)})"
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
        columns = [(metric_label(k), k) for k in base.headline]
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
                mine = seed_values(by_cell[(b.dataset, b.variant, b.rate)], value)
                theirs = seed_values(by_cell[(base.dataset, base.variant, base.rate)], value)
                common = sorted(set(mine) & set(theirs))
                deltas[(b.variant, key)] = float(np.mean([mine[s] - theirs[s] for s in common])) if common else None
        tables.append(AblationTable(a.dataset, a.rate, base, members, columns, deltas))
    return tables


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
        lines.append(f"| {dataset} | {variant} | {rate_text(rate)} | {split} | {len(group)} | " + " | ".join(cells) + " |")
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
            _, values = per_seed(members, lambda r, p=p: r.metrics["test_by_pattern"].get(p, {}).get(metric))
            sizes = [r.metrics["test_by_pattern"][p]["n"] for r in members if p in r.metrics["test_by_pattern"]]
            cells.append(f"{metric_text(metric, *mean_std(values))} ({np.mean(sizes):.0f})" if values else "–")
        lines.append(f"| {dataset} | {variant} | {rate_text(rate)} | " + " | ".join(cells) + " |")
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
            labels = [metric_label(k) for k in keys]
            lines += ["| dataset | variant | rate | n | " + " | ".join(f"{lab} valid-selected | {lab} test-selected (Δ)" for lab in labels) + " | epochs (valid / test) |",
                      "|---|---|---|---:|" + "---:|---:|" * len(keys) + "---|"]
        cells = []
        for k in keys:
            values = {rule: seed_values(usable, lambda r, rule=rule, k=k: picked[rule][id(r)]["test"].get(k)) for rule in picked}
            common = sorted(set(values["valid"]) & set(values["test-published"]))
            honest = mean_std([values["valid"][s] for s in common])
            chosen = mean_std([values["test-published"][s] for s in common])
            delta = float(np.mean([values["test-published"][s] - values["valid"][s] for s in common]))
            cells += [metric_text(k, *honest), f"{metric_text(k, *chosen)} ({delta_text(k, delta)})"]
        epochs = [f"{picked['valid'][id(r)]['epoch']}/{picked['test-published'][id(r)]['epoch']}" for r in sorted(usable, key=lambda r: (r.seed, r.fold or 0))]
        lines.append(f"| {dataset} | {variant} | {rate_text(rate)} | {len({r.seed for r in usable})} | " + " | ".join(cells) + f" | {' '.join(epochs)} |")
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
    label = metric_label(metric)
    lines = [f"| dataset | variant | rate | n | validation {label} (selected epoch) | test {label} | gap (validation − test) |",
             "|---|---|---|---:|---:|---:|---:|"]
    for (dataset, variant, rate), members in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], len(order)), kv[0][1], kv[0][2])):
        valid = seed_values(members, lambda r: r.metrics["valid"].get(metric))
        test = seed_values(members, lambda r: r.test.get(metric))
        common = sorted(set(valid) & set(test))
        if not common:
            continue
        gap = float(np.mean([valid[s] - test[s] for s in common]))
        lines.append(f"| {dataset} | {variant} | {rate_text(rate)} | {len(common)} | {metric_text(metric, *mean_std([valid[s] for s in common]))} | "
                     f"{metric_text(metric, *mean_std([test[s] for s in common]))} | {delta_text(metric, gap)} |")
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
    label = metric_label(metric)
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
            lines.append(f"| {dataset} | {variant} | {rate_text(rate)} | {name} | {', '.join(spans)} | {len(entries)} | "
                         f"{metric_text(metric, *mean_std(valid)) if valid else '–'} | {metric_text(metric, *mean_std(test)) if test else '–'} | "
                         f"{chosen} of {len(entries)} |")
    return "\n".join(lines) + "\n"


def significance_table(rows: list[Comparison]) -> str:
    """One row per compared variant × dataset × rate, plus the pooled row (rate "all")."""
    lines = ["| dataset | variant | rate | baseline | pairs | metric | mean Δ | wins / ties / losses | sign test p | paired t-test p |",
             "|---|---|---|---|---:|---|---:|---|---:|---:|"]
    for c in rows:
        rate = "all" if c.rate is None else rate_text(c.rate)
        lines.append(f"| {c.dataset} | {c.variant} | {rate} | {c.baseline} | {c.n} | {metric_label(c.metric)} | "
                     f"{delta_text(c.metric, c.mean)} | {c.wins} / {c.ties} / {c.losses} | {p_text(c.p_sign)} | {p_text(c.p_t)} |")
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
    """The frozen search: every trial's settings and validation score, the chosen one marked.

    Under the ``cv`` protocol the score is the best fold-averaged validation score over epochs, and a column
    gives the budget it implies for the refit (``train.epochs``, or a convex method's candidate).
    """
    entries = [(d, n, e) for d, named in search.get("datasets", {}).items() for n, e in named.items()]
    cv = any(e["settings"].get("protocol") == "cv" for _, _, e in entries)
    if cv:
        lines = ["| dataset | variant | trial | settings | cross-validation score (fold mean) | refit budget | chosen |",
                 "|---|---|---:|---|---:|---|:---:|"]
    else:
        lines = ["| dataset | variant | trial | settings | validation score | chosen |", "|---|---|---:|---|---:|:---:|"]
    for dataset, name, entry in entries:
        label = metric_label(entry["metric"])
        for t in entry["trials"]:
            score = "failed" if t["score"] is None else f"{label} {value_text(entry['metric'], t['score'])}"
            mark = "✓" if t["trial"] == entry["winner"] else ""
            budget = f" {' '.join(f'`{o}`' for o in t.get('budget', []))} |" if cv else ""
            lines.append(f"| {dataset} | {name} | {t['trial']} | {' '.join(f'`{o}`' for o in t['overrides'])} | {score} |{budget} {mark} |")
    head = ""
    if entries and cv:
        settings = entries[-1][2]["settings"]
        head = (f"Run before the refits at seed {settings['seed']}, missing rate {rate_text(settings['rate'])}: every trial on each of "
                f"{settings['folds']} development folds (train + valid videos, the held-out fold as validation; no test video). A trial's "
                "score is its best fold-averaged validation score over epochs; the best (trial, epoch) wins (ties keep the earlier "
                "trial, then the earlier epoch) and sets the refit's budget; frozen in `search.json` before any refit ran. Every grid "
                "cell refits on all development videos with that choice and keeps its final epoch (docs/protocol.md).\n\n")
    elif entries:
        settings = entries[-1][2]["settings"]
        head = (f"Run before the grid at seed {settings['seed']}, missing rate {rate_text(settings['rate'])}, one run per trial; chosen on the "
                "validation split only (score at each trial's validation-selected epoch; ties keep the earlier trial), frozen in "
                "`search.json` before any grid cell ran. The grid then runs every variant with its choice (variants with a base take "
                "their base's).\n\n")
    return head + "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Section:
    """One table of the report page: its heading, its place, the note under it, and the file it is also written to.

    ``place``: ``results`` (after the main table), ``breakdown`` (after the per-metric tables) or ``analysis``
    (after the fixed conditions); sections of one place follow :data:`SECTIONS` order. ``build`` takes the
    report (its ``runs``, ``info.order`` and ``comparisons``) and returns markdown, or None when the table
    does not apply to these runs.
    """

    heading: str
    place: str
    build: Callable[[Any], str | None]
    file: str | None = None
    note: Callable[[Any], str] | None = None


# The page's further tables, in page order within each place: adding a table is a function above and a line here.
SECTIONS = (
    Section("Selection rules side by side", "results", lambda r: selection_table(r.runs, r.info.order), "selection.md"),
    Section("Significance: paired comparisons with the best baseline", "results",
            lambda r: significance_table(r.comparisons) if r.comparisons else None, "significance.md"),
    Section("Test results by availability pattern", "breakdown", lambda r: pattern_table(r.runs, r.info.order), "patterns.md",
            lambda r: f"Test {metric_pair(r.runs[0].task).split('/')[0]} of the utterances that kept exactly the modalities in braces under "
            "the random test mask (`test_by_pattern` in metrics.json), mean ± population std over seeds ×100, (mean number of "
            "utterances). Post-hoc: where the points of the main table are won or lost."),
    Section("Validation and test at the selected epoch", "analysis", lambda r: gap_table(r.runs, r.info.order), "gap.md",
            lambda r: f"{STD_NOTE}. The validation score the selection rule saw at the epoch it picked, the test score of that epoch, "
            "and their mean paired gap. Validation and test are different videos: a gap larger than the other methods' "
            "means what the method learned to win validation does not carry over to the test videos."),
    Section("Training stages", "analysis", lambda r: stage_table(r.runs, r.info.order), "stages.md",
            lambda r: f"{STD_NOTE}. For methods trained in stages (ComP: warm-up, then joint prompting; MMIN, MoMKE, PROMISE: their "
            "pre-training stages), each stage's best validation score by the selection metric and the test score of that "
            "same epoch (– unless the runs logged the test split every epoch), and in how many seeds the validation-selected "
            "epoch of the whole run lies in that stage. A later stage that never beats an earlier one adds nothing to the "
            "selected model."),
    Section("Method diagnostics at the selected epoch", "analysis", lambda r: diagnostics_table(r.runs, r.info.order), None,
            lambda r: "What the method logs each epoch (`diagnostics` in history.jsonl: e.g. PROMISE's cosine similarity of a "
            "generated modality to the real one of the same utterance, `matched`, and of another utterance, `shuffled`), "
            "on the split in the `split` column under its fixed mask (test when the runs logged the test split every epoch, "
            "`train.eval_test_each_epoch`, else validation), mean over seeds."),
)
