"""Fit and predict in memory, over the same trainer and run-folder format as ``imer train``.

::

    ds = imer.Dataset.from_arrays({"audio": xa, "text": xt}, labels, group_ids=dialogues)
    model = imer.fit("comp", ds, missing_rate=0.3, epochs=20)
    model.predict({"audio": xa_new, "text": xt_new})     # NaN rows = modality absent
    model.save("runs/my-comp")                           # a normal run folder
    model = imer.load("runs/my-comp")

:func:`fit` trains into a temporary run folder (removed when the model is
garbage-collected, unless ``out`` is given); :meth:`Model.save` copies it
without the resume checkpoint. The folder records that its data came from
memory (name, size and fingerprint in ``run_spec.json``), so
:meth:`Model.evaluate` / :func:`imer.evaluate` later ask for the same dataset.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from imer.config import build_run_config
from imer.data import MultimodalDataset
from imer.errors import DataError, IMERError
from imer.experiments.crossval import REFIT_OVERRIDES, cross_validate
from imer.experiments.inference import check_prediction_input, evaluate_run, predict_given
from imer.experiments.loading import load_run
from imer.experiments.run import train
from imer.runfolder import RunFolder


class Model:
    """A trained run, usable from Python: ``predict``, ``predict_proba``, ``evaluate``, ``save``."""

    def __init__(self, run_dir: str | Path, _temporary: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self._loaded = load_run(self.run_dir)
        if _temporary:
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.run_dir), True)

    @property
    def method(self) -> str:
        return self._loaded.config.method

    @property
    def task(self) -> str:
        return self._loaded.spec.task

    @property
    def modalities(self) -> list[str]:
        return list(self._loaded.spec.modalities)

    @property
    def metrics(self) -> dict[str, Any]:
        """``metrics.json`` of the run (valid/test metrics at the selected epoch, ...)."""
        return RunFolder(self.run_dir).read("metrics.json")

    def _rows(self, features: dict[str, np.ndarray] | MultimodalDataset, available: np.ndarray | None, group_ids: np.ndarray | None) -> list[dict[str, Any]]:
        if isinstance(features, MultimodalDataset):
            ds = features
            arrays: dict[str, Any] = {f"x_{m}": x for m, x in ds.features.items()}
            arrays.update(available=ds.available, group_ids=ds.group_ids, order=ds.order, utterance_ids=ds.utterance_ids)
            if ds.speakers is not None:
                arrays["speakers"] = ds.speakers
        else:
            if not isinstance(features, Mapping):
                raise DataError(f"predict: features must be a dict modality -> array [N, d] (modalities {list(self._loaded.spec.modalities)}) "
                                f"or a MultimodalDataset, got {type(features).__name__}")
            arrays = {f"x_{m}": np.asarray(x) for m, x in features.items()}
            if available is not None:
                arrays["available"] = np.asarray(available, dtype=bool)
            if group_ids is not None:
                arrays["group_ids"] = np.asarray(group_ids)
                arrays["order"] = _positions(np.asarray(group_ids).astype(str))
        spec = self._loaded.spec
        rows = predict_given(self._loaded, check_prediction_input(arrays, "predict input", list(spec.modalities), spec.dim_of))
        position = {r["utterance_id"]: r for r in rows}
        n = len(next(iter(arrays.values())))
        ids = arrays.get("utterance_ids", np.arange(n).astype(str))
        return [position[str(i)] for i in ids]

    def predict(self, features: dict[str, np.ndarray] | MultimodalDataset, available: np.ndarray | None = None,
                group_ids: np.ndarray | None = None) -> np.ndarray:
        """Class names (classification) or scores (regression), one per row, in input order.

        ``features``: modality -> ``[N, d]`` (a modality may be left out, or hold
        NaN rows where absent), or a dataset. Dialogue methods use ``group_ids``
        (rows of a group in order); without them each row is its own dialogue.
        """
        rows = self._rows(features, available, group_ids)
        key = "prediction" if self.task == "classification" else "score"
        return np.array([r[key] for r in rows])

    def predict_proba(self, features: dict[str, np.ndarray] | MultimodalDataset, available: np.ndarray | None = None,
                      group_ids: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities ``[N, C]`` (classification only), columns in ``class_names`` order."""
        if self.task != "classification":
            raise IMERError(f"{self.run_dir}: predict_proba is for classification; this model predicts scores")
        rows = self._rows(features, available, group_ids)
        names = [k for k in rows[0] if k.startswith("p_")] if rows else []
        return np.array([[r[k] for k in names] for r in rows])

    def score(self, features: dict[str, np.ndarray] | MultimodalDataset, labels: np.ndarray | None = None,
              available: np.ndarray | None = None, group_ids: np.ndarray | None = None) -> float:
        """scikit-learn's ``score``: accuracy (classification) or R² (regression) of the predictions against ``labels``.

        ``features`` as for :meth:`predict`; a dataset brings its own labels
        (all its rows). Class labels may
        be the class names or their indices.
        """
        from sklearn.metrics import accuracy_score, r2_score

        if isinstance(features, MultimodalDataset):
            labels = features.labels if labels is None else labels
        if labels is None:
            raise IMERError("score: give the labels of the rows (or a dataset, which holds them)")
        predicted = self.predict(features, available, group_ids)
        labels = np.asarray(labels)
        if len(labels) != len(predicted):
            raise IMERError(f"score: {len(labels)} labels for {len(predicted)} rows")
        if self.task == "regression":
            return float(r2_score(labels.astype(float), predicted.astype(float)))
        names = self._loaded.class_names
        if np.issubdtype(labels.dtype, np.integer) and names is not None:
            labels = np.asarray(names)[labels]
        return float(accuracy_score(labels.astype(str), predicted.astype(str)))

    def evaluate(self, dataset: MultimodalDataset | None = None, missing_rate: float | None = None, condition: str | None = None) -> dict[str, Any]:
        """Test metrics under a missing rate or a fixed condition (in-memory runs need their ``dataset``)."""
        return evaluate_run(self.run_dir, missing_rate=missing_rate, condition=condition, loaded=self._loaded, dataset=dataset)

    def save(self, path: str | Path) -> Path:
        """Copy the run folder (without the resume checkpoint) to ``path``; load it again with :func:`load`."""
        path = Path(path)
        if path.resolve() == self.run_dir.resolve():
            return path
        if RunFolder(path).finished:
            raise IMERError(f"{path}: already holds a run; choose another folder")
        RunFolder(self.run_dir).copy_model(path)
        return path

    def __repr__(self) -> str:
        return f"Model(method={self.method!r}, task={self.task!r}, modalities={self.modalities}, run_dir={str(self.run_dir)!r})"


