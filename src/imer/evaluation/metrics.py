"""Metrics of the field, as in ``protocol.md``: a functional core plus a small accumulator.

Classification: ``acc`` (overall accuracy, papers' WA), ``ua`` (mean recall
over classes present in the labels), ``wf1`` (support-weighted F1), per-class
recall and the confusion matrix. Regression (sentiment in [-3, 3]): ``acc2``
and ``f1`` on utterances with a non-zero label (positive = label > 0,
predicted positive = score > 0), ``acc2_with_zero`` (label >= 0 vs score >= 0
on all), ``mae``, ``corr`` (Pearson), ``acc7`` (round after clipping to -3..3).

:data:`METRICS` holds one entry per metric: its label in tables, direction,
task, and whether selection may use it; everything else (selection choices,
table labels, ×100 or raw display, the headline pair) is derived from it.
Adding a metric is an entry there plus its line in the task's function below.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TASKS = ("classification", "regression")


@dataclass(frozen=True)
class Metric:
    """One metric: ``label`` in tables, ``task`` it is computed for, and how it is read."""

    name: str
    label: str
    task: str
    higher_is_better: bool = True
    select: bool = True  # model selection may use it (``train.select_metric``)
    headline: bool = False  # one of the two numbers of the papers' tables (ACC/UA, ACC/F1)
    raw: bool = False  # shown as it is (3 decimals), not as a fraction ×100
    reads_sign: bool = False  # reads a regression label's sign as its class (meaningless for labels of one sign)


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("acc", "ACC", "classification", headline=True),
    Metric("ua", "UA", "classification", headline=True),
    Metric("wf1", "WF1", "classification"),
    Metric("acc2", "ACC", "regression", headline=True, reads_sign=True),
    Metric("f1", "F1", "regression", headline=True, reads_sign=True),
    Metric("acc2_with_zero", "acc2_with_zero", "regression", reads_sign=True),
    Metric("mae", "MAE", "regression", higher_is_better=False, raw=True),
    Metric("corr", "Corr", "regression", raw=True),
    Metric("acc7", "ACC7", "regression", reads_sign=True),
)}


def select_metrics(task: str) -> tuple[str, ...]:
    """The metrics ``train.select_metric`` may name for ``task``."""
    return tuple(m.name for m in METRICS.values() if m.task == task and m.select)


def metric_label(name: str) -> str:
    """How tables name metric ``name`` (the name itself when it is not a registered metric)."""
    return METRICS[name].label if name in METRICS else name


def lower_is_better(name: str) -> bool:
    """Whether a smaller value of ``name`` is better (unregistered names: higher is better)."""
    return name in METRICS and not METRICS[name].higher_is_better


def shown_raw(name: str) -> bool:
    """Whether tables show ``name`` as it is rather than as a fraction ×100."""
    return name in METRICS and METRICS[name].raw


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``[C, C]`` counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def _weighted_f1(cm: np.ndarray) -> float:
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return float((f1 * support).sum() / support.sum()) if support.sum() else 0.0


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    """``acc``, ``ua``, ``wf1``, ``per_class_recall`` and ``confusion`` from class indices."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(axis=1)
    recall = np.divide(np.diag(cm), support, out=np.zeros(num_classes), where=support > 0)
    return {
        "acc": float(np.trace(cm) / max(cm.sum(), 1)),
        "ua": float(recall[support > 0].mean()) if (support > 0).any() else 0.0,
        "wf1": _weighted_f1(cm),
        "per_class_recall": recall.tolist(),
        "confusion": cm.tolist(),
    }


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant (instead of NaN)."""
    a = np.asarray(a, dtype=np.float64) - np.mean(a)
    b = np.asarray(b, dtype=np.float64) - np.mean(b)
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def binary_accuracy_f1(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, float]:
    """(acc2, weighted F1) of the sign on utterances with non-zero label."""
    y_true = np.asarray(y_true, dtype=np.float64)
    nonzero = y_true != 0
    if not nonzero.any():
        return 0.0, 0.0
    truth = (y_true[nonzero] > 0).astype(int)
    pred = (np.asarray(y_score)[nonzero] > 0).astype(int)
    cm = confusion_matrix(truth, pred, 2)
    return float(np.trace(cm) / cm.sum()), _weighted_f1(cm)


def regression_metrics(y_true: np.ndarray, y_score: np.ndarray) -> dict:
    """``acc2``, ``f1``, ``acc2_with_zero``, ``mae``, ``corr``, ``acc7``."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    acc2, f1 = binary_accuracy_f1(y_true, y_score)
    return {
        "acc2": acc2,
        "f1": f1,
        "acc2_with_zero": float(np.mean((y_true >= 0) == (y_score >= 0))),
        "mae": float(np.mean(np.abs(y_true - y_score))),
        "corr": pearson(y_true, y_score),
        "acc7": float(np.mean(np.round(np.clip(y_true, -3, 3)) == np.round(np.clip(y_score, -3, 3)))),
    }


