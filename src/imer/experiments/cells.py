"""Running cells: one cell (train or resume, then fixed conditions) and the local and Ray executors.

A failing cell never stops a sweep: its error goes into the cell's
``error.json`` and the returned record. Cells run in worker processes
(``spawn``, one torch thread each by default) or as Ray tasks.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Any

from imer.config import build_run_config
from imer.errors import ConfigError, IMERError
from imer.experiments.grid import Cell, SweepSpec
from imer.experiments.inference import evaluate_conditions
from imer.experiments.run import train
from imer.runfolder import RunFolder


def run_cell(spec: SweepSpec, cell: Cell, out: str | Path) -> dict[str, Any]:
    """Train (or resume) one cell and optionally evaluate its fixed conditions.

    Never raises for a failing cell: the error and traceback go into
    ``error.json`` in the run directory and into the returned record, so one
    bad cell cannot stop a sweep.
    """
    run_dir = Path(out) / cell.relpath
    folder = RunFolder(run_dir)
    t0 = time.perf_counter()
    record: dict[str, Any] = {"cell": asdict(cell), "path": str(cell.relpath), "pid": os.getpid()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if not folder.finished:
                variant = spec.variant(cell.variant)
                config = build_run_config(
                    cell.method,
                    cell.dataset,
                    config_file=variant.config,
                    overrides=spec.run_overrides(cell),
                    settings={**spec.build_settings(variant), "seed": cell.seed, "data.fold": cell.fold, "missing.rate": cell.rate,
                              "train.progress": False},
                )
                if spec.log_to:
                    config.train.log_to = spec.log_to
                resumed = folder.interrupted
                record["resumed"] = resumed
                train(config, run_dir, resume=resumed, variant=cell.variant if cell.trial is None else f"{cell.variant}@trial{cell.trial}")
            if spec.conditions and cell.trial is None and not folder.has("conditions.json"):
                folder.write("conditions.json", evaluate_conditions(run_dir, data_dir=spec.data_dir, device=spec.device))
            folder.remove("error.json")
            record["status"] = "ok"
        except Exception as exc:  # a failing cell is data for the report, not a reason to stop
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}", user_error=isinstance(exc, IMERError), traceback=traceback.format_exc())
            run_dir.mkdir(parents=True, exist_ok=True)
            folder.write("error.json", record)
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
