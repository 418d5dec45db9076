"""Use a trained run: evaluate it under another protocol, or predict on new utterances."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from imer.data import MultimodalDataset, SplitBatcher, all_conditions, load_dataset, missing_fraction
from imer.errors import DataError, IMERError
from imer.evaluation.metrics import headline_metrics
from imer.experiments.loading import LoadedRun, dataset_fingerprint, load_run
from imer.experiments.run import evaluation_protocol, prepare_data, split_mask
from imer.io import read_npz
from imer.runfolder import RunFolder
from imer.runfolder.folder import check_output

# Inputs are compared with the training data feature by feature (z = (x - mean) / std of the training split):
# rows with some |z| above Z_WARN get one warning naming them (on CMU-MOSI test data, 0 of 752 rows; at 10 it would be 15); above Z_REFUSE they are refused (float32 overflows soon after).
Z_WARN = 20.0
Z_REFUSE = 1e6
from imer.runfolder.predictions import prediction_rows, write_predictions
from imer.training.trainer import EvalSet, predict_split


def evaluate_run(
    run_dir: str | Path,
    missing_rate: float | None = None,
    condition: str | None = None,
    data_dir: str | None = None,
    loaded: LoadedRun | None = None,
    dataset: str | Path | MultimodalDataset | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Test-split metrics of a trained run under a missing rate or a fixed condition.

    Masks come from the same seeded function as in training, so evaluating at
    the training rate reproduces the run's own test numbers exactly.
    ``data_dir`` / ``dataset`` (a custom ``.npz`` path) point to the data if it
    moved since training; it must have the run's modalities and widths. A run
    trained on an in-memory dataset needs that dataset again (``dataset``, the
    object or a saved ``.npz``); its fingerprint in ``run_spec.json`` is checked.
    ``device``: where the model runs (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto``).
    """
    loaded = loaded or load_run(run_dir, device)
    config = loaded.config
    if data_dir:
        config.data.data_dir = str(Path(data_dir).expanduser().resolve())
    in_memory = _checked_dataset(Path(run_dir), dataset)
    if dataset is not None and in_memory is None:
        config.data.name = str(Path(dataset).expanduser().resolve())
    data = prepare_data(config, dataset=in_memory, scaler=loaded.scaler)
    if data.spec.modalities != loaded.spec.modalities or data.spec.dims != loaded.spec.dims:
        raise DataError(
            f"{data.dataset.source or data.dataset.name}: modalities {dict(zip(data.spec.modalities, data.spec.dims))} differ from the run's "
            f"{loaded.spec.dim_of}; point --data-dir/--dataset to the data the run was trained on"
        )
    protocol = evaluation_protocol(config, data.dataset.modalities, missing_rate, condition)
    mask = split_mask(config, data, "test", protocol)
    acc = predict_split(loaded.model, EvalSet(data.batchers["test"], mask), config.train.batch_size, loaded.device)
    return {"protocol": protocol.name, "missing_fraction": missing_fraction(mask), "test": acc.compute()}


def _checked_dataset(run_dir: Path, dataset: str | Path | MultimodalDataset | None) -> MultimodalDataset | None:
    """The in-memory dataset a run needs, checked against its recorded fingerprint (None for runs on named datasets)."""
    folder = RunFolder(run_dir)
    needed = folder.read("run_spec.json", "run spec").get("in_memory_data") if folder.has("run_spec.json") else None
    if needed is None:
        if isinstance(dataset, MultimodalDataset):
            raise IMERError(f"{run_dir}: was trained on a registered dataset or a dataset file, not on in-memory data; pass its path (or nothing)")
        return None
    if dataset is None:
        raise IMERError(f"{run_dir}: was trained on in-memory data '{needed['name']}' ({needed['utterances']} utterances, "
                        f"fingerprint {needed['fingerprint']}); pass the same dataset: imer.evaluate(run_dir, dataset=ds)")
    if not isinstance(dataset, MultimodalDataset):
        dataset = load_dataset(str(Path(dataset).expanduser()))
    if dataset_fingerprint(dataset) != needed["fingerprint"]:
        raise IMERError(f"{run_dir}: the dataset given is not the one the run was trained on (fingerprint "
                        f"{dataset_fingerprint(dataset)}, expected {needed['fingerprint']})")
    return dataset


def evaluate_conditions(run_dir: str | Path, data_dir: str | None = None, dataset: str | Path | MultimodalDataset | None = None,
                        device: str = "cpu") -> dict[str, Any]:
    """Metrics under every fixed condition ({a}, {t}, ..., full) and their average (the model on ``device``)."""
    loaded = load_run(run_dir, device)
    modalities = list(loaded.spec.modalities)
    results = {c.label: evaluate_run(run_dir, condition=c.label, data_dir=data_dir, loaded=loaded, dataset=dataset)["test"]
               for c in all_conditions(modalities)}
    keys = [k for k in headline_metrics(loaded.spec.task)]
    average = {k: float(np.mean([r[k] for r in results.values()])) for k in keys}
    return {"conditions": results, "average": average}


