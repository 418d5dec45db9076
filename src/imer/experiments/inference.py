"""Use a trained run: evaluate it under another protocol, or predict on new utterances."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imer.data import SplitBatcher, all_conditions, missing_fraction
from imer.errors import DataError
from imer.evaluation.metrics import headline_metrics
from imer.experiments.run import LoadedRun, _softmax, evaluation_protocol, load_run, prepare_data, split_mask
from imer.io import atomic_write, read_npz
from imer.training.trainer import EvalSet, predict_split


def evaluate_run(
    run_dir: str | Path,
    missing_rate: float | None = None,
    condition: str | None = None,
    data_dir: str | None = None,
    loaded: LoadedRun | None = None,
) -> dict[str, Any]:
    """Test-split metrics of a trained run under a missing rate or a fixed condition.

    Masks come from the same seeded function as in training, so evaluating at
    the training rate reproduces the run's own test numbers exactly.
    """
    loaded = loaded or load_run(run_dir)
    config = loaded.config
    if data_dir:
        config.data.data_dir = data_dir
    data = prepare_data(config, scaler=loaded.scaler)
    protocol = evaluation_protocol(config, data.dataset.modalities, missing_rate, condition)
    mask = split_mask(config, data, "test", protocol)
    acc = predict_split(loaded.model, EvalSet(data.batchers["test"], mask), config.train.batch_size, torch.device("cpu"))
    return {"protocol": protocol.name, "missing_fraction": missing_fraction(mask), "test": acc.compute()}


def evaluate_conditions(run_dir: str | Path, data_dir: str | None = None) -> dict[str, Any]:
    """Metrics under every fixed condition ({a}, {t}, ..., full) and their average."""
    loaded = load_run(run_dir)
    modalities = list(loaded.spec.modalities)
    results = {c.label: evaluate_run(run_dir, condition=c.label, data_dir=data_dir, loaded=loaded)["test"] for c in all_conditions(modalities)}
    keys = [k for k in headline_metrics(loaded.spec.task)]
    average = {k: float(np.mean([r[k] for r in results.values()])) for k in keys}
    return {"conditions": results, "average": average}


def read_prediction_input(path: str | Path, modalities: list[str], dims: dict[str, int]) -> dict[str, Any]:
    """Read the ``imer predict`` input ``.npz``; see :func:`predict` for the format."""
    path = Path(path)
    data = read_npz(path, "prediction input file")
    present = [m for m in modalities if f"x_{m}" in data]
    unknown = sorted(k for k in data if k.startswith("x_") and k[2:] not in modalities)
    if unknown:
        raise DataError(f"{path}: unknown modality array(s) {unknown}; the model knows {modalities}")
    if not present:
        raise DataError(f"{path}: no feature array; expected keys like {[f'x_{m}' for m in modalities]}")
    n = data[f"x_{present[0]}"].shape[0]
    features, available = {}, np.zeros((n, len(modalities)), dtype=bool)
    for j, m in enumerate(modalities):
        x = data.get(f"x_{m}")
        if x is None:
            features[m] = np.zeros((n, dims[m]), dtype=np.float32)
            continue
        if x.ndim != 2 or x.shape != (n, dims[m]):
            raise DataError(f"{path}: 'x_{m}' has shape {x.shape}, expected ({n}, {dims[m]})")
        x = x.astype(np.float32)
        available[:, j] = np.isfinite(x).all(axis=1)
        features[m] = x
    if "available" in data:
        given = np.asarray(data["available"], dtype=bool)
        if given.shape != (n, len(modalities)):
            raise DataError(f"{path}: 'available' has shape {given.shape}, expected ({n}, {len(modalities)}) in order {modalities}")
        bad = given & ~available
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise DataError(f"{path}: utterance {i} is marked available for '{modalities[j]}' but has NaN/Inf or no features")
        available = given
    empty = ~available.any(axis=1)
    if empty.any():
        raise DataError(f"{path}: utterance {int(np.flatnonzero(empty)[0])} has no modality at all")
    ids = data.get("utterance_ids", np.array([str(i) for i in range(n)])).astype(str)
    return {
        "features": features,
        "available": available,
        "utterance_ids": ids,
        "group_ids": data.get("group_ids"),
        "order": data.get("order"),
        "speakers": data.get("speakers"),
    }


def predict(run_dir: str | Path, input_path: str | Path, out_path: str | Path | None = None) -> list[dict[str, Any]]:
    """Predict new utterances with a trained run.

    Input ``.npz``: ``x_<modality>`` ``[N, d_m]`` float arrays (a modality may
    be left out entirely, or given as NaN rows where absent); optional
    ``available`` ``[N, M]`` bool in the model's modality order; optional
    ``utterance_ids``; for dialogue-context methods optional ``group_ids``,
    ``order`` and ``speakers`` (without them each utterance is its own
    dialogue). Output (``.csv`` or ``.json``, by extension): one row per
    utterance with the predicted class and class probabilities, or the score.
    """
    loaded = load_run(run_dir)
    spec = loaded.spec
    given = read_prediction_input(input_path, list(spec.modalities), spec.dim_of)
    rows = predict_given(loaded, given)
    if out_path is not None:
        _write_rows(Path(out_path), rows)
    return rows


def predict_given(loaded: LoadedRun, given: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of predictions for input already read (the dict :func:`read_prediction_input` returns)."""
    spec = loaded.spec
    scaled = loaded.scaler.transform(given["features"], given["available"])
    n = len(given["utterance_ids"])
    context = loaded.model.uses_context and given["group_ids"] is not None
    batcher = SplitBatcher(
        scaled,
        np.zeros(n, dtype=np.int64 if spec.task == "classification" else np.float32),
        given["group_ids"] if context else None,
        given["order"] if context else None,
        given["speakers"] if context else None,
    )
    acc = predict_split(loaded.model, EvalSet(batcher, given["available"]), loaded.config.train.batch_size, torch.device("cpu"))
    index, _, preds, _ = acc.ordered()
    rows = []
    for k, i in enumerate(index):
        row: dict[str, Any] = {"utterance_id": str(given["utterance_ids"][i])}
        if spec.task == "classification":
            probs = _softmax(preds[k])
            names = loaded.class_names or [str(c) for c in range(spec.num_classes)]
            row["prediction"] = names[int(probs.argmax())]
            row.update({f"p_{c}": float(p) for c, p in zip(names, probs)})
        else:
            row["score"] = float(preds[k])
        rows.append(row)
    return rows


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    if path.suffix == ".json":
        with atomic_write(path) as fh:
            json.dump(rows, fh, indent=2)
        return
    with atomic_write(path) as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["utterance_id"])
        writer.writeheader()
        writer.writerows(rows)
