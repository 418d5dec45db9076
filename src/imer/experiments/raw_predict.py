"""Predict utterances from raw input (transcripts, audio files, OpenFace CSVs).

The run's ``features.json`` says which extractor made each modality; the same
extractor makes the new utterance's features. A modality not given is
missing, which is the case these methods are made for; a modality whose
training features imer cannot make again (e.g. a published feature release)
is refused, so a model never sees features from another extractor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from imer.errors import DataError
from imer.experiments.inference import predict_given
from imer.experiments.loading import load_run
from imer.features import extract_many, read_manifest, why_not_reproducible
from imer.runfolder import RunFolder
from imer.runfolder.folder import check_output
from imer.runfolder.predictions import write_predictions

FLAGS = {"text": "--text", "audio": "--audio", "video": "--openface"}


def _manifest(run_dir: Path) -> dict[str, Any]:
    folder = RunFolder(run_dir)
    if not folder.has("features.json"):
        raise DataError(f"{run_dir}: the run has no features.json, so imer does not know which extractor made its features; "
                        "train on a dataset made by `imer features build` to predict from raw input, or use --input FILE.npz")
    return read_manifest(folder.file("features.json"))


def predict_raw(run_dir: str | Path, raw: dict[str, list[str] | None], out_path: str | Path | None = None,
                device: str = "cpu") -> list[dict[str, Any]]:
    """Predict utterances from ``raw`` (modality -> transcripts or file paths, one per utterance; ``None`` = not given).

    Every given modality lists the same utterances in the same order. Returns
    one prediction row per utterance, each with ``used`` (modalities extracted)
    and ``missing`` (modality -> why it is missing). The model runs on ``device``.
    """
    run_dir = Path(run_dir)
    if out_path is not None:
        check_output(out_path)
    loaded = load_run(run_dir, device)
    manifest = _manifest(run_dir)
    modalities = list(loaded.spec.modalities)
    given = {m: list(v) for m, v in raw.items() if v is not None}
    unknown = [m for m in given if m not in modalities]
    if unknown:
        raise DataError(f"{FLAGS.get(unknown[0], unknown[0])}: this model has no {unknown[0]} modality (it uses {', '.join(modalities)})")
    blocked = {m: why_not_reproducible(manifest["modalities"].get(m)) for m in modalities}
    extractable = [m for m in modalities if blocked[m] is None]
    for m in given:
        if blocked[m]:
            hint = f"give only {', '.join(FLAGS[e] for e in extractable)}" if extractable else "use --input FILE.npz with features made the same way"
            raise DataError(f"{FLAGS[m]}: this model's {m} features cannot be made from raw input ({blocked[m]}); {hint}")
    if not given:
        if not extractable:
            raise DataError(f"{run_dir}: none of this model's modalities can be made from raw input; use --input FILE.npz")
        raise DataError(f"give at least one of {', '.join(FLAGS[m] for m in extractable)} (this model predicts from any subset)")
    sizes = {m: len(v) for m, v in given.items()}
    n = max(sizes.values())
    if min(sizes.values()) == 0 or len(set(sizes.values())) > 1:
        raise DataError("raw input: give the same number of utterances for every modality, at least one ("
                        + ", ".join(f"{FLAGS[m]}: {k}" for m, k in sizes.items()) + ")")
    features: dict[str, np.ndarray] = {}
    available = np.zeros((n, len(modalities)), dtype=bool)
    missing: dict[str, str] = {}
    for j, m in enumerate(modalities):
        dim = loaded.spec.dim_of[m]
        if m in given:
            vectors = extract_many(manifest["modalities"][m], m, [str(v) for v in given[m]])
            if vectors.shape[1] != dim:
                raise DataError(f"{FLAGS[m]}: extracted {vectors.shape[1]} {m} values, the model was trained on {dim}")
            features[m] = vectors
            available[:, j] = True
        else:
            features[m] = np.zeros((n, dim), dtype=np.float32)
            missing[m] = "not given" if blocked[m] is None else f"cannot be made from raw input: {blocked[m]}"
    ids = np.array(["input"] if n == 1 else [f"input{k + 1}" for k in range(n)])
    predicted = predict_given(loaded, {"features": features, "available": available, "utterance_ids": ids,
                                       "group_ids": None, "order": None, "speakers": None})
    by_id = {r["utterance_id"]: r for r in predicted}
    rows = [{**by_id[i], "used": [m for m in modalities if m in given], "missing": missing} for i in ids]
    if out_path is not None:
        flat = [{**{k: v for k, v in row.items() if k not in ("used", "missing")}, "used": " ".join(row["used"]),
                 "missing": "; ".join(f"{m}: {why}" for m, why in missing.items())} for row in rows]
        write_predictions(Path(out_path), rows if Path(out_path).suffix == ".json" else flat)
    return rows
