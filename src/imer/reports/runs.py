"""Finished runs as records: what ``imer report`` and :func:`results` read from run folders.

A finished run is a folder with ``metrics.json``; ``conditions.json``,
``history.jsonl``, ``config.json`` and ``environment.json`` are read when
present. Runs written before variants existed count as the variant named
after their method, with no config hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imer.errors import IMERError
from imer.evaluation.metrics import is_better
from imer.runfolder import RunFolder, finished_runs

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
    protocol: str = "valid"
    conditions: dict[str, dict[str, Any]] | None = None
    variant: str = ""
    config_hash: str | None = None
    metrics: dict[str, Any] | None = None
    budget: float = 1.0  # train.budget: the fraction of its epochs the run was given (imer sweep --budget)

    def __post_init__(self) -> None:
        self.variant = self.variant or self.method

    @property
    def has_history(self) -> bool:
        return RunFolder(self.path).has("history.jsonl")


def read_run(run_dir: Path) -> RunRecord:
    """The record of one finished run folder."""
    folder = RunFolder(run_dir)
    path = folder.file("metrics.json")
    try:
        m = folder.read("metrics.json")
        missing = m.get("missing", {})
        record = RunRecord(
            path=run_dir,
            dataset=str(m.get("dataset_id") or m["dataset"]),
            method=str(m["method"]),
            rate=float(missing.get("train_rate", 0.0)),
            seed=int(m["seed"]),
            fold=m.get("fold"),
            task=str(m["task"]),
            test=m["test"],
            test_missing_fraction=float(m.get("missing_fraction", {}).get("test", float("nan"))),
            selection=str(m.get("selection", {}).get("rule", "valid")),
            epochs=m.get("selection", {}).get("epochs"),
            protocol=str(m.get("selection", {}).get("protocol") or m.get("selection", {}).get("rule", "valid")),
            variant=str(m.get("variant") or m["method"]),
            config_hash=m.get("config_hash"),
            metrics=m,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IMERError(f"{path}: not a metrics file written by imer ({type(exc).__name__}: {exc})") from None
    if not isinstance(m.get("seed"), int) or isinstance(m.get("seed"), bool):
        raise IMERError(f"{path}: not a metrics file written by imer (seed is {m.get('seed')!r}, not a whole number)")
    if not isinstance(record.test, dict):
        raise IMERError(f"{path}: not a metrics file written by imer ('test' is not a table of metrics)")
    if folder.has("config.json"):
        record.budget = float(folder.read("config.json").get("train", {}).get("budget", 1.0))
    if folder.has("conditions.json"):
        conditions = folder.read("conditions.json")
        if not isinstance(conditions, dict) or not isinstance(conditions.get("conditions"), dict):
            raise IMERError(f"{folder.file('conditions.json')}: not a conditions file written by imer (no 'conditions' table)")
        record.conditions = conditions["conditions"]
    return record


def collect_runs(root: str | Path) -> list[RunRecord]:
    """Every finished run (a folder with ``metrics.json``) under ``root``, sorted by path.

    The trials of a sweep's hyper-parameter search (``root/search/``) are not
    runs of the grid and are left out; ``search.json`` and the report's search
    table show them.
    """
    root = Path(root)
    if not root.is_dir():
        raise IMERError(f"{root}: not a directory")
    trials = root / "search"
    return [read_run(folder.path) for folder in finished_runs(root) if trials not in folder.path.parents]


def history_modality_acc(run_dir: Path) -> list[dict[str, float]] | None:
    """Per-epoch validation ``modality_acc`` from ``history.jsonl``; None if the run has none.

    Validation, not test: the test split is not evaluated during training
    unless ``train.eval_test_each_epoch`` is set, and curves over epochs are
    a model-selection view anyway.
    """
    series = []
    for record in RunFolder(run_dir).history():
        split = record.get("valid") or {}
        if "modality_acc" not in split:
            return None
        series.append(split["modality_acc"])
    return series or None


def best_per_stage(run: RunRecord) -> list[dict[str, Any]]:
    """For each training stage of the run's history (in order): its epochs and its best epoch by the run's validation metric.

    Each entry: ``stage``, ``first`` / ``last`` epoch, ``epoch`` (best validation
    score within the stage, ties keep the earlier epoch, as in training),
    ``valid`` (that score) and ``test`` (the test metrics of that epoch, None
    unless the run logged the test split every epoch). Empty without history
    or selection metric.
    """
    metric = (run.metrics or {}).get("selection", {}).get("metric")
    stages: list[dict[str, Any]] = []
    for record in RunFolder(run.path).history() if metric else []:
        score = record.get("valid", {}).get(metric)
        if not stages or stages[-1]["stage"] != record.get("stage"):
            stages.append({"stage": record.get("stage"), "first": record["epoch"], "epoch": None, "valid": None, "test": None})
        current = stages[-1]
        current["last"] = record["epoch"]
        if score is not None and (current["valid"] is None or is_better(metric, score, current["valid"])):
            current.update(epoch=record["epoch"], valid=score, test=record.get("test"))
    return stages


def selected_by_rule(run: RunRecord, rule: str) -> dict[str, Any] | None:
    """Test metrics at the epoch that selection rule ``rule`` picks, from the run's per-epoch history.

    ``valid``: best validation score of the run's selection metric;
    ``test-published``: best test score (the published ComP/MoMKE rule). Ties
    keep the earlier epoch, as in training. The run's own rule gives its
    ``metrics.json`` test metrics; the other one needs the test split logged
    every epoch (``train.eval_test_each_epoch``), else None. Exact for every
    method: each epoch's (or convex candidate's) test metrics are computed on
    the same weights and fixed masks as the final evaluation. A run stopped
    early by validation patience offers only the epochs it ran.
    """
    if rule == run.selection:
        return {"epoch": (run.metrics or {}).get("selection", {}).get("best_epoch"), "test": run.test}
    metric = (run.metrics or {}).get("selection", {}).get("metric")
    records = RunFolder(run.path).history()
    if metric is None or not records or any(not r.get("test") for r in records):
        return None
    split = "test" if rule == "test-published" else "valid"
    best = None
    for record in records:
        if best is None or is_better(metric, record[split][metric], best[split][metric]):
            best = record
    return {"epoch": best["epoch"], "test": best["test"]}


def selected_diagnostics(run: RunRecord, split: str = "test") -> tuple[str, dict[str, float]] | None:
    """(split used, the method's ``epoch_diagnostics``) at the selected epoch, on ``split`` or else validation.

    Keys are flattened (``a/b``); None if nothing was logged.
    """
    best = (run.metrics or {}).get("selection", {}).get("best_epoch")
    if best is None:
        return None
    for record in RunFolder(run.path).history():
        if record.get("epoch") == best:
            logged = record.get("diagnostics", {})
            used = split if logged.get(split) else "valid"  # test is logged only with train.eval_test_each_epoch
            return (used, _flatten(logged[used])) if logged.get(used) else None
    return None


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def run_row(run: RunRecord) -> dict[str, Any]:
    """One flat row: identity, every scalar test metric (plain names), ``valid.*``, ``modality_acc.*``, conditions, cost."""
    m = run.metrics or {}
    folder = RunFolder(run.path)
    env = folder.read("environment.json") if folder.has("environment.json") else {}
    row: dict[str, Any] = {
        "dataset": run.dataset, "variant": run.variant, "method": run.method, "rate": run.rate, "seed": run.seed, "fold": run.fold,
        "condition": m.get("missing", {}).get("test_protocol"), "task": run.task,
    }
    for k, v in run.test.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            row[k] = v
    for mod, v in run.test.get("modality_acc", {}).items():
        row[f"modality_acc.{mod}"] = v
    for k, v in (m.get("valid") or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            row[f"valid.{k}"] = v
    for label, values in (run.conditions or {}).items():
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                row[f"conditions.{label}.{k}"] = v
    selection = m.get("selection", {})
    row.update({
        "epochs": selection.get("epochs"), "best_epoch": selection.get("best_epoch"), "seconds": m.get("wall_seconds"),
        "seconds_per_epoch": m.get("seconds_per_epoch"), "peak_rss_mb": m.get("peak_rss_mb"), "parameters": m.get("parameters"),
        "test_missing_fraction": run.test_missing_fraction, "config_hash": run.config_hash, "commit": env.get("commit"),
        "path": str(run.path),
    })
    return row


def results(path: str | Path):
    """Every finished run under ``path`` as a ``pandas.DataFrame``, one row per run.

    Columns: dataset, variant, method, rate, seed, fold, condition (the test
    protocol), task, every scalar test metric (``acc2``, ``f1``, ...),
    ``modality_acc.<m>``, ``valid.<metric>``, ``conditions.<c>.<metric>``,
    epochs, best_epoch, seconds (wall time of the run), seconds_per_epoch,
    peak_rss_mb, parameters, test_missing_fraction, config_hash, commit, path.
    Needs pandas (``pip install 'imer[analysis]'``).
    """
    try:
        import pandas as pd
    except ImportError:
        raise IMERError("imer.results needs pandas: pip install 'imer[analysis]'") from None
    rows = [run_row(r) for r in collect_runs(path)]
    return pd.DataFrame(rows)