def _rows_text(rows: np.ndarray, ids: np.ndarray | None = None) -> str:
    """``rows 3, 7, 12 (+4 more)``: the first few rows (or their ids) of a problem."""
    shown = [str(ids[r]) if ids is not None else str(r) for r in rows[:5]]
    more = f" (+{len(rows) - 5} more)" if len(rows) > 5 else ""
    return ("row" if len(rows) == 1 else "rows") + " " + ", ".join(shown) + more


_INPUT_KEYS = {"available", "utterance_ids", "group_ids", "order", "speakers"}
_TABLE_KEYS = {"utterance_id": "utterance_ids", "group_id": "group_ids", "order": "order", "speaker": "speakers"}


def read_prediction_table(path: Path, modalities: list[str]) -> dict[str, np.ndarray]:
    """A ``.csv`` prediction input as the arrays of the ``.npz`` format.

    One row per utterance; columns ``<modality>_<j>`` (``j`` = 0, 1, ...) hold a
    modality's features (an empty cell is NaN, so an empty group is an absent
    modality), optional ``utterance_id``, ``group_id``, ``order``, ``speaker``.
    """
    try:
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = [r for r in reader if r]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the table ({type(exc).__name__})") from None
    if not header:
        raise DataError(f"{path}: empty table; the first line must name the columns (e.g. text_0, text_1, ..., utterance_id)")
    bad = [i + 2 for i, r in enumerate(rows) if len(r) != len(header)]
    if bad:
        raise DataError(f"{path}: line {bad[0]} has a different number of cells than the header")
    columns: dict[str, list[tuple[int, int]]] = {}
    unknown = []
    for k, name in enumerate(header):
        modality, _, index = name.strip().rpartition("_")
        if modality in modalities and index.isdigit():
            columns.setdefault(modality, []).append((int(index), k))
        elif name.strip() not in _TABLE_KEYS:
            unknown.append(name)
    if unknown:
        raise DataError(f"{path}: unknown column(s) {unknown[:5]}; use <modality>_<j> for {modalities} and {sorted(_TABLE_KEYS)}")
    seen = [name.strip() for name in header]
    twice = sorted({name for name in seen if seen.count(name) > 1})
    if twice:
        raise DataError(f"{path}: column(s) {twice} appear more than once; each column may be given once")
    data: dict[str, np.ndarray] = {}
    for m, cols in columns.items():
        indices = sorted(j for j, _ in cols)
        if indices != list(range(len(indices))):
            gap = next(j for j, i in enumerate(indices + [None]) if i != j)
            raise DataError(f"{path}: the '{m}' columns must be {m}_0 .. {m}_{len(indices) - 1} without gaps, "
                            f"but {m}_{gap} is missing (features would shift)")
        order = [k for _, k in sorted(cols)]
        try:
            data[f"x_{m}"] = np.array([[float(r[k]) if r[k].strip() else np.nan for k in order] for r in rows], dtype=np.float64).reshape(len(rows), len(order))
        except ValueError:
            line = next(i + 2 for i, r in enumerate(rows) if any(r[k].strip() and not _is_number(r[k]) for k in order))
            raise DataError(f"{path}: line {line} has a non-numeric '{m}' feature") from None
    for name, key in _TABLE_KEYS.items():
        if name in header:
            k = header.index(name)
            values = [r[k] for r in rows]
            if key == "order":
                if not all(v.strip().lstrip("-").isdigit() for v in values):
                    raise DataError(f"{path}: column 'order' must hold integers (position inside the dialogue)")
                data[key] = np.array([int(v) for v in values], dtype=np.int64)
            else:
                data[key] = np.array(values, dtype=str)
    return data


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_prediction_input(path: str | Path, modalities: list[str], dims: dict[str, int]) -> dict[str, Any]:
    """Read the ``imer predict`` input (``.npz``, or a ``.csv`` table); see :func:`predict` for the format.

    Missing means NaN (a whole row of NaN) or False in ``available``; an
    infinite value or a partly-NaN row is an error naming the rows.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise DataError(f"{path}: prediction input file not found")
        data = read_prediction_table(path, modalities)
    else:
        data = read_npz(path, "prediction input file")
    return check_prediction_input(data, str(path), modalities, dims)


def check_prediction_input(data: dict[str, Any], path: str, modalities: list[str], dims: dict[str, int]) -> dict[str, Any]:
    """Validate prediction arrays (keys as in the ``.npz``: ``x_<modality>``, ``available``, ...); ``path`` names them in errors.

    Missing means NaN (a whole row of NaN) or False in ``available``; an
    infinite value or a partly-NaN row is an error naming the rows.
    """
    present = [m for m in modalities if f"x_{m}" in data]
    unknown = sorted(k for k in data if k.startswith("x_") and k[2:] not in modalities)
    if unknown:
        raise DataError(f"{path}: unknown modality array(s) {unknown}; the model knows {modalities}")
    if not present:
        raise DataError(f"{path}: no feature array; expected keys like {[f'x_{m}' for m in modalities]}")
    stray = sorted(k for k in data if not k.startswith("x_") and k not in _INPUT_KEYS)
    if stray:
        raise DataError(f"{path}: unknown key(s) {stray}; an input holds x_<modality> arrays and {sorted(_INPUT_KEYS)}")
    for m in present:
        if data[f"x_{m}"].ndim != 2:
            raise DataError(f"{path}: 'x_{m}' has shape {data[f'x_{m}'].shape}, expected [N, {dims[m]}] (one row per utterance, {dims[m]} features)")
    n = data[f"x_{present[0]}"].shape[0]
    if n == 0:
        raise DataError(f"{path}: 'x_{present[0]}' has no rows; there is nothing to predict")
    given = None
    if "available" in data:
        given = np.asarray(data["available"])
        if given.shape != (n, len(modalities)) or given.dtype.kind not in "bui":
            raise DataError(f"{path}: 'available' has shape {given.shape} ({given.dtype}), expected ({n}, {len(modalities)}) booleans in order {modalities}")
        if given.dtype.kind != "b" and not np.isin(given, (0, 1)).all():
            raise DataError(f"{path}: 'available' holds values other than 0 and 1 (or True and False)")
        given = given.astype(bool)
    features, available = {}, np.zeros((n, len(modalities)), dtype=bool)
    for j, m in enumerate(modalities):
        x = data.get(f"x_{m}")
        if x is None:
            features[m] = np.zeros((n, dims[m]), dtype=np.float32)
            continue
        if x.ndim != 2 or x.shape != (n, dims[m]):
            raise DataError(f"{path}: 'x_{m}' has shape {x.shape}, expected ({n}, {dims[m]}) (one row per utterance, {dims[m]} features)")
        if x.dtype.kind not in "fiub":
            raise DataError(f"{path}: 'x_{m}' holds {x.dtype} values, expected numbers")
        considered = given[:, j] if given is not None else np.ones(n, dtype=bool)
        with np.errstate(invalid="ignore"):
            beyond = np.flatnonzero((np.isfinite(x) & (np.abs(x) > np.finfo(np.float32).max)).any(axis=1) & considered)
        if len(beyond):
            raise DataError(f"{path}: 'x_{m}' has values beyond the float32 range (about 3.4e38) in {_rows_text(beyond)}; check their units and scale")
        x = x.astype(np.float32)
        infinite = np.flatnonzero(np.isinf(x).any(axis=1) & considered)
        if len(infinite):
            raise DataError(f"{path}: 'x_{m}' has infinite values in {_rows_text(infinite)}; fix them, or mark the modality absent with NaN rows or 'available'")
        nan = np.isnan(x)
        partial = np.flatnonzero(nan.any(axis=1) & ~nan.all(axis=1) & considered)
        if len(partial):
            raise DataError(f"{path}: 'x_{m}' has NaN in only some columns of {_rows_text(partial)}; a missing modality is a whole row of NaN (or False in 'available')")
        available[:, j] = ~nan.all(axis=1)
        features[m] = np.where(np.isnan(x), 0.0, x).astype(np.float32)
    if given is not None:
        bad = np.flatnonzero((given & ~available).any(axis=1))
        if len(bad):
            raise DataError(f"{path}: 'available' marks a modality present in {_rows_text(bad)} whose features are absent (NaN or not given)")
        available = given
    empty = np.flatnonzero(~available.any(axis=1))
    if len(empty):
        raise DataError(f"{path}: {_rows_text(empty)} {'has' if len(empty) == 1 else 'have'} no modality at all")
    extras = {}
    for key in ("utterance_ids", "group_ids", "order", "speakers"):
        value = data.get(key)
        if value is not None and value.shape != (n,):
            raise DataError(f"{path}: '{key}' has shape {value.shape}, expected ({n},)")
        extras[key] = value
    ids = extras["utterance_ids"].astype(str) if extras["utterance_ids"] is not None else np.array([str(i) for i in range(n)])
    names, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{path}: utterance id(s) {[str(v) for v in names[counts > 1][:5]]} appear more than once; each row needs its own id")
    if extras["order"] is not None and extras["order"].dtype.kind not in "iu":
        raise DataError(f"{path}: 'order' must be integers (position inside the dialogue)")
    if extras["group_ids"] is not None and extras["order"] is not None:
        pairs = list(zip(extras["group_ids"].astype(str).tolist(), extras["order"].tolist()))
        if len(set(pairs)) != n:
            twice = next(pair for pair in pairs if pairs.count(pair) > 1)
            raise DataError(f"{path}: dialogue '{twice[0]}' has two rows at position {twice[1]} ('order'); each row needs its own position")
    return {
        "features": features,
        "available": available,
        "utterance_ids": ids,
        "group_ids": extras["group_ids"],
        "order": extras["order"],
        "speakers": extras["speakers"],
    }


def predict(run_dir: str | Path, input_path: str | Path, out_path: str | Path | None = None, device: str = "cpu") -> list[dict[str, Any]]:
    """Predict new utterances with a trained run.

    Input ``.npz``: ``x_<modality>`` ``[N, d_m]`` float arrays (a modality may
    be left out entirely, or given as NaN rows where absent); optional
    ``available`` ``[N, M]`` bool in the model's modality order; optional
    ``utterance_ids``; for dialogue-context methods optional ``group_ids``,
    ``order`` and ``speakers`` (without them each utterance is its own
    dialogue). A ``.csv`` table works too (see :func:`read_prediction_table`).
    Output (``.csv`` or ``.json``, by extension): one row per
    utterance with the predicted class and class probabilities, or the score,
    then ``has_<modality>`` (1 where that modality was used for the row). The model runs on ``device``.
    """
    if out_path is not None:
        check_output(out_path)
    loaded = load_run(run_dir, device)
    rows = predict_given(loaded, read_prediction_input(input_path, list(loaded.spec.modalities), loaded.spec.dim_of))
    if out_path is not None:
        write_predictions(out_path, rows)
    return rows


def predict_given(loaded: LoadedRun, given: dict[str, Any]) -> list[dict[str, Any]]:
    """Prediction rows of a loaded run for input already checked (the dict :func:`check_prediction_input` returns)."""
    spec = loaded.spec
    scaled = loaded.scaler.transform(given["features"], given["available"])
    _check_distribution(scaled, given["utterance_ids"])
    n = len(given["utterance_ids"])
    context = loaded.model.uses_context and given["group_ids"] is not None
    batcher = SplitBatcher(
        scaled,
        np.zeros(n, dtype=np.int64 if spec.task == "classification" else np.float32),
        given["group_ids"] if context else None,
        given["order"] if context else None,
        given["speakers"] if context else None,
    )
    acc = predict_split(loaded.model, EvalSet(batcher, given["available"]), loaded.config.train.batch_size, loaded.device)
    index, _, preds, available = acc.ordered()
    rows = prediction_rows(spec.task, preds, given["utterance_ids"][index], list(spec.modalities), available, loaded.class_names)
    if loaded.label_range is not None:
        _clip_scores(rows, loaded.label_range)
    return rows


def _clip_scores(rows: list[dict[str, Any]], label_range: tuple[float, float]) -> None:
    """Keep regression scores inside the training labels' range (each row says whether it was clipped); warn once."""
    low, high = label_range
    clipped = []
    for row in rows:
        score = row["score"]
        row["score"] = min(max(score, low), high)
        row["clipped"] = int(row["score"] != score)
        if row["clipped"]:
            clipped.append(row["utterance_id"])
    if clipped:
        shown = ", ".join(repr(u) for u in clipped[:5]) + (", ..." if len(clipped) > 5 else "")
        warnings.warn(f"{len(clipped)} score(s) outside the training labels' range [{low:g}, {high:g}] were clipped to it "
                      f"(column 'clipped'): {shown}", stacklevel=3)


def _check_distribution(scaled: dict[str, np.ndarray], ids: np.ndarray) -> None:
    """Refuse rows too far from the training data to compute with; warn about rows far outside it (see docs/errors.md)."""
    z = np.concatenate([np.abs(x) for x in scaled.values()], axis=1) if scaled else np.zeros((len(ids), 0))
    worst = z.max(axis=1, initial=0.0)
    for rows, bound, refuse in ((np.flatnonzero(worst > Z_REFUSE), Z_REFUSE, True), (np.flatnonzero(worst > Z_WARN), Z_WARN, False)):
        if len(rows):
            shown = ", ".join(repr(str(ids[i])) for i in rows[:5]) + (", ..." if len(rows) > 5 else "")
            text = (f"{len(rows)} row(s) have features more than {bound:g} training standard deviations from the training mean: {shown}")
            if refuse:
                raise DataError(f"predict input: {text}; they cannot be computed with (check their units and scale)")
            warnings.warn(f"{text}; their predictions are extrapolations (check the features' units and scale)", stacklevel=3)
            return