def modality_accuracy(y_true: np.ndarray, predictions: dict[str, np.ndarray], available: np.ndarray, task: str) -> dict[str, float]:
    """Accuracy of each modality's own head on utterances where that modality is present.

    Classification: accuracy of the argmax; regression: ``acc2`` (sign on
    non-zero labels). Modalities never present give NaN.
    """
    out = {}
    for j, (m, pred) in enumerate(predictions.items()):
        present = np.asarray(available)[:, j]
        if not present.any():
            out[m] = float("nan")
        elif task == "classification":
            out[m] = float(np.mean(np.asarray(pred)[present].argmax(axis=-1) == np.asarray(y_true)[present]))
        else:
            out[m] = binary_accuracy_f1(np.asarray(y_true)[present], np.asarray(pred)[present])[0]
    return out


def task_metrics(task: str, y_true: np.ndarray, prediction: np.ndarray, num_classes: int) -> dict:
    """Metrics of ``task`` from raw predictions (logits ``[N, C]`` or scores ``[N]``)."""
    if task == "classification":
        return classification_metrics(y_true, np.asarray(prediction).argmax(axis=-1), num_classes)
    return regression_metrics(y_true, prediction)


def headline_metrics(task: str) -> tuple[str, str]:
    """The two numbers the papers' tables show: ACC/UA or ACC/F1."""
    kind = "classification" if task == "classification" else "regression"
    first, second = (m.name for m in METRICS.values() if m.task == kind and m.headline)
    return first, second


def is_better(metric: str, new: float, best: float | None) -> bool:
    """Whether ``new`` improves on ``best`` for ``metric`` (respecting its direction)."""
    if best is None:
        return True
    return new < best if lower_is_better(metric) else new > best


class MetricAccumulator:
    """Collect predictions over batches, then compute all metrics of the task at once."""

    def __init__(self, task: str, num_classes: int, modalities: list[str]) -> None:
        self.task, self.num_classes, self.modalities = task, num_classes, modalities
        self.labels: list[np.ndarray] = []
        self.predictions: list[np.ndarray] = []
        self.index: list[np.ndarray] = []
        self.available: list[np.ndarray] = []
        self.modality_predictions: dict[str, list[np.ndarray]] = {}

    def update(self, labels: np.ndarray, prediction: np.ndarray, available: np.ndarray, index: np.ndarray, modality_predictions: dict[str, np.ndarray] | None = None) -> None:
        self.labels.append(labels)
        self.predictions.append(prediction)
        self.available.append(available)
        self.index.append(index)
        for m, p in (modality_predictions or {}).items():
            self.modality_predictions.setdefault(m, []).append(p)

    def ordered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(index, labels, predictions, available), sorted by utterance position."""
        index = np.concatenate(self.index)
        order = np.argsort(index, kind="stable")
        return index[order], np.concatenate(self.labels)[order], np.concatenate(self.predictions)[order], np.concatenate(self.available)[order]

    def by_pattern(self) -> dict[str, dict]:
        """All metrics per availability pattern (``"audio+text"``, ``"text"``, ...; ``n`` utterances each).

        Where the points are won or lost: e.g. utterances that kept only their
        weakest modality must get their answer from context or not at all.
        """
        _, labels, preds, available = self.ordered()
        out = {}
        for pattern in np.unique(available, axis=0):
            rows = (available == pattern).all(axis=1)
            name = "+".join(m for m, kept in zip(self.modalities, pattern) if kept) or "none"
            out[name] = {"n": int(rows.sum()), **task_metrics(self.task, labels[rows], preds[rows], self.num_classes)}
        return dict(sorted(out.items(), key=lambda item: (-item[0].count("+"), item[0])))

    def compute(self) -> dict:
        _, labels, preds, available = self.ordered()
        result = task_metrics(self.task, labels, preds, self.num_classes)
        if self.modality_predictions:
            index = np.concatenate(self.index)
            order = np.argsort(index, kind="stable")
            per = {m: np.concatenate(p)[order] for m, p in self.modality_predictions.items()}
            result["modality_acc"] = modality_accuracy(labels, per, available, self.task)
        return result
