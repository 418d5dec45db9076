"""Join per-modality feature files into one dataset ``.npz`` plus its ``features.json`` manifest.

The utterances are the ids of the label table when one is given, else every
id that at least two modalities share. An id that only one modality knows is
most often a naming mismatch (``clip1`` vs ``clip1.wav``), so it is an error
listing examples, unless ``keep_unmatched`` keeps it as an utterance with that
one modality. With labels the result is a training dataset in the ``custom``
format; without labels it is an ``imer predict --input`` file.

Label table (CSV with a header): ``utterance_id``, ``label``, optional
``split`` (train/valid/test), ``dialogue``, ``speaker``. Dialogues come from
that column, else from the feature files (segment tables, transcript CSV),
else from the id (``<dialogue>_<n>``), else each utterance is its own.
Without a ``split`` column a seeded fifth of the dialogues becomes the test
part (validation is carved from the rest when training).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imer.errors import DataError
from imer.features.inputs import column, read_table
from imer.features.manifest import make_manifest
from imer.features.store import ModalityFeatures
from imer.io import atomic_write, dumps, write_json

MODALITY_ORDER = ("audio", "text", "video")
TEST_FRACTION = 0.2
_NUMBERED = re.compile(r"^(.*)_(\d+)$")


@dataclass
class Labels:
    ids: list[str]
    labels: list[str]
    split: list[str] | None = None
    dialogue: list[str] | None = None
    speaker: list[str] | None = None


@dataclass
class BuildResult:
    path: Path
    manifest_path: Path
    utterances: int
    modalities: list[str]
    missing: dict[str, int] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    labelled: bool = False


def read_labels(path: str | Path) -> Labels:
    """The label table; errors name the file, line and column."""
    header, rows = read_table(path, "label table")
    ic, lc = column(header, "utterance_id", path, "label table"), column(header, "label", path, "label table")
    optional = {name: header.index(name) for name in ("split", "dialogue", "speaker") if name in header}
    cols: dict[str, list[str]] = {"ids": [], "labels": [], **{k: [] for k in optional}}
    for n, row in enumerate(rows, start=2):
        row = row + [""] * (len(header) - len(row))
        if not row[ic].strip() or not row[lc].strip():
            raise DataError(f"{path}: line {n}: empty utterance_id or label")
        cols["ids"].append(row[ic].strip())
        cols["labels"].append(row[lc].strip())
        for k, j in optional.items():
            cols[k].append(row[j].strip())
    if len(set(cols["ids"])) != len(cols["ids"]):
        raise DataError(f"{path}: utterance ids are not unique")
    unknown = sorted(set(cols.get("split", [])) - {"train", "valid", "test"})
    if unknown:
        raise DataError(f"{path}: unknown split name(s) {unknown[:3]}; use train, valid or test")
    return Labels(cols["ids"], cols["labels"], cols.get("split"), cols.get("dialogue"), cols.get("speaker"))


def _task_and_targets(labels: list[str], task: str | None) -> tuple[str, np.ndarray, list[str] | None]:
    numbers = []
    for value in labels:
        try:
            numbers.append(float(value))
        except ValueError:
            break
    numeric = len(numbers) == len(labels)
    if task is None:
        task = "regression" if numeric and not all(v.is_integer() for v in numbers) else "classification"
    if task == "regression":
        if not numeric:
            raise DataError(f"labels: regression needs numbers, got {next(v for v in labels if not _is_number(v))!r}")
        return task, np.array(numbers, dtype=np.float32), None
    names = sorted(set(labels), key=lambda v: (float(v), v) if numeric else (0.0, v))
    index = {name: k for k, name in enumerate(names)}
    return "classification", np.array([index[v] for v in labels], dtype=np.int64), names


def _is_number(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False


def _groups_and_order(ids: list[str], given: list[str]) -> tuple[np.ndarray, np.ndarray]:
    groups, order = [], []
    for uid, group in zip(ids, given):
        match = _NUMBERED.match(uid)
        groups.append(group or (match.group(1) if match else uid))
        order.append(int(match.group(2)) if match else -1)
    groups_arr = np.array(groups, dtype=str)
    order_arr = np.array(order, dtype=np.int64)
    for g in np.unique(groups_arr):
        rows = np.flatnonzero(groups_arr == g)
        if (order_arr[rows] < 0).any() or len(set(order_arr[rows])) != len(rows):
            order_arr[rows] = np.arange(len(rows))
    return groups_arr, order_arr


def _default_split(groups: np.ndarray, seed: int) -> np.ndarray:
    names = np.unique(groups)
    if len(names) < 3:
        raise DataError(f"labels: no 'split' column and only {len(names)} dialogue(s); add a split column (train/valid/test) or more dialogues")
    n_test = max(1, int(round(TEST_FRACTION * len(names))))
    test = set(np.random.default_rng(seed).choice(names, size=n_test, replace=False).tolist())
    return np.array(["test" if g in test else "train" for g in groups], dtype=str)


def _load_features(modality_files: dict[str, str | Path]) -> dict[str, ModalityFeatures]:
    """The feature files by modality, in the usual modality order; at least two."""
    feats = {m: ModalityFeatures.load(p) for m, p in sorted(modality_files.items(), key=lambda kv: MODALITY_ORDER.index(kv[0]) if kv[0] in MODALITY_ORDER else 99)}
    for m, f in feats.items():
        if f.modality != m:
            raise DataError(f"{modality_files[m]}: holds {f.modality} features, given as --{m}")
    if len(feats) < 2:
        raise DataError("features build needs at least two modalities (e.g. --text and --audio): every method here combines modalities")
    return feats


def _utterance_ids(feats: dict[str, ModalityFeatures], modality_files: dict[str, str | Path], labels: Any, labels_path: str | Path | None,
                   keep_unmatched: bool, log: Any) -> list[str]:
    """The utterances of the dataset: the label table's, or every id some modality has; unmatched ids refused unless kept."""
    modalities = list(feats)
    seen: dict[str, list[str]] = {}
    for m, f in feats.items():
        for uid in f.ids:
            seen.setdefault(uid, []).append(m)
    if labels is not None:
        labelled = set(labels.ids)
        unlabelled = {m: [u for u in f.ids if u not in labelled] for m, f in feats.items()}
        worst = max(unlabelled, key=lambda m: len(unlabelled[m]))
        if unlabelled[worst] and not keep_unmatched:
            raise DataError(f"{modality_files[worst]}: {len(unlabelled[worst])} {worst} id(s) have no row in {labels_path}, "
                            f"e.g. {unlabelled[worst][:3]}; check the id spelling, or pass --keep-unmatched to leave them out")
        if unlabelled[worst]:
            log(f"{len(set().union(*unlabelled.values()))} id(s) without a label row are left out, e.g. {unlabelled[worst][:3]}")
        return list(labels.ids)
    lonely = [u for u, ms in seen.items() if len(ms) == 1]
    if lonely and not keep_unmatched:
        by = {m: [u for u in lonely if seen[u] == [m]] for m in modalities}
        m = max(by, key=lambda k: len(by[k]))
        others = [o for o in modalities if o != m]
        raise DataError(f"{modality_files[m]}: {len(by[m])} {m} id(s) appear in no other modality ({', '.join(others)}), e.g. {by[m][:3]}; "
                        "check that every extractor used the same utterance ids, or pass --keep-unmatched to keep them as single-modality utterances")
    return list(seen)


