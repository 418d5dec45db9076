"""The run folder: which files a run directory holds, and the only code that writes, reads and checks them.

``imer train --out DIR`` writes one self-describing folder (see :data:`FILES`).
A run is *finished* when ``metrics.json`` exists and *interrupted* when only
``checkpoint.pt`` does; a sweep cell is ``done``, ``partial`` or ``todo``
(:meth:`RunFolder.state`). Every write is atomic (:mod:`imer.io`), so a run
killed mid-write leaves the previous version of a file or none.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imer.data.scaling import Standardizer
from imer.errors import DataError, IMERError
from imer.io import append_jsonl, atomic_write, dumps, loads, read_json, resolved, write_json
from imer.models.base import DataSpec
from imer.runfolder.predictions import write_predictions
from imer.runfolder.tensors import load_checkpoint, load_weights, save_checkpoint, save_weights

# Every file a run folder may hold; --overwrite removes them before training again.
FILES = {
    "config.json": "the complete config of the run (every default resolved)",
    "run_spec.json": "modalities, feature widths, task and classes: what `imer predict` needs besides the weights",
    "environment.json": "versions, machine, time",
    "features.json": "which extractor made each modality (when the dataset's feature origin is known)",
    "metrics.json": "test and valid metrics at the selected epoch, selection, cost, warnings",
    "history.jsonl": "one line per epoch",
    "model.safetensors": "the best weights",
    "scaler.npz": "the training-set standardisation",
    "masks.npz": "the fixed valid/test availability masks",
    "predictions_test.csv": "per-utterance test predictions",
    "checkpoint.pt": "resume state (model, optimizer, RNG)",
    "conditions.json": "test metrics under every fixed condition (`--all-conditions`, sweeps with conditions)",
    "error.json": "why a sweep cell failed",
    "cv.json": "the cross-validated choice of imer.fit(protocol='cv'): every trial's curve, the winner, the refit's settings",
}
# What `--overwrite` removes (features.json is rewritten by every run that has one; cv.json is written by imer.fit after the run).
RUN_FILES = tuple(name for name in FILES if name not in ("features.json", "cv.json"))
# A finished run that can be evaluated and predicted with.
FINISHED = ("config.json", "run_spec.json", "model.safetensors", "scaler.npz", "metrics.json")
# What a copy of a model keeps (imer.Model.save): everything but the resume and sweep state.
SAVED = ("config.json", "run_spec.json", "metrics.json", "history.jsonl", "model.safetensors", "scaler.npz", "masks.npz",
         "environment.json", "predictions_test.csv", "cv.json")

# Written first into every folder imer makes a run in: a folder without it (and without the files of an older
# imer run) that holds anything is the user's, and imer refuses to write into it.
MARKER = ".imer-run"
# Held while a process writes a run folder or a sweep directory: a second writer fails at once.
LOCK = ".imer.lock"
# Names imer itself keeps in a run folder besides FILES (TensorBoard's event files go to tensorboard/).
OWN = (MARKER, LOCK, "tensorboard")


def _started(pid: int) -> str:
    """When process ``pid`` started (clock ticks after boot, from /proc; "" where there is no /proc): a pid reused by
    another process after the holder died does not look like the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2 :].split()[19]


def _holder_alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not started or _started(pid) in ("", started)


