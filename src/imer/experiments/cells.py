"""Running cells: one cell (train or resume, then fixed conditions) and the local and Ray executors.

A failing cell never stops a sweep: its error goes into the cell's
``error.json`` and the returned record. Cells run in worker processes
(``spawn``, one torch thread each by default) or as Ray tasks.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Iterable, Iterator
from multiprocessing import connection
from dataclasses import asdict
from pathlib import Path
from typing import Any

from imer.config import build_run_config
from imer.errors import ConfigError, IMERError, Interrupted
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
            if not run_dir.exists() or folder.is_imer() or not any(run_dir.iterdir()):  # never into a folder that is not imer's
                run_dir.mkdir(parents=True, exist_ok=True)
                folder.mark()
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
    """Run ``cells`` in ``workers`` spawned processes, one fresh process per cell (in this process when ``workers`` <= 1).

    The processes are plain ``multiprocessing`` processes, each sending its record through its own pipe: no executor
    threads that could wait forever at interpreter exit for workers that died. On interruption (Ctrl-C, SIGTERM, the
    consumer closing this generator) every running worker is terminated and joined before the exception goes on; their
    cells resume from their checkpoints next time. A worker ended by SIGTERM or SIGINT stops the sweep the same way.
    """
    if workers <= 1:
        for cell in cells:
            yield run_cell(spec, cell, out)
        return
    context = multiprocessing.get_context("spawn")
    queue = list(cells)
    running: dict[Any, tuple[Any, Any, Cell]] = {}  # receiving end of the pipe -> (process, pipe, cell)
    try:
        while queue or running:
            while queue and len(running) < workers:
                cell = queue.pop(0)
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_worker, args=(spec, cell, str(out), spec.threads, send), name=f"imer-cell-{cell.label}")
                mask = _block(STOP_SIGNALS)  # a stop signal arriving during start() waits until the worker is known and can be stopped
                try:
                    process.start()
                    running[receive] = (process, receive, cell)
                finally:
                    send.close()
                    _block(mask, signal.SIG_SETMASK)
            ready = connection.wait(list(running) + [p.sentinel for p, _, _ in running.values()])
            for key in [k for k, (p, _, _) in running.items() if k in ready or p.sentinel in ready]:
                process, receive, cell = running[key]
                record = None
                if receive.poll():
                    try:
                        record = receive.recv()
                    except (EOFError, OSError):
                        record = None
                elif process.is_alive():
                    continue
                del running[key]
                receive.close()
                process.join(timeout=60)
                if record is None:
                    if process.exitcode in (-signal.SIGTERM, -signal.SIGINT):
                        raise Interrupted(-process.exitcode)  # the worker was stopped like the sweep: stop the sweep
                    record = _crashed(cell, f"worker process failed (exit code {process.exitcode})")
                yield record
    finally:
        _stop(process for process, _, _ in running.values())


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _block(signals: Iterable[int], how: int = signal.SIG_BLOCK) -> set[int]:
    """Change this thread's signal mask (``pthread_sigmask``) where the platform has one; returns the previous mask."""
    return set(signal.pthread_sigmask(how, signals)) if hasattr(signal, "pthread_sigmask") else set()


def _stop(processes: Iterable[Any]) -> None:
    """Terminate worker processes, then kill those still running after a few seconds; none is left behind."""
    processes = list(processes)
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + 5
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _worker(spec: SweepSpec, cell: Cell, out: str, threads: int, send: Any) -> None:
    """A worker process: one cell, its record sent to the parent. SIGINT is the parent's to handle (it stops the workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _block(STOP_SIGNALS, signal.SIG_UNBLOCK)  # blocked by the parent while it started this process; a pending SIGTERM ends it here
    _end_with_parent(multiprocessing.parent_process())
    _init_worker(threads)
    record = run_cell(spec, cell, out)
    send.send(record)
    send.close()


def _end_with_parent(parent: Any) -> None:
    """End this worker (as SIGTERM would: its cell resumes from its checkpoint) once the sweep that started it is gone.

    A parent killed with SIGKILL cannot stop its workers; without this they would train on, unseen, and a rerun of the
    sweep would find their cells busy. A daemon thread waits on the parent's sentinel, so nothing in training changes.
    """
    def watch() -> None:
        parent.join()
        os.kill(os.getpid(), signal.SIGTERM)

    if parent is not None:
        threading.Thread(target=watch, name="imer-parent-watch", daemon=True).start()


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