def _join(feats: dict[str, ModalityFeatures], ids: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray, list[tuple[str, str, str]], list[str]]:
    """Features by modality ``[N, dim]`` (NaN where absent), availability ``[N, M]``, why entries are missing, and each id's file group."""
    rows = {m: {uid: k for k, uid in enumerate(f.ids)} for m, f in feats.items()}
    n = len(ids)
    x = {m: np.full((n, int(f.entry["dim"])), np.nan, dtype=np.float32) for m, f in feats.items()}
    available = np.zeros((n, len(feats)), dtype=bool)
    reasons: list[tuple[str, str, str]] = []
    file_groups = [""] * n
    for j, (m, f) in enumerate(feats.items()):
        for i, uid in enumerate(ids):
            k = rows[m].get(uid)
            if k is None:
                reasons.append((uid, m, "no input for this utterance"))
                continue
            file_groups[i] = file_groups[i] or f.groups[k]
            if f.reasons[k]:
                reasons.append((uid, m, f.reasons[k]))
                continue
            x[m][i] = f.x[k]
            available[i, j] = True
    return x, available, reasons, file_groups


def build_dataset(
    modality_files: dict[str, str | Path],
    out: str | Path,
    labels_path: str | Path | None = None,
    task: str | None = None,
    name: str | None = None,
    keep_unmatched: bool = False,
    split_seed: int = 0,
    log: Any = None,
) -> BuildResult:
    """Join modality feature files (modality -> path) into ``out`` and ``<out stem>.features.json``."""
    out = Path(out)
    log = log or (lambda msg: None)
    feats = _load_features(modality_files)
    modalities = list(feats)
    labels = read_labels(labels_path) if labels_path else None
    ids = _utterance_ids(feats, modality_files, labels, labels_path, keep_unmatched, log)
    x, available, reasons, file_groups = _join(feats, ids)
    keep = available.any(axis=1)
    dropped = [ids[i] for i in np.flatnonzero(~keep)]
    if dropped:
        log(f"{len(dropped)} utterance(s) have no modality at all and are left out, e.g. {dropped[:3]}")
    if not keep.any():
        raise DataError("features build: no utterance has any usable modality")
    index = np.flatnonzero(keep)
    ids_kept = [ids[i] for i in index]
    pos = {u: k for k, u in enumerate(labels.ids)} if labels is not None else {}
    given_groups = [labels.dialogue[pos[u]] for u in ids_kept] if labels is not None and labels.dialogue else [file_groups[i] for i in index]
    groups, order = _groups_and_order(ids_kept, given_groups)
    entries = {}
    for j, (m, f) in enumerate(feats.items()):
        entries[m] = {**f.entry, "utterances": int(available[index, j].sum()), "missing": int((~available[index, j]).sum())}
    manifest = make_manifest(entries)
    arrays: dict[str, np.ndarray] = {
        "modalities": np.array(modalities),
        "utterance_ids": np.array(ids_kept, dtype=str),
        "group_ids": groups,
        "order": order,
        "available": available[index],
        "features_manifest": np.array(dumps(manifest)),
        **{f"x_{m}": x[m][index] for m in modalities},
    }
    if labels is not None:
        from imer.data.custom import FORMAT as DATASET_FORMAT

        sel = [pos[u] for u in ids_kept]
        task, targets, class_names = _task_and_targets([labels.labels[k] for k in sel], task)
        arrays.update({"format": np.array(DATASET_FORMAT), "name": np.array(name or out.stem), "task": np.array(task), "labels": targets})
        if class_names is not None:
            arrays["class_names"] = np.array(class_names)
        arrays["split"] = np.array([labels.split[k] for k in sel], dtype=str) if labels.split else _default_split(groups, split_seed)
        if labels.speaker:
            arrays["speakers"] = np.array([labels.speaker[k] for k in sel], dtype=str)
    with atomic_write(out, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    manifest_path = out.with_name(f"{out.stem}.features.json")
    write_json(manifest_path, manifest)
    if reasons:
        with atomic_write(out.with_name(f"{out.stem}.missing.csv")) as fh:
            writer = csv.writer(fh)
            writer.writerow(["utterance_id", "modality", "reason"])
            gone = set(dropped)
            writer.writerows(r for r in reasons if r[0] not in gone)
    missing = {m: entries[m]["missing"] for m in modalities}
    return BuildResult(out, manifest_path, len(ids_kept), modalities, missing, dropped, labels is not None)
