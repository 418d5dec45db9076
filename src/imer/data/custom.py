"""The ``custom`` on-disk format: how any dataset enters imer.

One ``.npz`` file (read with ``allow_pickle=False``, so it cannot run code):

==================  =========================================================
key                 content
==================  =========================================================
``format``          the string ``"imer-dataset-v1"``
``name``            dataset name
``task``            ``"classification"`` or ``"regression"``
``modalities``      ``[M]`` modality names, in order
``x_<modality>``    ``[N, d_m]`` float features, one key per modality
``labels``          ``[N]`` int class index or float score
``class_names``     ``[C]`` class names (classification only)
``utterance_ids``   ``[N]`` unique ids
``group_ids``       ``[N]`` dialogue/video of each utterance
``order``           ``[N]`` position inside the group
``split``           ``[N]`` train/valid/test (valid optional: carved if absent)
``fold``            ``[N]`` int fold number (instead of ``split``)
``speakers``        ``[N]`` optional speaker labels
``available``       ``[N, M]`` optional bool, False where a modality is absent
==================  =========================================================

Optional ``features_manifest``: a JSON string saying which extractor made each
modality (written by ``imer features build``, copied into every run).

Strings are stored as numpy unicode arrays. ``imer data convert`` writes
this format from any other loader.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from imer.data.dataset import MultimodalDataset
from imer.errors import DataError
from imer.io import atomic_write, dumps, read_npz

FORMAT = "imer-dataset-v1"
_REQUIRED = ("format", "name", "task", "modalities", "labels", "utterance_ids", "group_ids", "order")


def save_custom(dataset: MultimodalDataset, path: str | Path) -> Path:
    """Write ``dataset`` to ``path`` (.npz) in the custom format, atomically."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "name": np.array(dataset.name),
        "task": np.array(dataset.task),
        "modalities": np.array(dataset.modalities),
        "labels": dataset.labels,
        "utterance_ids": dataset.utterance_ids,
        "group_ids": dataset.group_ids,
        "order": dataset.order,
        "available": dataset.available,
    }
    for m, x in dataset.features.items():
        arrays[f"x_{m}"] = x
    if dataset.class_names:
        arrays["class_names"] = np.array(dataset.class_names)
    if dataset.manifest is not None:
        arrays["features_manifest"] = np.array(dumps(dataset.manifest))
    for key in ("split", "fold", "speakers"):
        value = getattr(dataset, key)
        if value is not None:
            arrays[key] = value
    with atomic_write(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


def load_custom(path: str | Path) -> MultimodalDataset:
    """Read a custom-format ``.npz``; errors name the file and the missing or bad key."""
    path = Path(path)
    data = read_npz(path, "imer dataset file")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise DataError(f"{path}: missing key(s) {missing}; see `imer data convert --help` for the format")
    if str(data["format"]) != FORMAT:
        raise DataError(f"{path}: format {str(data['format'])!r} is not {FORMAT!r}")
    for key in ("modalities", "class_names"):
        if key in data and (data[key].ndim != 1 or data[key].dtype.kind not in "US"):
            raise DataError(f"{path}: '{key}' has shape {data[key].shape} and dtype {data[key].dtype}, expected a 1-D array of names")
    for key in ("format", "name", "task"):
        if data[key].ndim != 0 or data[key].dtype.kind not in "US":
            raise DataError(f"{path}: '{key}' has shape {data[key].shape} and dtype {data[key].dtype}, expected one string")
    modalities = [str(m) for m in data["modalities"]]
    if len(set(modalities)) != len(modalities) or not all(modalities):
        raise DataError(f"{path}: 'modalities' {modalities} must be distinct, non-empty names")
    absent = [f"x_{m}" for m in modalities if f"x_{m}" not in data]
    if absent:
        raise DataError(f"{path}: feature array(s) {absent} missing for the listed modalities")
    if "split" not in data and "fold" not in data:
        raise DataError(f"{path}: needs a 'split' or a 'fold' array")
    manifest = _manifest(data, path)
    try:
        return MultimodalDataset(
            name=str(data["name"]),
            features={m: data[f"x_{m}"] for m in modalities},
            labels=data["labels"],
            task=str(data["task"]),  # type: ignore[arg-type]
            utterance_ids=data["utterance_ids"],
            group_ids=data["group_ids"],
            order=data["order"],
            split=data.get("split"),
            fold=data.get("fold"),
            speakers=data.get("speakers"),
            class_names=[str(c) for c in data["class_names"]] if "class_names" in data else None,
            available=data.get("available"),
            source=str(path),
            manifest=manifest,
        )
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: bad array ({exc})") from None


def _manifest(data: dict[str, np.ndarray], path: Path) -> dict | None:
    """The embedded feature manifest (``imer features build``), if any."""
    if "features_manifest" not in data:
        return None
    try:
        manifest = json.loads(str(data["features_manifest"]))
    except ValueError as exc:
        raise DataError(f"{path}: 'features_manifest' is not JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: 'features_manifest' is not a JSON object")
    return manifest
