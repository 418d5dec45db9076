"""Grids of runs (dataset × variant × missing rate × seed), resumable and parallel.

A sweep comes from a spec file (:mod:`imer.experiments.spec`) or from the
command line, where every method is a variant of the same name. A sweep
directory holds ``sweep.json`` (the grid, its settings and the status of every
cell, rewritten as cells finish), ``failures.jsonl`` (one line per failed
attempt) and one run directory per cell::

    DIR/runs/<dataset>/<variant>/rate=<r>/seed=<s>/      (``fold=<f>/seed=<s>`` with --folds)

``<dataset>`` is :func:`~imer.experiments.spec.dataset_label`: the registered
name, or ``<stem>-<content hash>`` for a file, so two files with the same stem
never share run folders.

A spec with a ``[search]`` runs its hyper-parameter search first, as cells
under ``DIR/search/runs/<dataset>/<variant>/trial=<k>/...``; each searched
variant's validation-best trial is frozen in ``DIR/search.json`` and the grid
runs with it (:func:`freeze_search`). ``plan_sweep`` says what would run and
roughly what it costs, without running it.

A cell is finished when its ``metrics.json`` exists (and ``conditions.json``
when fixed-condition evaluation is asked for); finished cells are never run
again, an interrupted cell continues from its ``checkpoint.pt``. Cells run in
worker processes (``spawn``, one torch thread each by default) or, with the
optional ``ray`` backend, as Ray tasks on a local or remote Ray cluster.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imer.errors import ConfigError, IMERError
from imer.evaluation.metrics import LOWER_IS_BETTER, is_better
from imer.experiments.spec import ExperimentFile, SearchSpec, Variant, dataset_label, variants_table
from imer.io import append_jsonl, read_json, write_json

STATUS_FILES = ("metrics.json", "conditions.json")
SEARCH_FILE = "search.json"


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    dataset: str
    variant: str
    method: str
    rate: float
    seed: int
    fold: int | None = None
    dataset_id: str = ""
    trial: int | None = None  # a trial of the hyper-parameter search stage (run under search/)

    @property
    def relpath(self) -> Path:
        """Run directory relative to the sweep directory."""
        base = Path("runs") / (self.dataset_id or self.dataset) / self.variant
        if self.trial is not None:
            base = Path("search") / base / f"trial={self.trial}"
        base = base / f"rate={self.rate:g}"
        if self.fold is not None:
            base = base / f"fold={self.fold}"
        return base / f"seed={self.seed}"

    @property
    def label(self) -> str:
        fold = f" fold={self.fold}" if self.fold is not None else ""
        trial = f" search trial {self.trial}" if self.trial is not None else ""
        return f"{self.dataset_id or self.dataset}/{self.variant}{trial} rate={self.rate:g}{fold} seed={self.seed}"


@dataclass
class SweepSpec:
    """The grid and the settings shared by all its cells.

    ``variants`` are the rows of the grid; ``methods`` is the command-line
    shorthand (every method a variant of the same name). ``epochs`` is the
    budget of variants without their own; ``overrides`` apply to every variant
    (``METHOD:key=value`` to one method's variants), before the variant's own.
    """

    methods: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=list)
    folds: list[int] | None = None
    epochs: int | None = None
    data_dir: str | None = None
    overrides: list[str] = field(default_factory=list)
    conditions: bool = False
    threads: int = 1
    log_to: str | None = None
    experiment: ExperimentFile | None = None
    search: SearchSpec | None = None
    chosen: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # frozen search winners: dataset id -> variant -> overrides

    def __post_init__(self) -> None:
        self.variants = [v if isinstance(v, Variant) else Variant.from_dict(v) for v in self.variants]
        if isinstance(self.experiment, dict):
            self.experiment = ExperimentFile(**self.experiment)
        if isinstance(self.search, dict):
            self.search = SearchSpec.from_dict(self.search)
        names = {v.name for v in self.variants}
        self.variants += [Variant(m, m) for m in self.methods if m not in names]
        self.methods = []
        if len({v.name for v in self.variants}) != len(self.variants):
            raise ConfigError("variant names must be unique in a sweep")

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    def cells(self) -> list[Cell]:
        """All cells, dataset-major (so early results fill whole table rows first)."""
        folds: list[int | None] = list(self.folds) if self.folds else [None]
        labels = {d: dataset_label(d) for d in self.datasets}
        return [
            Cell(d, v.name, v.method, float(r), int(s), f, labels[d])
            for d in self.datasets
            for v in self.variants
            for r in self.rates
            if v.rates is None or float(r) in v.rates
            for f in folds
            for s in self.seeds
            if v.seeds is None or int(s) in v.seeds
        ]

    def search_cells(self) -> list[Cell]:
        """The search stage: every searched variant × trial on each dataset, at the search's seed and rate (first fold)."""
        if self.search is None:
            return []
        labels = {d: dataset_label(d) for d in self.datasets}
        folds = self.search.cv_folds if self.search.protocol == "cv" else [self.folds[0] if self.folds else None]
        return [Cell(d, v.name, v.method, self.search.rate, self.search.seed, fold, labels[d], trial=k)
                for d in self.datasets for v in self.variants if v.name in self.search.variants
                for k in range(len(self.search.trials(v.name))) for fold in folds]

    def searched_root(self, name: str) -> str | None:
        """The variant whose search decides ``name``'s settings (itself or a base), None when it is not searched."""
        if self.search is None:
            return None
        variant = self.variant(name)
        while variant.name not in self.search.variants and variant.base is not None:
            variant = self.variant(variant.base)
        return variant.name if variant.name in self.search.variants else None

    def waiting(self, cell: Cell) -> bool:
        """A grid cell whose variant's search has no frozen choice yet."""
        root = self.searched_root(cell.variant)
        return cell.trial is None and root is not None and root not in self.chosen.get(cell.dataset_id or cell.dataset, {})

    def run_overrides(self, cell: Cell) -> list[str]:
        """Overrides of a cell, in order: spec ``set``, the variant's (base first), then the trial's or the frozen winner's."""
        variant = self.variant(cell.variant)
        items = overrides_for(cell.method, self.overrides) + list(variant.overrides)
        if cell.trial is not None:
            assert self.search is not None
            return items + self.search.trial_overrides() + list(self.search.trials(cell.variant)[cell.trial])
        root = self.searched_root(cell.variant)
        if root is not None:
            assert self.search is not None
            items += self.search.grid_overrides() + self.chosen[cell.dataset_id or cell.dataset][root]
        return items

    def settings(self) -> dict[str, Any]:
        """What must agree between runs of one sweep directory for its numbers to be comparable."""
        return {"epochs": self.epochs, "overrides": list(self.overrides)}

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["variants"] = variants_table(self.variants)
        return values


def overrides_for(method: str, overrides: Iterable[str]) -> list[str]:
    """``--set`` items that apply to ``method``: plain ``key=value`` and ``<method>:key=value``."""
    out = []
    for item in overrides:
        scope, sep, rest = item.partition(":")
        if sep and "=" not in scope:
            if scope == method:
                out.append(rest)
        else:
            out.append(item)
    return out


def cell_state(run_dir: Path, conditions: bool) -> str:
    """``done``, ``partial`` (has a checkpoint or a trained model) or ``todo``."""
    if (run_dir / "metrics.json").is_file():
        if not conditions or (run_dir / "conditions.json").is_file():
            return "done"
        return "partial"
    return "partial" if (run_dir / "checkpoint.pt").is_file() else "todo"


def run_cell(spec: SweepSpec, cell: Cell, out: str | Path) -> dict[str, Any]:
    """Train (or resume) one cell and optionally evaluate its fixed conditions.

    Never raises for a failing cell: the error and traceback go into
    ``error.json`` in the run directory and into the returned record, so one
    bad cell cannot stop a sweep.
    """
    from imer.experiments.config import build_run_config
    from imer.experiments.inference import evaluate_conditions
    from imer.experiments.run import train

    run_dir = Path(out) / cell.relpath
    t0 = time.perf_counter()
    record: dict[str, Any] = {"cell": asdict(cell), "path": str(cell.relpath), "pid": os.getpid()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if not (run_dir / "metrics.json").is_file():
                variant = spec.variant(cell.variant)
                config = build_run_config(
                    cell.method,
                    cell.dataset,
                    config_file=variant.config,
                    overrides=spec.run_overrides(cell),
                    seed=cell.seed,
                    data__data_dir=spec.data_dir,
                    data__fold=cell.fold,
                    missing__rate=cell.rate,
                    train__epochs=variant.epochs or spec.epochs,
                    train__threads=spec.threads,
                    train__progress=False,
                )
                if spec.log_to:
                    config.train.log_to = spec.log_to
                resumed = (run_dir / "checkpoint.pt").is_file()
                record["resumed"] = resumed
                train(config, run_dir, resume=resumed, variant=cell.variant if cell.trial is None else f"{cell.variant}@trial{cell.trial}")
            if spec.conditions and cell.trial is None and not (run_dir / "conditions.json").is_file():
                write_json(run_dir / "conditions.json", evaluate_conditions(run_dir, data_dir=spec.data_dir))
            (run_dir / "error.json").unlink(missing_ok=True)
            record["status"] = "ok"
        except Exception as exc:  # a failing cell is data for the report, not a reason to stop
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}", user_error=isinstance(exc, IMERError), traceback=traceback.format_exc())
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / "error.json", record)
    record["seconds"] = time.perf_counter() - t0
    record["warnings"] = sorted({str(w.message) for w in caught})
    return record


