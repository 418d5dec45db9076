"""A label-leakage probe: does a linear model score better on held-out training-side data than on test?

Features whose extractor was trained on (part of) a dataset's training
utterances carry those labels: a linear probe then scores far better on
training-side utterances it never saw (the validation part, cut from the same
videos the extractor learnt from) than on the test part. Features extracted
without labels score about the same on both. Per modality, with all
modalities observed, a logistic regression is fitted on the training part
(target: the classes, or the sign of non-zero scores), its strength chosen by
grouped 5-fold cross-validation inside the training part only, and scored on
validation and test. A modality whose validation accuracy beats its test
accuracy by more than ``threshold`` (default 5 points) is flagged, and the
verdict is "leak suspected" if any modality is. A single-split probe cannot
prove leakage; it says where a suspicious gap needs explaining.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold

from imer.data.dataset import MultimodalDataset

DEFAULT_THRESHOLD = 0.05
STRENGTHS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)  # logistic C on standardised features, weakest probe first


@dataclass
class ProbeRow:
    """One modality's probe: accuracies on training-side held-out data and on test."""

    modality: str
    C: float
    cv: float
    valid: float
    test: float
    gap: float
    flagged: bool


@dataclass
class LeakageReport:
    dataset: str
    target: str
    threshold: float
    fold: int | None
    rows: list[ProbeRow] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        flagged = [r.modality for r in self.rows if r.flagged]
        return f"leak suspected ({', '.join(flagged)})" if flagged else "no leak suspected"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def _fit(x: np.ndarray, y: np.ndarray, C: float) -> LogisticRegression:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=C, max_iter=2000).fit(x, y)


def _choose_c(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int) -> tuple[float, float]:
    """Strength with the best grouped cross-validated accuracy (ties: the stronger penalty), and that accuracy."""
    splits = list(GroupKFold(n_splits=min(folds, len(np.unique(groups)))).split(x, y, groups))
    best_c, best_score = STRENGTHS[0], -1.0
    for C in STRENGTHS:
        score = float(np.mean([(_fit(x[a], y[a], C).predict(x[b]) == y[b]).mean() for a, b in splits]))
        if score > best_score + 1e-12:
            best_c, best_score = C, score
    return best_c, best_score


def probe_leakage(dataset: MultimodalDataset, threshold: float = DEFAULT_THRESHOLD, fold: int | None = None, folds: int = 5) -> LeakageReport:
    """Fit the per-modality probe on ``dataset``'s training part; see the module docstring."""
    if dataset.fold is not None and fold is None:
        fold = dataset.folds[0]
    parts = dataset.split_indices(fold)
    regression = dataset.task == "regression"
    keep = (lambda idx: idx[dataset.labels[idx] != 0]) if regression else (lambda idx: idx)
    target = (dataset.labels > 0).astype(np.int64) if regression else dataset.labels
    report = LeakageReport(dataset.name, "sign of non-zero scores (acc2)" if regression else "classes (accuracy)", threshold, fold)
    for j, (m, x) in enumerate(dataset.features.items()):
        idx = {s: keep(i)[dataset.available[keep(i), j]] for s, i in parts.items()}
        if any(len(i) == 0 for i in idx.values()):
            continue  # the modality is absent from a whole split: nothing to compare
        train = idx["train"]
        mean = x[train].mean(axis=0, dtype=np.float64)
        std = x[train].std(axis=0, dtype=np.float64)
        z = ((x - mean) / np.where(std > 1e-8, std, 1.0)).astype(np.float64)
        C, cv = _choose_c(z[train], target[train], dataset.group_ids[train], folds)
        probe = _fit(z[train], target[train], C)
        score = {s: float((probe.predict(z[i]) == target[i]).mean()) for s, i in idx.items() if s != "train"}
        gap = score["valid"] - score["test"]
        report.rows.append(ProbeRow(m, C, cv, score["valid"], score["test"], gap, gap > threshold))
    return report
