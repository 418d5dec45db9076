"""The hyper-parameter search stage of a sweep: its trials' scores, the frozen winner of each searched variant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imer.errors import ConfigError
from imer.evaluation.metrics import is_better, lower_is_better
from imer.experiments.crossval import choose, score_trial
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


RULES = {
    "valid": "best validation score of the search metric at each trial's selected epoch; ties keep the earlier trial "
             "(grid order: first key slowest); frozen: a rerun never changes a choice",
    "cv": "cv: every trial on each development fold (held-out fold = validation); the trial and epoch with the best "
          "fold-averaged validation score of the search metric win (ties keep the earlier trial, then the earlier epoch); "
          "the grid refits on all development videos for that budget; frozen: a rerun never changes a choice",
}


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
    choose_for = _cv_choice if spec.search.protocol == "cv" else _valid_choice
    for (dataset, name), cells in by_key.items():
        if name in data["datasets"].get(dataset, {}):
            continue
        entry = choose_for(spec, out, name, cells)
        if isinstance(entry, str):
            open_.append(f"{dataset}/{name}: {entry}")
            continue
        data["datasets"].setdefault(dataset, {})[name] = entry
        changed = True
    if changed:
        data["rule"] = RULES[spec.search.protocol]
        sweepdir.write_search(out, data)
    spec.chosen = {d: {n: list(e["overrides"]) for n, e in entries.items()} for d, entries in data["datasets"].items()}
    return open_


def _valid_choice(spec: SweepSpec, out: Path, name: str, cells: list[Cell]) -> dict[str, Any] | str:
    """The frozen choice of one variant by each trial's validation score at its selected epoch; or why it stays open."""
    assert spec.search is not None
    trials = []
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
            return "trials unfinished"
        trials.append(record)
    scored = [t for t in trials if t["score"] is not None]
    if not scored:
        return "every trial failed"
    metric = scored[0]["metric"]
    winner = pick_winner(trials, metric)
    return {"settings": spec.search.settings(name), "metric": metric, "direction": "min" if lower_is_better(metric) else "max",
            "trials": trials, "winner": winner["trial"], "overrides": winner["overrides"]}


def _cv_choice(spec: SweepSpec, out: Path, name: str, cells: list[Cell]) -> dict[str, Any] | str:
    """The frozen ``cv`` choice of one variant (:mod:`imer.experiments.crossval`): its search.json entry, or why it stays open."""
    assert spec.search is not None
    by_trial: dict[int, list[Cell]] = {}
    for cell in cells:
        by_trial.setdefault(int(cell.trial or 0), []).append(cell)
    metric = spec.search.metric
    trials = []
    for k, members in sorted(by_trial.items()):
        record: dict[str, Any] = {"trial": k, "overrides": list(spec.search.trials(name)[k]), "paths": [c.relpath.as_posix() for c in members]}
        folders = [RunFolder(out / c.relpath) for c in members]
        errors = [f.read("error.json") for f in folders if not f.finished and f.has("error.json")]
        if any(e.get("user_error") for e in errors):
            trials.append({**record, "status": "failed", "score": None, "error": next(e["error"] for e in errors if e.get("user_error"))})
            continue
        if not all(f.finished for f in folders):
            return "trials unfinished"
        metric = metric or folders[0].read("metrics.json")["selection"]["metric"]
        trials.append(score_trial(record, [f.path for f in folders], metric))
    winner = choose(trials, metric or "")
    if winner is None:
        return "every trial failed"
    return {"settings": spec.search.settings(name), "metric": metric, "direction": "min" if lower_is_better(metric) else "max",
            "trials": trials, "winner": winner["trial"], "best_epoch": winner["best_epoch"], "overrides": winner["overrides"] + winner["budget"]}
