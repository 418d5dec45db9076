"""What a sweep would run and roughly what it costs, from the runs already finished, without running it."""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from imer.config import build_run_config
from imer.errors import IMERError
from imer.experiments.grid import Cell, SweepSpec
from imer.experiments.run import train
from imer.experiments.search import read_search
from imer.experiments.spec import overrides_for
from imer.experiments.sweep import cell_status
from imer.runfolder import finished_runs, sweepdir


def _observed_costs(sources: list[Path]) -> dict[tuple[str, str], list[float]]:
    """Seconds per configured epoch of finished runs under ``sources``, keyed by (dataset id, variant) and (dataset id, method).

    Wall seconds of the whole run divided by its epochs; runs written before
    ``wall_seconds`` existed give their training ``seconds_per_epoch``
    (evaluation excluded, so a lower bound).
    """
    costs: dict[tuple[str, str], list[float]] = {}
    for source in sources:
        if not source.is_dir():
            continue
        for folder in finished_runs(source):
            try:
                m = folder.read("metrics.json")
                wall = m.get("wall_seconds")
                per_epoch = float(wall) / max(int(m["selection"]["epochs"]), 1) if wall is not None else float(m["seconds_per_epoch"])
                dataset = str(m.get("dataset_id") or m["dataset"])
            except (KeyError, TypeError, ValueError, IMERError):
                continue
            for key in ((dataset, f"variant:{m.get('variant')}"), (dataset, f"method:{m['method']}")):
                costs.setdefault(key, []).append(per_epoch)
    return costs


def _timed_cost(config: Any) -> tuple[float, float]:
    """Start-up seconds and seconds per epoch of ``config``, from a one-epoch run in a temporary folder (deleted afterwards)."""
    short = replace(config, train=replace(config.train, epochs=1, progress=False, log_to=None))
    with tempfile.TemporaryDirectory(prefix="imer-plan-") as folder:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a one-epoch run's warnings (e.g. no better than a constant) say nothing about the sweep
            metrics = train(short, Path(folder) / "run")
    per_epoch = float(metrics["seconds_per_epoch"])
    return max(float(metrics["wall_seconds"]) - per_epoch, 0.0), per_epoch


def plan_sweep(spec: SweepSpec, out: str | Path, sources: list[str | Path] = (), timing: bool = False) -> list[dict[str, Any]]:
    """What ``run_sweep`` would run, without running it: one row per stage × dataset × variant.

    Each row: cells, cells still to do, the resolved epoch budget (search rows:
    of the first trial), and an estimate of the CPU seconds still needed: the
    median wall seconds per epoch of finished runs of the same variant (in
    ``out``), else of the same method and dataset (in ``out`` and ``sources``,
    e.g. ``results/``), times the epochs of the cells to do. Without such runs,
    ``timing`` times one epoch of the variant now (start-up counted once per
    cell); otherwise the estimate is ``None``.
    """
    out = Path(out)
    own = _observed_costs([out])
    other = _observed_costs([out, *[Path(s) for s in sources]])
    if spec.search is not None and sweepdir.has_search(out):
        spec.chosen = {d: {n: list(e["overrides"]) for n, e in entries.items()} for d, entries in read_search(spec, out)["datasets"].items()}
    groups: dict[tuple[str, str, str], list[Cell]] = {}
    for cell in spec.search_cells() + spec.cells():
        groups.setdefault(("search" if cell.trial is not None else "grid", cell.dataset, cell.variant), []).append(cell)
    rows = []
    timed: dict[tuple[str, str], tuple[float, float]] = {}
    for (stage, dataset, name), cells in groups.items():
        variant = spec.variant(name)
        first = cells[0]
        overrides = spec.run_overrides(first) if not spec.waiting(first) else overrides_for(variant.method, spec.overrides) + list(variant.overrides)
        config = build_run_config(variant.method, dataset, config_file=variant.config, overrides=overrides,
                                  settings=spec.build_settings(variant))
        states = [cell_status(spec, out, c) for c in cells]
        todo = sum(s not in ("done", "frozen") for s in states)
        label = first.dataset_id or dataset
        observed, source = own.get((label, f"variant:{name}")), "runs of this variant here"
        if not observed:
            observed, source = other.get((label, f"method:{variant.method}")), f"{variant.method} runs"
        per_epoch = float(np.median(observed)) if observed else None
        seconds = None if per_epoch is None else per_epoch * config.train.epochs * todo
        if per_epoch is None and timing and todo:
            if (label, name) not in timed:
                timed[(label, name)] = _timed_cost(config)
            startup, per_epoch = timed[(label, name)]
            seconds, source = (startup + per_epoch * config.train.epochs) * todo, "one epoch timed now"
        rows.append({"stage": stage, "dataset": label, "variant": name, "method": variant.method, "cells": len(cells), "todo": todo,
                     "epochs": config.train.epochs, "seconds_per_epoch": per_epoch,
                     "source": source if per_epoch is not None else "no finished run found", "seconds": seconds})
    return rows
