"""The hyper-parameter search stage of a sweep: its trials' scores, the frozen winner of each searched variant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imer.errors import ConfigError
from imer.evaluation.metrics import is_better, lower_is_better
from imer.experiments.grid import Cell, SweepSpec
from imer.runfolder import RunFolder, sweepdir


def read_search(spec: SweepSpec, out: Path) -> dict[str, Any]:
    """``out/search.json`` (frozen search choices), checked against the spec; an empty record when absent.

    A frozen choice never changes: a spec whose search of a variant differs from
    the frozen one (seed, rate, metric or trials) is refused.
    """
    path = out / sweepdir.SEARCH
    data = sweepdir.read_search(out)
    if spec.search is not None:
        for dataset, entries in data["datasets"].items():
            for name, entry in entries.items():
                if name in spec.search.variants and entry["settings"] != spec.search.settings(name):
                    raise ConfigError(f"{path}: the search of '{name}' on {dataset} was frozen with other settings {entry['settings']} "
                                      f"(now {spec.search.settings(name)}); a frozen choice never changes — use another --out")
    return data


def pick_winner(trials: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The trial with the best validation score (``is_better`` direction); ties keep the earlier trial."""
    best = None
    for trial in trials:
        if trial["score"] is not None and is_better(metric, trial["score"], None if best is None else best["score"]):
            best = trial
    if best is None:
        raise ConfigError("no trial has a score")
    return best


def freeze_search(spec: SweepSpec, out: Path) -> list[str]:
    """Freeze every searched variant whose trials are all finished into ``search.json`` and set ``spec.chosen``.

    A trial is finished when it has ``metrics.json`` or failed with an imer
    error (``error.json`` with ``user_error``, e.g. a loss that became NaN: it
    cannot win); a crashed trial keeps its variant open until a rerun. Returns
    one line per variant left open.
    """
    data = read_search(spec, out)
    open_: list[str] = []
    changed = False
    assert spec.search is not None
    by_key: dict[tuple[str, str], list[Cell]] = {}
    for cell in spec.search_cells():
        by_key.setdefault((cell.dataset_id or cell.dataset, cell.variant), []).append(cell)
    for (dataset, name), cells in by_key.items():
        if name in data["datasets"].get(dataset, {}):
            continue
        trials, complete = [], True
        for cell in cells:
            folder = RunFolder(out / cell.relpath)
            record = {"trial": cell.trial, "overrides": list(spec.search.trials(name)[cell.trial]), "path": cell.relpath.as_posix()}
            if folder.finished:
                m = folder.read("metrics.json")
                metric = spec.search.metric or m["selection"]["metric"]
                score = m.get("valid", {}).get(metric)
                if score is None:
                    raise ConfigError(f"[search] metric '{metric}' is not a validation metric of {cell.label} (has {sorted(m.get('valid', {}))})")
                record.update(status="ok", metric=metric, score=float(score), best_epoch=m["selection"]["best_epoch"])
            elif folder.has("error.json") and folder.read("error.json").get("user_error"):
                record.update(status="failed", score=None, error=folder.read("error.json").get("error"))
            else:
                complete = False
                break
            trials.append(record)
        scored = [t for t in trials if t["score"] is not None]
        if not complete or not scored:
            open_.append(f"{dataset}/{name}: " + ("trials unfinished" if not complete else "every trial failed"))
            continue
        metric = scored[0]["metric"]
        winner = pick_winner(trials, metric)
        data["datasets"].setdefault(dataset, {})[name] = {
            "settings": spec.search.settings(name), "metric": metric, "direction": "min" if lower_is_better(metric) else "max",
            "trials": trials, "winner": winner["trial"], "overrides": winner["overrides"],
        }
        changed = True
    if changed:
        data["rule"] = ("best validation score of the search metric at each trial's selected epoch; ties keep the earlier trial "
                        "(grid order: first key slowest); frozen: a rerun never changes a choice")
        sweepdir.write_search(out, data)
    spec.chosen = {d: {n: list(e["overrides"]) for n, e in entries.items()} for d, entries in data["datasets"].items()}
    return open_
