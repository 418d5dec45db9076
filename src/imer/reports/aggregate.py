"""Runs grouped into table cells: mean ± population std over seeds, settings checked, paired comparisons.

Runs are grouped by (dataset, variant, missing rate) and every scalar test
metric is reduced over seeds. Runs of one group must share their config hash
(the resolved config minus seed and fold): runs with different settings are
never averaged. The spread is the **population** standard deviation
(``ddof=0``) over seeds, as in ``protocol.md``. For fold-based datasets a
seed's value is first averaged over its folds. The rate of a run is its
training missing rate (``missing.train_rate``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from imer.config import RUN_LOCAL, RunConfig
from imer.errors import IMERError
from imer.evaluation.metrics import headline_metrics, is_better
from imer.evaluation.significance import Comparison, compare_runs
from imer.io import flatten
from imer.models.registry import build_config
from imer.reports.runs import RunRecord
from imer.runfolder import RunFolder, sweepdir


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


def per_seed(runs: list[RunRecord], value: Callable[[RunRecord], float | None]) -> tuple[list[int], list[float]]:
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
    fa, fb = RunFolder(a.path), RunFolder(b.path)
    if not fa.has("config.json") or not fb.has("config.json"):
        return [f"config_hash ({a.config_hash!r} vs {b.config_hash!r})"]
    ca, cb = flatten(fa.read("config.json")), flatten(fb.read("config.json"))
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
            _, values = per_seed(members, lambda r, k=k: r.test.get(k))
            if values:
                metrics[k] = mean_std(values)
        modality = sorted({m for r in members for m in r.test.get("modality_acc", {})})
        modality_acc = {}
        for mod in modality:
            _, values = per_seed(members, lambda r, mod=mod: r.test.get("modality_acc", {}).get(mod))
            if values:
                modality_acc[mod] = mean_std(values)
        conditions: dict[str, dict[str, tuple[float, float]]] = {}
        labels = list(dict.fromkeys(c for r in members if r.conditions for c in r.conditions))
        for label in labels:
            conditions[label] = {}
            for k in headline_metrics(task):
                _, values = per_seed(members, lambda r, label=label, k=k: (r.conditions or {}).get(label, {}).get(k))
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


def seed_values(runs: list[RunRecord], value: Callable[[RunRecord], float | None]) -> dict[int, float]:
    """Seed -> ``value(run)`` averaged over folds (runs without a value left out)."""
    seeds, values = per_seed(runs, value)
    return dict(zip(seeds, values))


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
        per_seed = {key: seed_values(members, lambda r: r.test.get(metric)) for key, members in by_cell.items() if key[0] == dataset}
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
    data_dir: str = ""  # the data folder the sweep read (--data-dir or $IMER_DATA), for the "Reproduce" command

    @classmethod
    def read(cls, root: Path) -> "SweepInfo":
        manifest = sweepdir.read_manifest(root)
        if manifest is None:
            return cls()
        spec = manifest.get("spec", {})
        experiment = spec.get("experiment") or {}
        report = experiment.get("report", {})
        variants = spec.get("variants") or [{"name": m, "method": m, "overrides": [], "epochs": None, "base": None} for m in spec.get("methods", [])]
        search = sweepdir.read_search(root) if sweepdir.has_search(root) else {}
        return cls(experiment.get("name", ""), experiment.get("description", ""), experiment.get("path", ""), variants,
                   list(spec.get("overrides", [])), list(report.get("metrics", [])), report.get("title", ""),
                   list(report.get("compare", [])), str(report.get("baseline", "best")), search, spec.get("data_dir") or "")

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
