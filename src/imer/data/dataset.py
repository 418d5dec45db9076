"""The in-memory dataset type shared by every loader.

A :class:`MultimodalDataset` holds utterance-level features for any named set
of two or more modalities, one label per utterance, the group (dialogue or
video) each utterance belongs to with its position, optional speakers, and
either a named split (train/valid/test) or a fold number per utterance.
Loaders build it; everything downstream (missing protocols, batching,
training) reads only this type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from imer.errors import DataError

Task = Literal["classification", "regression"]
SPLITS = ("train", "valid", "test")

# String labels that mean "no label": refused as class names unless class_names lists them.
MISSING_MARKS = frozenset({"", "NA", "N/A", "na", "n/a", "nan", "NaN", "None", "none", "null", "NULL", "-", "?"})


@dataclass
class MultimodalDataset:
    """Utterance-level multimodal features with labels, groups and splits.

    Attributes:
        name: dataset name (used in reports and run directories).
        features: modality name -> float32 array ``[N, d_m]``; order of the
            dict is the modality order used everywhere (masks, models).
        labels: ``[N]`` int64 class indices or float32 scores.
        task: ``"classification"`` or ``"regression"``.
        utterance_ids: ``[N]`` unique utterance ids.
        group_ids: ``[N]`` dialogue/video id of each utterance.
        order: ``[N]`` position of the utterance inside its group.
        split: ``[N]`` one of train/valid/test, or ``None`` when folds are used.
        fold: ``[N]`` fold number (e.g. IEMOCAP session), or ``None``.
        speakers: optional ``[N]`` speaker labels.
        class_names: names of the classes (classification only).
        available: ``[N, M]`` bool, modalities really present in the data
            (all True for complete data); simulated missingness comes on top.
        manifest: optional feature manifest (``features.json`` content: which
            extractor made each modality), copied into every run.
    """

    name: str
    features: dict[str, np.ndarray]
    labels: np.ndarray
    task: Task
    utterance_ids: np.ndarray
    group_ids: np.ndarray
    order: np.ndarray
    split: np.ndarray | None = None
    fold: np.ndarray | None = None
    speakers: np.ndarray | None = None
    class_names: list[str] | None = None
    available: np.ndarray | None = None
    source: str = ""
    notes: list[str] = field(default_factory=list)
    manifest: dict | None = None

    def __post_init__(self) -> None:
        where = self._where()
        features = {}
        for m, x in self.features.items():
            x = np.asarray(x)
            if x.dtype.kind not in "fiub":
                raise DataError(f"{where}: features of '{m}' are {x.dtype}, expected numbers")
            features[m] = np.ascontiguousarray(x, dtype=np.float32)
        self.features = features
        self.utterance_ids = np.asarray(self.utterance_ids).astype(str)
        self.group_ids = np.asarray(self.group_ids).astype(str)
        self.order = np.asarray(self.order)
        if self.order.dtype.kind not in "iu":
            raise DataError(f"{where}: 'order' must be integers (position of each utterance inside its dialogue), got {self.order.dtype}")
        self.order = self.order.astype(np.int64)
        labels = np.asarray(self.labels)
        if labels.ndim != 1:
            hint = "take labels[:, 0]" if labels.ndim == 2 and labels.shape[1] == 1 else "for one-hot rows use labels.argmax(axis=1)"
            raise DataError(f"{where}: labels have shape {labels.shape}, expected one label per utterance, shape (N,); {hint}")
        if labels.dtype.kind not in "fiub":
            raise DataError(f"{where}: labels are {labels.dtype}; give class indices 0..C-1 (names go in class_names) or numeric scores")
        if self.task == "classification":
            if labels.dtype.kind == "f" and not (np.isfinite(labels) & (np.mod(labels, 1) == 0)).all():
                raise DataError(f"{where}: classification labels must be whole class indices 0..C-1, got fractional or NaN values")
            huge = np.abs(labels.astype(np.float64)) >= 2**31  # would wrap when made integers: shown as written
            if huge.any():
                k = int(np.flatnonzero(huge)[0])
                raise DataError(f"{where}: unknown label {labels[k].item()!r} at utterance '{np.asarray(self.utterance_ids)[k]}' "
                                "(labels are class indices 0..C-1)")
            self.labels = labels.astype(np.int64)
        else:
            self.labels = labels.astype(np.float32)
        if self.split is not None:
            self.split = np.asarray(self.split).astype(str)
        if self.fold is not None:
            self.fold = np.asarray(self.fold, dtype=np.int64)
        if self.speakers is not None:
            self.speakers = np.asarray(self.speakers).astype(str)
        if self.available is None:
            # Only NaN means missing: a modality whose row is entirely NaN is absent for that utterance.
            n = len(self)
            shaped = all(x.ndim == 2 and x.shape[0] == n and x.shape[1] > 0 for x in self.features.values())
            if shaped and self.features:
                self.available = np.stack([~np.isnan(x).all(axis=1) for x in self.features.values()], axis=1)
            else:  # shapes are wrong: validate() below says how
                self.available = np.ones((n, len(self.features)), dtype=bool)
        else:
            self.available = np.asarray(self.available, dtype=bool)
        self.validate()

    # ------------------------------------------------------------------ basics
    @classmethod
    def from_arrays(
        cls,
        features: dict[str, np.ndarray],
        labels: np.ndarray,
        *,
        group_ids: np.ndarray | None = None,
        split: np.ndarray | None = None,
        fold: np.ndarray | None = None,
        available: np.ndarray | None = None,
        task: Task | None = None,
        class_names: list[str] | None = None,
        utterance_ids: np.ndarray | None = None,
        order: np.ndarray | None = None,
        speakers: np.ndarray | None = None,
        test_fraction: float = 0.2,
        name: str = "arrays",
    ) -> "MultimodalDataset":
        """A dataset from numpy arrays in memory (``features``: modality -> ``[N, d]``, ``labels``: ``[N]``).

        Missing entries may be NaN rows (``available`` is then derived) or given
        by ``available`` ``[N, M]``. The task is classification for integer or
        string labels (``class_names`` default to the sorted distinct labels),
        regression for float labels. Without ``group_ids`` every utterance is
        its own group; ``order`` defaults to the position inside the group.
        Without ``split`` or ``fold``, a seeded ``test_fraction`` of the groups
        becomes the test split (validation is carved from the rest in training).
        """
        if not isinstance(features, Mapping):
            raise DataError(f"features: must be a dict modality -> array [N, d], got {type(features).__name__}")
        labels = np.asarray(labels)
        n = len(labels) if labels.ndim else 0
        if labels.ndim != 1:
            raise DataError(f"labels must be 1-D [N], got shape {labels.shape}")
        arrays = {m: np.asarray(x) for m, x in features.items()}
        for m, x in arrays.items():
            if x.dtype.kind not in "fiub":
                raise DataError(f"features['{m}']: holds {x.dtype} values, expected numbers")
            if x.ndim != 2 or x.shape[0] != n:
                raise DataError(f"features['{m}']: has shape {x.shape}, expected ({n}, d): one row per label")
        features = {m: x.astype(np.float32) for m, x in arrays.items()}
        if task is None:
            task = "regression" if labels.dtype.kind == "f" and class_names is None else "classification"
        if task == "classification" and labels.dtype.kind not in "iu" and class_names is None:
            blank = sorted({str(v) for v in labels.tolist()} & MISSING_MARKS)
            if blank:
                raise DataError(f"labels hold {blank}, which reads as a missing label, not a class; drop those rows, "
                                "or list it in class_names if it really is a class")
        if task == "classification" and labels.dtype.kind not in "iu":
            class_names = class_names or sorted({str(v) for v in labels.tolist()})
            index = {c: i for i, c in enumerate(class_names)}
            unknown = sorted({str(v) for v in labels.tolist()} - set(index))
            if unknown:
                raise DataError(f"labels {unknown[:3]} are not in class_names {class_names}")
            labels = np.array([index[str(v)] for v in labels.tolist()], dtype=np.int64)
        elif task == "classification" and class_names is None:
            class_names = [str(c) for c in range(int(labels.max()) + 1)] if n else []
        if available is None:
            available = np.stack([np.isfinite(x).all(axis=1) for x in features.values()], axis=1) if features else None
        groups = np.arange(n).astype(str) if group_ids is None else np.asarray(group_ids).astype(str)
        if order is None:
            order = np.zeros(n, dtype=np.int64)
            for g in np.unique(groups):
                order[groups == g] = np.arange(int((groups == g).sum()))
        if split is None and fold is None:
            unique = np.unique(groups)
            rng = np.random.default_rng(0)
            test_groups = set(rng.choice(unique, size=max(1, int(round(test_fraction * len(unique)))), replace=False).tolist())
            split = np.where([g in test_groups for g in groups], "test", "train")
        ids = np.arange(n).astype(str) if utterance_ids is None else utterance_ids
        return cls(name, features, labels, task, ids, groups, order, split, fold, speakers, class_names, available, source="arrays")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        """One line: name, size, task, modalities with widths, splits or folds (not the arrays)."""
        task = f"{len(self.class_names or [])} classes" if self.task == "classification" else "regression"
        parts = [f"{len(self)} utterances in {len(np.unique(self.group_ids))} groups", task,
                 "modalities " + " ".join(f"{m}[{d}]" for m, d in self.dims.items())]
        if self.split is not None:
            names, counts = np.unique(self.split, return_counts=True)
            parts.append("split " + " ".join(f"{n}={c}" for n, c in zip(names.tolist(), counts.tolist())))
        if self.fold is not None:
            parts.append(f"folds {', '.join(map(str, self.folds))}")
        return f"Dataset({self.name!r}: {', '.join(parts)})"

    @property
    def modalities(self) -> list[str]:
        return list(self.features)

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(x.shape[1]) for m, x in self.features.items()}

    @property
    def num_classes(self) -> int:
        """Number of classes, or 1 for regression (the output size)."""
        return len(self.class_names or []) if self.task == "classification" else 1

    @property
    def folds(self) -> list[int]:
        return sorted(int(f) for f in np.unique(self.fold)) if self.fold is not None else []

    def _where(self) -> str:
        return f"dataset '{self.name}'" + (f" ({self.source})" if self.source else "")

    def validate(self) -> None:
        """Check shapes, values and consistency; raise :class:`DataError` naming the problem."""
        where = self._where()
        n = len(self)
        if len(self.features) < 2:
            raise DataError(f"{where}: needs at least 2 modalities, got {self.modalities}")
        if self.task not in ("classification", "regression"):
            raise DataError(f"{where}: task must be 'classification' or 'regression', got {self.task!r}")
        if n == 0:
            raise DataError(f"{where}: has no utterances")
        for attr in ("utterance_ids", "group_ids", "order"):
            if getattr(self, attr).shape != (n,):
                raise DataError(f"{where}: '{attr}' has shape {getattr(self, attr).shape}, expected ({n},)")
        if self.available.shape != (n, len(self.features)):
            raise DataError(f"{where}: availability mask has shape {self.available.shape}, expected ({n}, {len(self.features)})")
        for j, (m, x) in enumerate(self.features.items()):
            if x.ndim != 2 or x.shape[0] != n or x.shape[1] == 0:
                raise DataError(f"{where}: modality '{m}' has shape {x.shape}, expected [{n}, width] with width >= 1")
            for kind, bad in (("infinite", np.isinf(x)), ("NaN", np.isnan(x))):
                bad_rows = np.flatnonzero(bad.any(axis=1) & self.available[:, j])
                if len(bad_rows):
                    shown = ", ".join(f"'{u}'" for u in self.utterance_ids[bad_rows[:5]]) + (f" (+{len(bad_rows) - 5} more)" if len(bad_rows) > 5 else "")
                    raise DataError(
                        f"{where}: modality '{m}' has {kind} values in {len(bad_rows)} utterance(s) where it is present: {shown}; "
                        "fix them, or mark the modality absent there (a whole row of NaN, or False in 'available')"
                    )
        if len(np.unique(self.utterance_ids)) != n:
            raise DataError(f"{where}: utterance ids are not unique")
        empty = ~self.available.any(axis=1)
        if empty.any():
            raise DataError(f"{where}: utterance '{self.utterance_ids[empty][0]}' has no modality at all")
        if self.task == "classification":
            if not self.class_names or len(self.class_names) < 2:
                raise DataError(f"{where}: classification data needs class_names of at least 2 classes, got {self.class_names}")
            twice = sorted({c for c in self.class_names if self.class_names.count(c) > 1})
            if twice:
                raise DataError(f"{where}: class_names {twice} appear more than once; each class needs its own name "
                                "(predictions have one probability column per name)")
            bad = (self.labels < 0) | (self.labels >= len(self.class_names))
            if bad.any():
                raise DataError(
                    f"{where}: unknown label {int(self.labels[bad][0])} at utterance '{self.utterance_ids[bad][0]}' "
                    f"(classes are 0..{len(self.class_names) - 1}: {self.class_names})"
                )
        elif not np.isfinite(self.labels).all():
            raise DataError(f"{where}: labels contain NaN/Inf")
        if self.split is None and self.fold is None:
            raise DataError(f"{where}: needs a split or a fold per utterance")
        if self.split is not None:
            unknown = {str(s) for s in np.unique(self.split)} - set(SPLITS)
            if unknown:
                raise DataError(f"{where}: unknown split names {sorted(unknown)}; use {SPLITS}")
        if self.speakers is not None and self.speakers.shape != (n,):
            raise DataError(f"{where}: 'speakers' has shape {self.speakers.shape}, expected ({n},)")

    # ------------------------------------------------------------------ splits
    def split_indices(self, fold: int | None = None, valid_fraction: float = 0.15, split_seed: int = 0,
                      holdout: str = "test", refit: bool = False) -> dict[str, np.ndarray]:
        """Utterance indices of train/valid/test.

        With a named split, a missing ``valid`` part is carved out of the
        training groups (whole groups, seeded). With folds, ``fold`` is the test
        fold and the validation part is carved from the other folds' groups;
        ``holdout="valid"`` makes the held-out fold the validation part instead
        (a cross-validation fold: nothing carved, the fold is also the test part).
        ``refit`` trains on train + valid (the refit of the cross-validated
        protocol, docs/protocol.md); the validation part then lies inside the
        training data and can select nothing.
        """
        if self.split is not None and fold is not None:
            raise DataError(f"dataset '{self.name}' has a fixed split, not folds; drop --fold")
        if self.split is not None:
            if holdout != "test":
                raise DataError(f"dataset '{self.name}' has a fixed split: data.holdout='valid' needs folds (data.dev_folds)")
            parts = {s: np.flatnonzero(self.split == s) for s in SPLITS}
        else:
            folds = self.folds
            if fold is None:
                raise DataError(f"dataset '{self.name}' is evaluated by folds {folds}; choose one with --fold")
            if fold not in folds:
                raise DataError(f"dataset '{self.name}' has folds {folds}, not {fold}")
            held_out = np.flatnonzero(self.fold == fold)
            parts = {"train": np.flatnonzero(self.fold != fold), "valid": held_out if holdout == "valid" else np.array([], dtype=np.int64), "test": held_out}
        if len(parts["valid"]) == 0:
            parts["train"], parts["valid"] = self._carve_valid(parts["train"], valid_fraction, split_seed)
        if refit:
            parts["train"] = np.sort(np.concatenate([parts["train"], parts["valid"]]))
        for name, idx in parts.items():
            if len(idx) == 0:
                raise DataError(f"dataset '{self.name}': the '{name}' split is empty")
        return parts

    def development_folds(self, k: int, seed: int = 0) -> "MultimodalDataset":
        """The dataset without its test part, its other groups dealt into ``k`` seeded folds.

        For choosing settings without the test set: cross-validation over every
        train + valid group holds out about ``k`` times more groups than one
        validation part (``data.dev_folds``). Fold ``f`` then plays the test
        part of a run (validation is carved from the other folds, as for any
        fold-based dataset). Groups go, largest first (ties in seeded random
        order), to the fold with the fewest utterances so far, so folds hold
        similar numbers of utterances.
        """
        if self.split is None:
            raise DataError(f"dataset '{self.name}' is already evaluated by folds {self.folds}; drop data.dev_folds")
        keep = np.flatnonzero(self.split != "test")
        groups, sizes = np.unique(self.group_ids[keep], return_counts=True)
        if not 2 <= k <= len(groups):
            raise DataError(f"dataset '{self.name}': data.dev_folds must be between 2 and its {len(groups)} train+valid groups, got {k}")
        shuffled = np.random.default_rng(seed).permutation(len(groups))
        by_size = shuffled[np.argsort(-sizes[shuffled], kind="stable")]
        load = np.zeros(k, dtype=np.int64)
        fold_of: dict[str, int] = {}
        for g in by_size:
            f = int(np.argmin(load))
            fold_of[str(groups[g])] = f + 1
            load[f] += sizes[g]
        fold = np.array([fold_of[g] for g in self.group_ids[keep]], dtype=np.int64)
        return replace(  # every per-utterance field cut to the kept rows; the rest (name, task, classes, manifest) carried over
            self,
            features={m: x[keep] for m, x in self.features.items()},
            labels=self.labels[keep],
            utterance_ids=self.utterance_ids[keep],
            group_ids=self.group_ids[keep],
            order=self.order[keep],
            split=None,
            fold=fold,
            speakers=None if self.speakers is None else self.speakers[keep],
            available=self.available[keep],
            notes=[*self.notes, f"development folds: test part dropped, {len(groups)} train+valid groups in {k} folds (seed {seed})"],
        )

    def _carve_valid(self, train_idx: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        groups = np.unique(self.group_ids[train_idx])
        if len(groups) < 2:
            raise DataError(f"dataset '{self.name}': cannot carve a validation part out of {len(groups)} training group(s)")
        n_valid = min(len(groups) - 1, max(1, int(round(fraction * len(groups)))))
        rng = np.random.default_rng(seed)
        valid_groups = set(rng.choice(groups, size=n_valid, replace=False).tolist())
        in_valid = np.array([g in valid_groups for g in self.group_ids[train_idx]], dtype=bool)
        return train_idx[~in_valid], train_idx[in_valid]

    def summary(self, valid_fraction: float = 0.15, split_seed: int = 0) -> dict:
        """Sizes, dims, splits and label distribution, for ``imer data info`` (valid carved as in training)."""
        info: dict = {
            "name": self.name,
            "source": self.source,
            "task": self.task,
            "utterances": len(self),
            "groups": int(len(np.unique(self.group_ids))),
            "modalities": self.dims,
            "speakers": None if self.speakers is None else int(len(np.unique(self.speakers))),
            "missing_in_data": float(1.0 - self.available.mean()),
            "absent_in_data": {m: float(1.0 - self.available[:, j].mean()) for j, m in enumerate(self.modalities)},
            "notes": list(self.notes),
        }
        if self.split is not None:
            parts = self.split_indices(None, valid_fraction, split_seed)
            info["splits"] = {s: {"utterances": len(idx), "groups": int(len(np.unique(self.group_ids[idx])))} for s, idx in parts.items()}
            if not (self.split == "valid").any():
                info["splits"]["valid"]["note"] = f"carved from training groups (valid_fraction {valid_fraction:g}, split_seed {split_seed})"
        if self.fold is not None:
            info["folds"] = {int(f): int((self.fold == f).sum()) for f in self.folds}
        if self.task == "classification":
            counts = np.bincount(self.labels, minlength=self.num_classes)
            info["labels"] = {name: int(c) for name, c in zip(self.class_names or [], counts)}
        else:
            info["labels"] = {
                "mean": float(self.labels.mean()),
                "std": float(self.labels.std()),
                "min": float(self.labels.min()),
                "max": float(self.labels.max()),
                "negative": int((self.labels < 0).sum()),
                "zero": int((self.labels == 0).sum()),
                "positive": int((self.labels > 0).sum()),
            }
            if self.labels.min() >= 0 or self.labels.max() <= 0:
                info["notes"].append("regression labels are not centred on 0, but acc2/f1 read the sign as the class: centre them "
                                     "(see docs/data.md) or train with --set train.select_metric=mae")
        return info
