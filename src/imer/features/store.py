"""One modality's extracted features on disk, and the resumable, parallel loop that fills it.

A modality feature file (``.npz``, no pickle inside) holds, per utterance:
``ids``, ``x`` ``[N, d]`` (NaN rows where extraction failed), ``reasons``
(``""`` where it worked, else why the modality is missing), ``groups``
(dialogue, ``""`` where unknown), plus ``modality`` and ``entry`` (the
manifest entry as JSON: extractor, version, settings, dim). ``imer features
build`` joins such files into a dataset.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imer.errors import DataError
from imer.io import atomic_write, dumps, read_npz

FORMAT = "imer-modality-features-v1"
SAVE_EVERY_S = 20.0


@dataclass
class Result:
    """What an extractor made of one utterance: a vector, or the reason it has none."""

    utterance_id: str
    vector: np.ndarray | None
    reason: str = ""
    group: str = ""


@dataclass
class ModalityFeatures:
    """Per-utterance vectors of one modality plus the manifest entry of the extractor that made them."""

    modality: str
    entry: dict[str, Any]
    ids: list[str]
    x: np.ndarray
    reasons: list[str]
    groups: list[str]

    @property
    def ok(self) -> np.ndarray:
        return np.array([r == "" for r in self.reasons], dtype=bool)

    def save(self, path: str | Path) -> None:
        """Write atomically (an interrupted save keeps the previous file)."""
        with atomic_write(path, "wb") as fh:
            np.savez_compressed(
                fh,
                format=np.array(FORMAT),
                modality=np.array(self.modality),
                entry=np.array(dumps(self.entry)),
                ids=np.array(self.ids, dtype=str),
                x=self.x.astype(np.float32),
                reasons=np.array(self.reasons, dtype=str),
                groups=np.array(self.groups, dtype=str),
            )

    @classmethod
    def load(cls, path: str | Path) -> "ModalityFeatures":
        path = Path(path)
        data = read_npz(path, "modality feature file (made by `imer features text|audio|video`)")
        missing = [k for k in ("format", "modality", "entry", "ids", "x", "reasons", "groups") if k not in data]
        if missing or str(data.get("format", "")) != FORMAT:
            raise DataError(f"{path}: not a modality feature file made by `imer features text|audio|video` (missing {missing or ['format']})")
        n = len(data["ids"])
        if data["x"].ndim != 2 or data["x"].shape[0] != n or len(data["reasons"]) != n or len(data["groups"]) != n:
            raise DataError(f"{path}: arrays disagree in length (ids {n}, x {data['x'].shape})")
        return cls(
            modality=str(data["modality"]),
            entry=json.loads(str(data["entry"])),
            ids=[str(i) for i in data["ids"]],
            x=data["x"].astype(np.float32),
            reasons=[str(r) for r in data["reasons"]],
            groups=[str(g) for g in data["groups"]],
        )

    @classmethod
    def from_results(cls, modality: str, entry: dict[str, Any], results: Iterable[Result]) -> "ModalityFeatures":
        results = list(results)
        dim = int(entry["dim"])
        x = np.full((len(results), dim), np.nan, dtype=np.float32)
        for i, r in enumerate(results):
            if r.vector is not None:
                x[i] = r.vector
        return cls(modality, entry, [r.utterance_id for r in results], x, [r.reason for r in results], [r.group for r in results])

    def results(self) -> Iterator[Result]:
        for i, uid in enumerate(self.ids):
            yield Result(uid, self.x[i] if self.reasons[i] == "" else None, self.reasons[i], self.groups[i])


def same_settings(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two manifest entries describe the same extraction (versions may differ)."""
    keys = ("extractor", "model", "settings", "dim")
    return all(a.get(k) == b.get(k) for k in keys)