def _init_worker(threads: int) -> None:
    """Worker processes: fixed thread count so N workers never oversubscribe the CPU."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def execute_local(spec: SweepSpec, cells: list[Cell], out: Path, workers: int) -> Iterator[dict[str, Any]]:
    """Run ``cells`` in ``workers`` spawned processes (in this process when ``workers`` <= 1)."""
    if workers <= 1:
        for cell in cells:
            yield run_cell(spec, cell, out)
        return
    context = multiprocessing.get_context("spawn")
    # One fresh process per cell (Python >= 3.11), so each run's peak RSS in metrics.json is its own.
    fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(spec.threads,), **fresh)
    try:
        pending: dict[Future, Cell] = {pool.submit(run_cell, spec, cell, out): cell for cell in cells}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                cell = pending.pop(future)
                try:
                    yield future.result()
                except Exception as exc:  # the worker process itself died (killed, out of memory)
                    yield _crashed(cell, f"worker process failed: {type(exc).__name__}: {exc}")
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM, consumer gone): drop queued cells and stop the running ones now;
        # they resume from their checkpoints next time. The executor has no public terminate, hence _processes.
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _crashed(cell: Cell, message: str) -> dict[str, Any]:
    return {"cell": asdict(cell), "path": str(cell.relpath), "status": "failed", "error": message, "user_error": False,
            "traceback": traceback.format_exc(), "seconds": 0.0, "warnings": []}


def execute_ray(spec: SweepSpec, cells: list[Cell], out: Path, workers: int, address: str | None = None) -> Iterator[dict[str, Any]]:
    """Run ``cells`` as Ray tasks (one CPU each); ``address`` joins an existing cluster.

    On a cluster ``out`` must be a path every node can write (a shared file system).
    Without ``address`` (and without ``RAY_ADDRESS``) a local Ray instance with
    ``workers`` CPUs is started.
    """
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray backend needs Ray: pip install 'imer[ray]'") from None
    started = False
    if not ray.is_initialized():
        if address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(workers, 1), include_dashboard=False, log_to_driver=False)
        started = True
    try:
        task = ray.remote(num_cpus=spec.threads)(_ray_cell)
        pending = {task.remote(spec, cell, str(out)): cell for cell in cells}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                cell = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as exc:  # the task's worker died
                    yield _crashed(cell, f"ray task failed: {type(exc).__name__}: {exc}")
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


def _ray_cell(spec: SweepSpec, cell: Cell, out: str) -> dict[str, Any]:
    _init_worker(spec.threads)
    return run_cell(spec, cell, out)


def _manifest(spec: SweepSpec, out: Path, states: dict[Cell, str], started: str, backend: str, workers: int) -> dict[str, Any]:
    import imer

    counts: dict[str, int] = {}
    for s in states.values():
        counts[s] = counts.get(s, 0) + 1
    return {
        "imer": imer.__version__,
        "started": started,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "backend": backend,
        "workers": workers,
        "spec": spec.to_dict(),
        "counts": counts,
        "cells": [{**asdict(c), "path": str(c.relpath), "status": s} for c, s in states.items()],
    }


def _check_settings(spec: SweepSpec, out: Path) -> None:
    """Refuse to mix runs with other training settings into an existing sweep directory.

    The grid may grow (more methods, rates, seeds): cells already on disk are
    kept and the report reads them all.
    """
    path = out / "sweep.json"
    if not path.is_file():
        return
    old = SweepSpec(**read_json(path)["spec"])
    if old.settings() != spec.settings():
        raise ConfigError(
            f"{out}: holds a sweep with other settings {old.settings()} (now {spec.settings()}); "
            "results would not be comparable — use another --out"
        )
    before = {v.name: v.settings() for v in old.variants}
    for v in spec.variants:
        if v.name in before and before[v.name] != v.settings():
            raise ConfigError(f"{out}: variant '{v.name}' was run with other settings {before[v.name]} (now {v.settings()}); "
                              "give the changed variant a new name or use another --out")


def read_search(spec: SweepSpec, out: Path) -> dict[str, Any]:
    """``out/search.json`` (frozen search choices), checked against the spec; an empty record when absent.

    A frozen choice never changes: a spec whose search of a variant differs from
    the frozen one (seed, rate, metric or trials) is refused.
    """
    path = out / SEARCH_FILE
    data = read_json(path) if path.is_file() else {"datasets": {}}
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
        if spec.search.protocol == "cv":
            entry = _cv_choice(spec, out, name, cells)
            if isinstance(entry, str):
                open_.append(f"{dataset}/{name}: {entry}")
                continue
            data["datasets"].setdefault(dataset, {})[name] = entry
            changed = True
            continue
        trials, complete = [], True
        for cell in cells:
            run_dir = out / cell.relpath
            record = {"trial": cell.trial, "overrides": list(spec.search.trials(name)[cell.trial]), "path": cell.relpath.as_posix()}
            if (run_dir / "metrics.json").is_file():
                m = read_json(run_dir / "metrics.json")
                metric = spec.search.metric or m["selection"]["metric"]
                score = m.get("valid", {}).get(metric)
                if score is None:
                    raise ConfigError(f"[search] metric '{metric}' is not a validation metric of {cell.label} (has {sorted(m.get('valid', {}))})")
                record.update(status="ok", metric=metric, score=float(score), best_epoch=m["selection"]["best_epoch"])
            elif (run_dir / "error.json").is_file() and read_json(run_dir / "error.json").get("user_error"):
                record.update(status="failed", score=None, error=read_json(run_dir / "error.json").get("error"))
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
            "settings": spec.search.settings(name), "metric": metric, "direction": "min" if metric in LOWER_IS_BETTER else "max",
            "trials": trials, "winner": winner["trial"], "overrides": winner["overrides"],
        }
        changed = True
    if changed and spec.search.protocol == "cv":
        data["rule"] = ("cv: every trial on each development fold (held-out fold = validation); the trial and epoch with the best "
                        "fold-averaged validation score of the search metric win (ties keep the earlier trial, then the earlier epoch); "
                        "the grid refits on all development videos for that budget; frozen: a rerun never changes a choice")
        write_json(out / SEARCH_FILE, data)
    elif changed:
        data["rule"] = ("best validation score of the search metric at each trial's selected epoch; ties keep the earlier trial "
                        "(grid order: first key slowest); frozen: a rerun never changes a choice")
        write_json(out / SEARCH_FILE, data)
    spec.chosen = {d: {n: list(e["overrides"]) for n, e in entries.items()} for d, entries in data["datasets"].items()}
    return open_


def _stages(spec: SweepSpec, cells: list[Cell]) -> list[list[Cell]]:
    """With a search: one stage per searched variant in spec order (its trials, then the grid cells it decides), so
    finished rows appear while later variants are still searched; unsearched grid cells form a last stage."""
    if spec.search is None:
        return []
    stages: dict[str | None, list[Cell]] = {}
    for cell in cells:
        stages.setdefault(cell.variant if cell.trial is not None else spec.searched_root(cell.variant), []).append(cell)
    return [stages[key] for key in sorted(stages, key=lambda k: k is None)]


def _cv_choice(spec: SweepSpec, out: Path, name: str, cells: list[Cell]) -> dict[str, Any] | str:
    """The frozen ``cv`` choice of one variant (:mod:`imer.experiments.crossval`): its search.json entry, or why it stays open."""
    from imer.experiments.crossval import choose, score_trial

    assert spec.search is not None
    by_trial: dict[int, list[Cell]] = {}
    for cell in cells:
        by_trial.setdefault(int(cell.trial or 0), []).append(cell)
    metric = spec.search.metric
    trials = []
    for k, members in sorted(by_trial.items()):
        record: dict[str, Any] = {"trial": k, "overrides": list(spec.search.trials(name)[k]), "paths": [c.relpath.as_posix() for c in members]}
        dirs = [out / c.relpath for c in members]
        errors = [read_json(d / "error.json") for d in dirs if not (d / "metrics.json").is_file() and (d / "error.json").is_file()]
        if any(e.get("user_error") for e in errors):
            trials.append({**record, "status": "failed", "score": None, "error": next(e["error"] for e in errors if e.get("user_error"))})
            continue
        if not all((d / "metrics.json").is_file() for d in dirs):
            return "trials unfinished"
        metric = metric or read_json(dirs[0] / "metrics.json")["selection"]["metric"]
        trials.append(score_trial(record, dirs, metric))
    winner = choose(trials, metric or "")
    if winner is None:
        return "every trial failed"
    return {"settings": spec.search.settings(name), "metric": metric, "direction": "min" if metric in LOWER_IS_BETTER else "max",
            "trials": trials, "winner": winner["trial"], "best_epoch": winner["best_epoch"], "overrides": winner["overrides"] + winner["budget"]}


def run_sweep(
    spec: SweepSpec,
    out: str | Path,
    workers: int = 1,
    backend: str = "local",
    address: str | None = None,
    progress: bool = True,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    search_only: bool = False,
) -> dict[str, Any]:
    """Run every unfinished cell of ``spec`` into ``out`` (``search_only``: the search stage only); returns the final manifest.

    With a search (``spec.search``) the search trials run first; each searched
    variant's winner is frozen in ``search.json`` and its grid cells then run
    with the winning overrides (cells whose search is still open are left
    ``waiting``). Finished cells are skipped, interrupted ones resumed;
    failures are recorded in ``failures.jsonl`` and each run's ``error.json``
    and the sweep goes on.
    """
    from tqdm.auto import tqdm

    from imer.models import list_models

    if backend not in ("local", "ray"):
        raise ConfigError(f"unknown backend {backend!r}; use local or ray")
    if not spec.variants or not spec.datasets or not spec.rates or not spec.seeds:
        raise ConfigError("a sweep needs at least one method, dataset, missing rate and seed")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(spec, out)
    unknown = sorted({v.method for v in spec.variants} - set(list_models()))
    if unknown:
        warnings.warn(f"unknown method(s) {unknown} (registered: {list_models()}); their cells will be recorded as failed", stacklevel=2)
    search_cells = spec.search_cells()
    if spec.search is not None:
        frozen = read_search(spec, out)["datasets"]
        spec.chosen = {d: {n: list(e["overrides"]) for n, e in entries.items()} for d, entries in frozen.items()}
    cells = search_cells + spec.cells()
    states = {c: _state(spec, out, c) for c in cells}
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(out / "sweep.json", _manifest(spec, out, states, started, backend, workers))
    plain = progress and not sys.stderr.isatty()  # logs and pipes get one line per finished cell, no carriage returns
    done = sum(s == "done" for s in states.values())
    bar = tqdm(total=len(cells), initial=done, desc="sweep", unit="run", disable=not progress or plain, dynamic_ncols=True)
    restore = _interrupt_on_sigterm()
    seen_warnings: set[str] = set()
    counter = {"finished": done, "failed": 0}

    def execute(todo: list[Cell]) -> None:
        if not todo:
            return
        runner = execute_ray(spec, todo, out, workers, address) if backend == "ray" else execute_local(spec, todo, out, workers)
        try:
            for record in runner:
                cell = Cell(**record["cell"])
                states[cell] = "done" if record["status"] == "ok" else "failed"
                if record["status"] != "ok":
                    counter["failed"] += 1
                    append_jsonl(out / "failures.jsonl", {**record, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
                    bar.write(f"FAILED {cell.label}: {record['error']}")
                for message in record.get("warnings", []):
                    if message not in seen_warnings:
                        seen_warnings.add(message)
                        bar.write(f"warning ({cell.label}): {message}")
                write_json(out / "sweep.json", _manifest(spec, out, states, started, backend, workers))
                if on_result is not None:
                    on_result(record)
                bar.update(1)
                counter["finished"] += 1
                if plain:
                    print(f"sweep {counter['finished']}/{len(cells)}: {cell.label} {states[cell]} ({record.get('seconds', 0.0):.0f}s)", file=sys.stderr, flush=True)
                bar.set_postfix(failed=counter["failed"])
        finally:
            runner.close()  # on interruption: stops the workers now (see execute_local)

    try:
        if spec.search is None:
            if not search_only:
                execute([c for c in cells if states[c] != "done"])
        for stage in _stages(spec, cells):
            execute([c for c in stage if c.trial is not None and states[c] in ("todo", "partial")])
            for line in freeze_search(spec, out):
                if any(line.startswith(f"{c.dataset_id or c.dataset}/{c.variant}:") for c in stage):
                    bar.write(f"search open, its grid cells wait: {line} (rerun to finish it)")
            if not search_only:
                execute([c for c in stage if c.trial is None and states[c] != "done" and not spec.waiting(c)])
    finally:
        restore()
        bar.close()
        states = {c: (s if s == "failed" else _state(spec, out, c)) for c, s in states.items()}
        write_json(out / "sweep.json", _manifest(spec, out, states, started, backend, workers))
    return read_json(out / "sweep.json")


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
        for path in sorted(source.rglob("metrics.json")):
            try:
                m = read_json(path)
                wall = m.get("wall_seconds")
                per_epoch = float(wall) / max(int(m["selection"]["epochs"]), 1) if wall is not None else float(m["seconds_per_epoch"])
                dataset = str(m.get("dataset_id") or m["dataset"])
            except (KeyError, TypeError, ValueError, IMERError):
                continue
            for key in ((dataset, f"variant:{m.get('variant')}"), (dataset, f"method:{m['method']}")):
                costs.setdefault(key, []).append(per_epoch)
    return costs


def plan_sweep(spec: SweepSpec, out: str | Path, sources: list[str | Path] = ()) -> list[dict[str, Any]]:
    """What ``run_sweep`` would run, without running it: one row per stage × dataset × variant.

    Each row: cells, cells still to do, the resolved epoch budget (search rows:
    of the first trial), and an estimate of the CPU seconds still needed: the
    median wall seconds per epoch of finished runs of the same variant (in
    ``out``), else of the same method and dataset (in ``out`` and ``sources``,
    e.g. ``results/``), times the epochs of the cells to do. ``None`` when no run
    of that method on that dataset was found.
    """
    from imer.experiments.config import build_run_config

    out = Path(out)
    own = _observed_costs([out])
    other = _observed_costs([out, *[Path(s) for s in sources]])
    if spec.search is not None and (out / SEARCH_FILE).is_file():
        spec.chosen = {d: {n: list(e["overrides"]) for n, e in entries.items()} for d, entries in read_search(spec, out)["datasets"].items()}
    groups: dict[tuple[str, str, str], list[Cell]] = {}
    for cell in spec.search_cells() + spec.cells():
        groups.setdefault(("search" if cell.trial is not None else "grid", cell.dataset, cell.variant), []).append(cell)
    rows = []
    for (stage, dataset, name), cells in groups.items():
        variant = spec.variant(name)
        first = cells[0]
        overrides = spec.run_overrides(first) if not spec.waiting(first) else overrides_for(variant.method, spec.overrides) + list(variant.overrides)
        config = build_run_config(variant.method, dataset, config_file=variant.config, overrides=overrides, data__data_dir=spec.data_dir,
                                  train__epochs=variant.epochs or spec.epochs, train__threads=spec.threads)
        states = [_state(spec, out, c) for c in cells]
        todo = sum(s not in ("done", "frozen") for s in states)
        label = first.dataset_id or dataset
        observed, source = own.get((label, f"variant:{name}")), "runs of this variant here"
        if not observed:
            observed, source = other.get((label, f"method:{variant.method}")), f"{variant.method} runs"
        per_epoch = float(np.median(observed)) if observed else None
        rows.append({"stage": stage, "dataset": label, "variant": name, "method": variant.method, "cells": len(cells), "todo": todo,
                     "epochs": config.train.epochs, "seconds_per_epoch": per_epoch, "source": source if observed else "no finished run found",
                     "seconds": None if per_epoch is None else per_epoch * config.train.epochs * todo})
    return rows


def _state(spec: SweepSpec, out: Path, cell: Cell) -> str:
    """A cell's state: ``cell_state``; ``frozen`` for an unfinished trial of a frozen search; ``waiting`` for a cell whose search is open."""
    state = cell_state(out / cell.relpath, spec.conditions and cell.trial is None)
    if cell.trial is not None and state != "done" and cell.variant in spec.chosen.get(cell.dataset_id or cell.dataset, {}):
        return "frozen"
    if state != "done" and spec.waiting(cell):
        return "waiting"
    return state


def _interrupt_on_sigterm() -> Callable[[], None]:
    """Make SIGTERM behave like Ctrl-C (clean stop, manifest updated); returns the undo function."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def parse_list(text: str, kind: Callable[[str], Any] = str) -> list[Any]:
    """``"a,b,c"`` -> ``[kind(a), kind(b), kind(c)]`` (empty items dropped, order kept, duplicates removed)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        values = [kind(t) for t in items]
    except ValueError:
        raise ConfigError(f"cannot read {text!r} as a comma-separated list of {kind.__name__}") from None
    return list(dict.fromkeys(values))