@contextmanager
def locked(folder: str | Path, what: str = "run") -> Iterator[None]:
    """Hold ``folder/.imer.lock`` for the block; :class:`IMERError` when a live process holds it already.

    The lock records the holder's host and pid; a lock left by a process that no longer runs on this host
    (killed with SIGKILL, a crash) is stale and taken over.
    """
    path = Path(folder) / LOCK
    if path.is_symlink():
        raise IMERError(f"{path}: is a symbolic link; imer does not follow links when writing, remove it")
    mine = f"{socket.gethostname()} {os.getpid()} {_started(os.getpid())}".strip() + "\n"
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except FileExistsError:
            try:
                host, pid_text, *started = path.read_text().split()
                pid = int(pid_text)
            except (OSError, ValueError):
                host, pid, started = "", -1, []
            if host == socket.gethostname() and pid > 0 and _holder_alive(pid, "".join(started[:1])):
                raise IMERError(f"{folder}: another imer process (pid {pid}) is writing this {what} now; wait for it to end or "
                                f"choose another --out") from None
            if host and host != socket.gethostname():
                raise IMERError(f"{folder}: locked by an imer process on host {host} (pid {pid}); if it no longer runs, "
                                f"delete {path}") from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(mine)
        break
    else:
        raise IMERError(f"{folder}: cannot take the lock {path}; another process keeps taking it")
    try:
        yield
    finally:
        try:
            if path.read_text() == mine:
                path.unlink()
        except OSError:
            pass


def check_output(path: str | Path) -> None:
    """:class:`DataError` when writing a user's output (``--json``, ``--out``) to ``path`` would replace a file of an
    imer run or sweep, or when ``path`` is a folder."""
    from imer.runfolder.sweepdir import OWN_FILES

    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise DataError(f"{path}: is a folder; give the path of a file to write")
    parent = resolved(path.parent)
    if (path.name in FILES or path.name in OWN) and RunFolder(parent).is_imer():
        raise DataError(f"{path}: is a file of the imer run in {path.parent}; write to a path outside the run folder")
    if path.name in OWN_FILES and (parent / "sweep.json").is_file():
        raise DataError(f"{path}: is a file of the sweep in {path.parent}; write to a path outside the sweep directory")