def check_result(r: Result, dim: int) -> Result:
    """Turn a wrong-sized or non-finite vector into a missing entry with its reason."""
    if r.vector is None:
        return r
    v = np.asarray(r.vector, dtype=np.float32).reshape(-1)
    if v.shape[0] != dim:
        return Result(r.utterance_id, None, f"extractor returned {v.shape[0]} values, expected {dim}", r.group)
    if not np.isfinite(v).all():
        return Result(r.utterance_id, None, "extractor returned NaN/Inf (input too short or silent?)", r.group)
    return Result(r.utterance_id, v, "", r.group)


_WORKER: dict[str, Any] = {}


def _init_worker(make: Callable[[], Any]) -> None:
    _WORKER["extractor"] = make()


def _run_unit(unit: Any) -> list[Result]:
    return _WORKER["extractor"].extract_unit(unit)


def run_extraction(
    modality: str,
    make_extractor: Callable[[], Any],
    units: list[Any],
    unit_ids: Callable[[Any], list[str]],
    out: str | Path,
    workers: int = 1,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ModalityFeatures:
    """Extract every unit (a file, or a batch of transcripts) into ``out``, resumably.

    Utterances already extracted with the same settings in an existing ``out``
    are skipped (failed ones are tried again: the input may have been fixed);
    the file is saved every few seconds, so an interrupted run loses little.
    ``workers`` > 1 spreads units over processes, each building its own
    extractor once. ``make_extractor`` must be picklable for that.
    """
    out = Path(out)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    extractor = make_extractor()
    entry = extractor.entry()
    done: dict[str, Result] = {}
    if out.exists():
        previous = ModalityFeatures.load(out)
        if previous.modality != modality or not same_settings(previous.entry, entry):
            raise DataError(f"{out}: holds {previous.modality} features made with other settings ({previous.entry.get('extractor')}, "
                            f"{previous.entry.get('settings')}); choose another --out or delete it")
        done = {r.utterance_id: r for r in previous.results() if r.reason == ""}
    order: list[str] = []
    for unit in units:
        order.extend(unit_ids(unit))
    if len(order) != len(set(order)):
        seen: set[str] = set()
        dup = sorted({i for i in order if i in seen or seen.add(i)})
        raise DataError(f"utterance id(s) given twice: {dup[:5]}")
    done = {i: done[i] for i in order if i in done}
    todo = [u for u in units if not all(i in done for i in unit_ids(u))]
    if done:
        log(f"{out}: {len(done)} utterance(s) already extracted, {sum(len(unit_ids(u)) for u in todo)} to go")
    results: dict[str, Result] = dict(done)
    last_save = time.monotonic()

    def save() -> ModalityFeatures:
        feats = ModalityFeatures.from_results(modality, entry, [results[i] for i in order if i in results])
        feats.save(out)
        return feats

    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"{modality} features", unit="file" if modality != "text" else "batch", disable=not progress or len(todo) < 2, file=sys.stderr)
    dim = int(entry["dim"])
    try:
        for batch in _map_units(extractor, make_extractor, todo, workers):
            for r in batch:
                results[r.utterance_id] = check_result(r, dim)
            bar.update(1)
            if time.monotonic() - last_save > SAVE_EVERY_S:
                save()
                last_save = time.monotonic()
    finally:
        bar.close()
    feats = save()
    failed = [(i, r) for i, r in zip(feats.ids, feats.reasons) if r]
    if failed:
        shown = "; ".join(f"{i}: {r}" for i, r in failed[:5])
        log(f"{modality}: {len(failed)} of {len(feats.ids)} utterance(s) missing ({shown}{'; ...' if len(failed) > 5 else ''}); reasons are kept in {out}")
    return feats


def _map_units(extractor: Any, make_extractor: Callable[[], Any], units: list[Any], workers: int) -> Iterator[list[Result]]:
    if workers <= 1 or len(units) < 2:
        for unit in units:
            yield extractor.extract_unit(unit)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a parent that may hold torch threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(make_extractor,)) as pool:
        yield from pool.map(_run_unit, units)
