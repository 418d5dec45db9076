"""The cross-validated selection protocol (``cv``, docs/protocol.md): choose on development folds, refit, test once.

Every trial (a set of hyper-parameters) is trained on each of ``k`` development
folds (train + valid groups, grouped by video; the held-out fold is the
validation part). The fold-averaged validation curve of each trial gives its
score at every epoch; the best (trial, epoch) wins, ties keeping the earlier
trial and then the earlier epoch. The refit trains once on every development
group for exactly that budget and keeps its final epoch
(``train.selection = "last"``); only then is the test part evaluated. Sweeps
use it through ``[search] protocol = "cv"``, Python through
``imer.fit(..., protocol="cv")``.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from imer.config import build_run_config
from imer.errors import ConfigError
from imer.evaluation.metrics import is_better, lower_is_better
from imer.experiments.run import default_select_metric, train
from imer.fields import flagged
from imer.models import get_model_class
from imer.runfolder import RunFolder

REFIT_OVERRIDES = ("data.refit=true", 'train.selection="last"')


def fold_overrides(folds: int) -> list[str]:
    """What a cross-validation run adds: development folds, the held-out fold as validation."""
    return [f"data.dev_folds={folds}", 'data.holdout="valid"']


def mean_curve(run_dirs: list[Path], metric: str) -> np.ndarray | None:
    """Fold-averaged validation ``metric`` per epoch; None when a fold lacks it or the folds ran different epochs."""
    curves = [[h["valid"].get(metric) for h in RunFolder(d).history()] for d in run_dirs]
    if not curves or len({len(c) for c in curves}) != 1 or any(v is None for c in curves for v in c):
        return None
    return np.mean(np.asarray(curves, dtype=np.float64), axis=0)


def best_epoch(curve: np.ndarray, metric: str) -> int:
    """The epoch with the best score (the first of tied ones)."""
    return int(np.argmin(curve) if lower_is_better(metric) else np.argmax(curve))


def budget_overrides(run_dir: Path, epoch: int) -> list[str]:
    """``--set`` items that make the refit train exactly as the fold runs did up to ``epoch``.

    The method's own :meth:`~imer.models.base.IMERModel.budget_overrides`
    (epochs, or a convex method's chosen candidate), plus every stage length of
    the run's resolved config (the options declared ``stage=True``) as whole epochs, so a shorter refit keeps its
    stage switch where the fold runs had it.
    """
    folder = RunFolder(run_dir)
    config = folder.read("config.json")
    method = get_model_class(config["method"])
    budget = method.budget_overrides(epoch, folder.history()[epoch])
    lengths = flagged(method.config_class, "stage")
    stages = [f"{key}={json.dumps(value)}" for key, value in config["model"].items()
              if key in lengths and isinstance(value, int) and not isinstance(value, bool)]
    return budget + stages


def choose(trials: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The winning trial record (``score``, ``best_epoch``); ties keep the earlier trial. None when no trial scored."""
    best = None
    for trial in trials:
        if trial.get("score") is not None and is_better(metric, trial["score"], None if best is None else best["score"]):
            best = trial
    return best


def score_trial(record: dict[str, Any], run_dirs: list[Path], metric: str) -> dict[str, Any]:
    """``record`` completed with the trial's fold-averaged curve, its best epoch, score and refit budget."""
    curve = mean_curve(run_dirs, metric)
    if curve is None:
        return {**record, "status": "failed", "score": None}
    epoch = best_epoch(curve, metric)
    fold_scores = [float(RunFolder(d).history()[epoch]["valid"][metric]) for d in run_dirs]
    return {**record, "status": "ok", "metric": metric, "score": float(curve[epoch]), "best_epoch": epoch,
            "curve": [float(v) for v in curve], "fold_scores": fold_scores, "budget": budget_overrides(run_dirs[0], epoch)}


def grid_trials(grid: dict[str, list[Any]] | None) -> list[list[str]]:
    """Override lists of a search grid, first key slowest (one empty trial without a grid)."""
    if not grid:
        return [[]]
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"search grid: '{key}' needs a non-empty list of values")
    return [[f"{k}={json.dumps(v)}" for k, v in zip(grid, values)] for values in itertools.product(*grid.values())]


def cross_validate(method: str, dataset: Any, missing_rate: float, *, folds: int = 5, grid: dict[str, list[Any]] | None = None,
                   seed: int = 0, metric: str | None = None, epochs: int | None = None, overrides: list[str] | None = None,
                   out: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Run every trial of ``grid`` on ``folds`` development folds of an in-memory ``dataset``; returns the choice.

    The record holds every trial (its curve, best epoch, per-fold scores) and
    ``overrides``: the winner's settings plus its budget, for the refit.
    Fold runs go under ``out`` (a temporary folder, removed, when None).
    """
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise ConfigError(f"folds: the cv protocol needs an integer >= 2 of development folds, got {folds!r}")
    metric = metric or default_select_metric(dataset.task)
    with tempfile.TemporaryDirectory(prefix="imer-cv-") as scratch:
        root = Path(out) if out is not None else Path(scratch)
        trials = []
        for k, trial in enumerate(grid_trials(grid)):
            run_dirs = []
            for fold in range(1, folds + 1):
                config = build_run_config(method, dataset.name, overrides=[*(overrides or []), *fold_overrides(folds), *trial,
                                                                          f"train.select_metric={json.dumps(metric)}"],
                                          in_memory=True, settings={"seed": seed, "missing.rate": missing_rate, "data.fold": fold,
                                                                    "train.epochs": epochs, "train.progress": progress})
                run_dir = root / f"trial={k}" / f"fold={fold}"
                train(config, run_dir, dataset=dataset, overwrite=True)
                run_dirs.append(run_dir)
            trials.append(score_trial({"trial": k, "overrides": trial}, run_dirs, metric))
    winner = choose(trials, metric)
    if winner is None:
        raise ConfigError(f"{method}: no cross-validation trial produced a score")
    return {"protocol": "cv", "folds": folds, "seed": seed, "rate": missing_rate, "metric": metric, "trials": trials,
            "winner": winner["trial"], "best_epoch": winner["best_epoch"], "overrides": winner["overrides"] + winner["budget"]}