class RunFolder:
    """One run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def file(self, name: str) -> Path:
        """The path of run file ``name`` (one of :data:`FILES`)."""
        if name not in FILES:
            raise KeyError(f"{name!r} is not a run-folder file; known: {', '.join(FILES)}")
        return self.path / name

    def has(self, name: str) -> bool:
        """Whether run file ``name`` exists."""
        return self.file(name).is_file()

    @property
    def finished(self) -> bool:
        """A finished run: ``metrics.json`` exists."""
        return self.has("metrics.json")

    @property
    def interrupted(self) -> bool:
        """An interrupted (or resumable) run: ``checkpoint.pt`` exists."""
        return self.has("checkpoint.pt")

    def is_imer(self) -> bool:
        """Whether the folder is an imer run: it has the marker, or (older runs) only run files with a config and run spec."""
        if (self.path / MARKER).is_file():
            return True
        try:
            names = {p.name for p in self.path.iterdir()}
        except OSError:
            return False
        return {"config.json", "run_spec.json"} <= names and names <= set(FILES) | set(OWN)

    def claim(self) -> None:
        """Check ``path`` may hold an imer run (created when absent): refused when it holds anything but an imer run.

        Symbolic links are refused, not followed: neither the folder nor a run file may be one.
        """
        if self.path.is_symlink():
            raise IMERError(f"{self.path}: is a symbolic link; give the real folder as --out (imer does not follow links when writing)")
        if self.path.exists() and not self.path.is_dir():
            raise IMERError(f"{self.path}: exists and is not a folder; choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        entries = [p for p in self.path.iterdir() if p.name != LOCK]
        links = sorted(p.name for p in entries if p.is_symlink())
        if links:
            raise IMERError(f"{self.path}: holds symbolic link(s) {links}; imer does not write through links, remove them or choose another --out")
        if entries and not self.is_imer():
            names = sorted(p.name for p in entries)
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise IMERError(f"{self.path}: is not empty and not an imer run folder (it holds {shown}); imer writes only into an "
                            "empty or absent folder or one of its own runs, choose another --out")

    def mark(self) -> None:
        """Write the marker that makes the folder an imer run (before any run file)."""
        if not (self.path / MARKER).is_file():
            with atomic_write(self.path / MARKER) as fh:
                fh.write("imer run folder\n")

    def state(self, conditions: bool = False) -> str:
        """``done`` (finished, with ``conditions.json`` when asked for), ``partial`` (a checkpoint or a model) or ``todo``."""
        if self.finished:
            return "done" if not conditions or self.has("conditions.json") else "partial"
        return "partial" if self.interrupted else "todo"

    def clear(self) -> None:
        """Remove every run file (``--overwrite``)."""
        for name in RUN_FILES:
            self.remove(name)

    # ------------------------------------------------------------------ JSON files
    def write(self, name: str, values: Any) -> None:
        """Write the JSON file ``name`` atomically."""
        write_json(self.file(name), values)

    def read(self, name: str, what: str | None = None) -> Any:
        """The content of the JSON file ``name``; :class:`DataError` naming ``what`` when it is damaged."""
        return read_json(self.file(name), what or "JSON file")

    def remove(self, name: str) -> None:
        """Delete run file ``name`` if it exists."""
        self.file(name).unlink(missing_ok=True)

    # ------------------------------------------------------------------ history
    def append_history(self, record: dict[str, Any]) -> None:
        """Append one epoch's record to ``history.jsonl``."""
        append_jsonl(self.file("history.jsonl"), record)

    def write_history(self, records: list[dict[str, Any]]) -> None:
        """Replace ``history.jsonl`` by ``records`` (atomically; a resumed run's history up to its checkpoint)."""
        with atomic_write(self.file("history.jsonl")) as fh:
            fh.write("".join(dumps(r) + "\n" for r in records))

    def clear_history(self) -> None:
        """Start ``history.jsonl`` afresh."""
        self.remove("history.jsonl")

    def history(self) -> list[dict[str, Any]]:
        """The records of ``history.jsonl`` (empty when absent)."""
        if not self.has("history.jsonl"):
            return []
        path = self.file("history.jsonl")
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read the history ({exc})") from None
        records = []
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    record = loads(line)
                except (ValueError, RecursionError):
                    record = None
                if not isinstance(record, dict):
                    raise DataError(f"{path}: line {number} is not a JSON object of one epoch; the run folder is damaged, train again")
                records.append(record)
        return records

    # ------------------------------------------------------------------ tensors and arrays
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write the resume state ``checkpoint.pt``."""
        save_checkpoint(self.file("checkpoint.pt"), state)

    def load_checkpoint(self) -> dict[str, Any]:
        """The resume state, read safely (``weights_only``)."""
        return load_checkpoint(self.file("checkpoint.pt"))

    def save_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Write the selected epoch's weights ``model.safetensors``."""
        save_weights(self.file("model.safetensors"), state_dict)

    def load_weights(self) -> dict[str, torch.Tensor]:
        """The tensors of ``model.safetensors``, checked (:class:`DataError` when damaged)."""
        return load_weights(self.file("model.safetensors"))

    def save_scaler(self, scaler: Standardizer) -> None:
        """Write the training-set standardisation ``scaler.npz``."""
        scaler.save(self.file("scaler.npz"))

    def load_scaler(self, spec: DataSpec) -> Standardizer:
        """The standardisation, checked against the run's modalities and widths."""
        return Standardizer.load(self.file("scaler.npz"), list(spec.modalities), spec.dim_of)

    def save_masks(self, masks: dict[str, np.ndarray], indices: dict[str, np.ndarray]) -> None:
        """The fixed availability masks of each split and the dataset positions they belong to."""
        with atomic_write(self.file("masks.npz"), "wb") as fh:
            np.savez(fh, **{f"{s}_available": m for s, m in masks.items()}, **{f"{s}_index": indices[s] for s in masks})

    def save_predictions(self, rows: list[dict[str, Any]]) -> None:
        """Write ``predictions_test.csv``."""
        write_predictions(self.file("predictions_test.csv"), rows)

    def copy_model(self, target: str | Path) -> None:
        """Copy the files of :data:`SAVED` that exist into ``target`` (created)."""
        copy = RunFolder(target)
        copy.claim()
        copy.mark()
        for name in SAVED:
            if self.has(name):
                shutil.copy2(self.file(name), Path(target) / name)

    # ------------------------------------------------------------------ a finished run, checked
    def check_finished(self) -> None:
        """:class:`DataError` unless the folder holds a finished run (every file evaluation and prediction need)."""
        if not self.path.is_dir():
            raise DataError(f"{self.path}: run folder not found (give the --out folder of `imer train`)")
        for name in FINISHED:
            if not self.has(name):
                raise DataError(f"{self.path}: not a finished run directory ({name} missing); train it to the end or --resume it")

    def read_config(self) -> dict[str, Any]:
        """``config.json`` as a mapping (:class:`DataError` unless it is a JSON object)."""
        raw = self.read("config.json", "run config")
        if not isinstance(raw, dict):
            raise DataError(f"{self.file('config.json')}: not a run config (expected a JSON object)")
        return raw

    def read_spec(self) -> tuple[DataSpec, list[str] | None]:
        """The run's data spec and class names from ``run_spec.json``, checked."""
        path = self.file("run_spec.json")
        info = self.read("run_spec.json", "run spec")
        def whole(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        try:
            modalities, dims, task, num_classes = info["modalities"], info["dims"], info["task"], info["num_classes"]
            class_names = info.get("class_names")
            typed = (isinstance(modalities, list) and all(isinstance(m, str) and m for m in modalities) and isinstance(dims, list)
                     and all(whole(d) for d in dims) and isinstance(task, str) and whole(num_classes)
                     and (class_names is None or isinstance(class_names, list) and all(isinstance(c, str) for c in class_names)))
        except (KeyError, TypeError):
            typed = False
        if not typed:
            raise DataError(f"{path}: lacks modalities (names), dims (whole numbers), task or num_classes (a whole number); "
                            "the run folder is damaged, train again")
        if (len(dims) != len(modalities) or len(set(modalities)) != len(modalities) or min(dims, default=0) < 1
                or task not in ("classification", "regression") or num_classes < 1):
            raise DataError(f"{path}: inconsistent modalities/dims/task/num_classes; the run folder is damaged, train again")
        if class_names is not None and task == "classification" and (len(class_names) != num_classes or len(set(class_names)) != num_classes):
            raise DataError(f"{path}: {len(class_names)} class_names ({len(set(class_names))} distinct) for {num_classes} classes; "
                            "the run folder is damaged, train again")
        return DataSpec(tuple(modalities), tuple(dims), task, num_classes), class_names

    def label_range(self) -> tuple[float, float] | None:
        """The training labels' [min, max] of a regression run (``run_spec.json``); None for runs that did not record it."""
        value = self.read("run_spec.json", "run spec").get("label_range")
        if value is None:
            return None
        if (not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                or not all(np.isfinite(value)) or value[0] > value[1]):
            raise DataError(f"{self.file('run_spec.json')}: label_range is {value!r}, not [low, high]; the run folder is damaged, train again")
        return float(value[0]), float(value[1])

    def best_epoch(self) -> int:
        """The selected epoch recorded in ``metrics.json``."""
        try:
            selection = self.read("metrics.json", "run metrics")["selection"]
            best, run = selection["best_epoch"], selection.get("epochs_run", selection.get("epochs"))
        except (KeyError, TypeError):
            raise DataError(f"{self.file('metrics.json')}: no selection.best_epoch; the run folder is damaged, train again") from None
        whole = isinstance(best, int) and not isinstance(best, bool)
        if not whole or best < 0 or (isinstance(run, int) and best >= run):
            raise DataError(f"{self.file('metrics.json')}: selection.best_epoch is {best!r}, not an epoch the run trained "
                            f"(0..{run - 1 if isinstance(run, int) else '?'}); the run folder is damaged, train again")
        return best


def finished_runs(root: str | Path) -> list[RunFolder]:
    """Every finished run folder under ``root`` (``metrics.json`` present), sorted by path."""
    return [RunFolder(path.parent) for path in sorted(Path(root).rglob("metrics.json"))]
