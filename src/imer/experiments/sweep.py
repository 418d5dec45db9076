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

import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from imer.config import build_run_config
from imer.data import load_dataset
from imer.data.registry import needs_data_dir
from imer.errors import ConfigError, DataError, IMERError, stop_on_sigterm
from imer.experiments.cells import execute_local, execute_ray
from imer.experiments.grid import Cell, SweepSpec
from imer.experiments.loading import resolve_device
from imer.experiments.search import freeze_search, read_search
from imer.experiments.spec import overrides_for
from imer.models import list_models
from imer.runfolder import RunFolder, sweepdir
from imer.runfolder.folder import LOCK, locked
from imer.version import __version__


def _manifest(spec: SweepSpec, out: Path, states: dict[Cell, str], started: str, backend: str, workers: int) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for s in states.values():
        counts[s] = counts.get(s, 0) + 1
    return {
        "imer": __version__,
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
    manifest = sweepdir.read_manifest(out)
    if manifest is None:
        return
    try:
        old = SweepSpec(**manifest["spec"])
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise DataError(f"{out / sweepdir.MANIFEST}: not a sweep manifest written by imer (its spec: {type(exc).__name__}); "
                        "the sweep directory is damaged, use another --out") from None
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


def check_sweep_dir(out: Path) -> None:
    """Refuse an ``--out`` that is neither absent, empty nor a sweep directory (``sweep.json``), or that is a link."""
    if out.is_symlink():
        raise ConfigError(f"{out}: is a symbolic link; give the real folder as --out (imer does not follow links when writing)")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a sweep directory; choose another --out")
    if (out / "metrics.json").exists() or (out / "run_spec.json").exists():
        raise ConfigError(f"--out {out}: holds a single run, not a sweep; choose another --out")
    if out.is_dir() and not (out / sweepdir.MANIFEST).is_file():
        names = sorted(p.name for p in out.iterdir() if p.name != LOCK)
        if names:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise ConfigError(f"{out}: is not empty and holds no sweep (no sweep.json; it holds {shown}); a sweep writes only into an "
                              "empty or absent folder or a sweep directory of its own, choose another --out")


def check_inputs(spec: SweepSpec, out: str | Path) -> None:
    """What every cell needs, checked before anything is written: the grid, the methods, the device, ``out`` and each dataset's data.

    Each dataset is loaded once (with the first variant's data options), so a
    missing or wrong data folder ends the sweep in one error instead of
    failing every cell on its own.
    """
    if not spec.variants or not spec.datasets or not spec.rates or not spec.seeds:
        raise ConfigError("a sweep needs at least one method, dataset, missing rate and seed")
    unknown = sorted({v.method for v in spec.variants} - set(list_models()))
    if unknown:
        raise ConfigError(f"unknown method {', '.join(repr(m) for m in unknown)}; registered: {', '.join(list_models())}")
    resolve_device(spec.device, "--device")
    out = Path(out)
    check_sweep_dir(out)
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK):
        raise ConfigError(f"--out {out}: cannot write in {existing}")
    _check_settings(spec, out)
    variant = spec.variants[0]
    for dataset in spec.datasets:
        config = build_run_config(variant.method, dataset, config_file=variant.config,
                                  overrides=overrides_for(variant.method, spec.overrides) + list(variant.overrides),
                                  settings=spec.build_settings(variant))
        try:
            load_dataset(config.data.name, config.data.data_dir, **config.data.options)
        except IMERError as exc:
            raise DataError(f"{dataset}: {exc}") from None


def _data_folder(spec: SweepSpec) -> str | None:
    """The data folder the cells read, as an absolute path (``--data-dir``, else ``$IMER_DATA`` when a dataset needs one), for
    ``sweep.json`` and so for the report's "Reproduce" command (normalised: ``../data`` from ``/work/x`` is ``/work/data``, links kept)."""
    chosen = spec.data_dir or (os.environ.get("IMER_DATA") if any(needs_data_dir(d) for d in spec.datasets) else None)
    return os.path.abspath(Path(chosen).expanduser()) if chosen else None


def _prepare(spec: SweepSpec, out: Path) -> list[Cell]:
    """Load the frozen search choices of ``out`` (checked and created by :func:`run_sweep`); the search cells."""
    if spec.search is not None:
        frozen = read_search(spec, out)["datasets"]
        spec.chosen = {d: {n: list(e["overrides"]) for n, e in entries.items()} for d, entries in frozen.items()}
    return spec.search_cells()


def _stages(spec: SweepSpec, cells: list[Cell]) -> list[list[Cell]]:
    """With a search: one stage per searched variant in spec order (its trials, then the grid cells it decides), so
    finished rows appear while later variants are still searched; unsearched grid cells form a last stage."""
    if spec.search is None:
        return []
    stages: dict[str | None, list[Cell]] = {}
    for cell in cells:
        stages.setdefault(cell.variant if cell.trial is not None else spec.searched_root(cell.variant), []).append(cell)
    return [stages[key] for key in sorted(stages, key=lambda k: k is None)]


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
    if backend not in ("local", "ray"):
        raise ConfigError(f"unknown backend {backend!r}; use local or ray")
    out = Path(out)
    spec.data_dir = _data_folder(spec)
    check_inputs(spec, out)
    out.mkdir(parents=True, exist_ok=True)
    with locked(out, "sweep"):
        return _run_sweep(spec, out, workers, backend, address, progress, on_result, search_only)


def _run_sweep(spec: SweepSpec, out: Path, workers: int, backend: str, address: str | None, progress: bool,
               on_result: Callable[[dict[str, Any]], None] | None, search_only: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    search_cells = _prepare(spec, out)
    cells = search_cells + spec.cells()
    states = {c: cell_status(spec, out, c) for c in cells}
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    sweepdir.write_manifest(out, _manifest(spec, out, states, started, backend, workers))
    plain = progress and not sys.stderr.isatty()  # logs and pipes get one line per finished cell, no carriage returns
    done = sum(s == "done" for s in states.values())
    bar = tqdm(total=len(cells), initial=done, desc="sweep", unit="run", disable=not progress or plain, dynamic_ncols=True)
    restore = stop_on_sigterm()
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
                    sweepdir.append_failure(out, {**record, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
                    bar.write(f"FAILED {cell.label}: {record['error']}")
                for message in record.get("warnings", []):
                    if message not in seen_warnings:
                        seen_warnings.add(message)
                        bar.write(f"warning ({cell.label}): {message}")
                sweepdir.write_manifest(out, _manifest(spec, out, states, started, backend, workers))
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
        states = {c: (s if s == "failed" else cell_status(spec, out, c)) for c, s in states.items()}
        sweepdir.write_manifest(out, _manifest(spec, out, states, started, backend, workers))
    return sweepdir.read_manifest(out)


def cell_status(spec: SweepSpec, out: Path, cell: Cell) -> str:
    """A cell's state: its run folder's (:meth:`RunFolder.state`); ``frozen`` for an unfinished trial of a frozen search; ``waiting`` for a cell whose search is open."""
    state = RunFolder(out / cell.relpath).state(spec.conditions and cell.trial is None)
    if cell.trial is not None and state != "done" and cell.variant in spec.chosen.get(cell.dataset_id or cell.dataset, {}):
        return "frozen"
    if state != "done" and spec.waiting(cell):
        return "waiting"
    return state

