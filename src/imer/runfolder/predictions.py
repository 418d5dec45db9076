"""Per-utterance prediction rows and their one writer (``predictions_test.csv``, ``imer predict``)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from imer.io import atomic_write, write_json


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def prediction_rows(
    task: str,
    preds: np.ndarray,
    utterance_ids: np.ndarray,
    modalities: list[str],
    available: np.ndarray,
    class_names: list[str] | None = None,
    labels: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One dict per utterance: id, [label], prediction with class probabilities (or the score), ``has_<modality>``.

    ``preds`` are logits ``[N, C]`` (classification) or scores ``[N]``;
    ``available`` ``[N, M]`` says which modalities each prediction used.
    """
    rows = []
    if task == "classification":
        probs = softmax(np.asarray(preds, dtype=np.float64))
        names = class_names or [str(c) for c in range(probs.shape[-1])]
    for i, uid in enumerate(utterance_ids):
        row: dict[str, Any] = {"utterance_id": str(uid)}
        if task == "classification":
            if labels is not None:
                row["label"] = names[int(labels[i])]
            row["prediction"] = names[int(probs[i].argmax())]
            row.update({f"p_{c}": float(p) for c, p in zip(names, probs[i])})
        else:
            if labels is not None:
                row["label"] = float(labels[i])
            row["score"] = float(preds[i])
        row.update({f"has_{m}": int(available[i, j]) for j, m in enumerate(modalities)})
        rows.append(row)
    return rows


def write_predictions(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as CSV, or as JSON when ``path`` ends in ``.json`` (atomically)."""
    path = Path(path)
    if path.suffix == ".json":
        write_json(path, rows)
        return path
    with atomic_write(path) as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["utterance_id"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path