def _positions(groups: np.ndarray) -> np.ndarray:
    order = np.zeros(len(groups), dtype=np.int64)
    for g in np.unique(groups):
        where = groups == g
        order[where] = np.arange(int(where.sum()))
    return order


def fit(
    method: str,
    dataset: MultimodalDataset,
    missing_rate: float = 0.0,
    *,
    epochs: int | None = None,
    seed: int = 0,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    progress: bool = False,
    protocol: str = "valid",
    folds: int = 5,
    search: dict[str, list[Any]] | None = None,
    **options: Any,
) -> Model:
    """Train ``method`` on an in-memory dataset; returns the fitted :class:`Model`.

    ``options`` are config fields by bare name (``hidden=64``,
    ``stage_epoch=5``, ``lr=1e-4``), like ``--set``; ``overrides`` takes
    ``section.field=value`` strings. ``out`` keeps the run folder there.
    ``protocol="cv"`` (docs/protocol.md) chooses the settings of ``search``
    (``{"lr": [1e-4, 1e-3]}``) and the epoch budget (up to ``epochs``) by
    ``folds``-fold cross-validation over the development groups, then refits
    on all of them; the choice is saved as ``cv.json`` in the run folder.
    """
    if not isinstance(dataset, MultimodalDataset):
        raise DataError(f"dataset: imer.fit takes a MultimodalDataset, got {type(dataset).__name__}; load a file with "
                        "imer.data.load_dataset(path) or build one with MultimodalDataset.from_arrays(features, labels)")
    if protocol not in ("valid", "cv"):
        raise IMERError(f"protocol: choose 'valid' (selection on the validation part) or 'cv' (cross-validation), got {protocol!r}")
    extra = [f"{k}={json.dumps(v)}" for k, v in options.items()]
    settings = list(overrides or []) + extra
    choice = None
    if protocol == "cv":
        choice = cross_validate(method, dataset, missing_rate, folds=folds, grid=search, seed=seed, epochs=epochs, overrides=settings,
                                progress=progress)
        settings += [*REFIT_OVERRIDES, *choice["overrides"]]
    elif search:
        raise IMERError("search: a search grid is chosen by protocol='cv' (with protocol='valid' pass the settings themselves)")
    config = build_run_config(method, dataset.name, overrides=settings, in_memory=True,
                              settings={"seed": seed, "missing.rate": missing_rate, "train.epochs": None if choice else epochs,
                                        "train.progress": progress})
    temporary = out is None
    run_dir = Path(tempfile.mkdtemp(prefix="imer-fit-")) if temporary else Path(out)
    train(config, run_dir, dataset=dataset)
    if choice is not None:
        RunFolder(run_dir).write("cv.json", choice)
    return Model(run_dir, _temporary=temporary)


def load(path: str | Path) -> Model:
    """A run folder (from :meth:`Model.save`, ``imer train`` or a sweep) as a :class:`Model`."""
    return Model(path)
