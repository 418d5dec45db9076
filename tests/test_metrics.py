"""Metrics against hand-computed values and scikit-learn / scipy references."""

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score

from imer.evaluation.metrics import (
    METRICS,
    TASKS,
    MetricAccumulator,
    classification_metrics,
    headline_metrics,
    is_better,
    metric_label,
    modality_accuracy,
    regression_metrics,
    select_metrics,
    task_metrics,
)


def test_classification_by_hand():
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 1, 1, 2, 2])
    m = classification_metrics(y, p, 3)
    assert m["acc"] == pytest.approx(4 / 6)
    assert m["per_class_recall"] == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert m["ua"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # F1 per class: c0 p=1 r=2/3 -> .8 ; c1 p=1/2 r=1/2 -> .5 ; c2 p=1/2 r=1 -> 2/3 ; weights 3,2,1
    assert m["wf1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("seed", range(5))
def test_classification_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    m = classification_metrics(y, p, 4)
    assert m["acc"] == pytest.approx(accuracy_score(y, p))
    assert m["ua"] == pytest.approx(balanced_accuracy_score(y, p))
    assert m["wf1"] == pytest.approx(f1_score(y, p, average="weighted"))
    assert np.array_equal(m["confusion"], confusion_matrix(y, p, labels=range(4)))


def test_ua_ignores_absent_classes_like_sklearn():
    y, p = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])
    assert classification_metrics(y, p, 3)["ua"] == pytest.approx(balanced_accuracy_score(y, p))


def test_regression_by_hand():
    y = np.array([2.0, -1.0, 0.0, 1.4, -2.6])
    s = np.array([1.0, 0.5, -0.2, 3.5, -2.4])
    m = regression_metrics(y, s)
    # non-zero labels: [2, -1, 1.4, -2.6] vs preds [1, .5, 3.5, -2.4] -> signs right, wrong, right, right
    assert m["acc2"] == pytest.approx(3 / 4)
    # with zero: label>=0: T F T T F ; pred>=0: T T F T F -> 3/5
    assert m["acc2_with_zero"] == pytest.approx(3 / 5)
    assert m["mae"] == pytest.approx(np.mean([1.0, 1.5, 0.2, 2.1, 0.2]))
    # acc7: round(clip): y -> 2,-1,0,1,-3 ; s -> 1,0(0.5 rounds to 0),-0,3,-2 -> none equal except 0 == -0
    assert m["acc7"] == pytest.approx(1 / 5)


@pytest.mark.parametrize("seed", range(3))
def test_regression_matches_references(seed):
    rng = np.random.default_rng(seed)
    y = np.round(rng.uniform(-3, 3, 300), 1)
    s = y + rng.normal(0, 1.5, 300)
    m = regression_metrics(y, s)
    nz = y != 0
    assert m["acc2"] == pytest.approx(accuracy_score(y[nz] > 0, s[nz] > 0))
    assert m["f1"] == pytest.approx(f1_score(y[nz] > 0, s[nz] > 0, average="weighted"))
    assert m["corr"] == pytest.approx(pearsonr(y, s)[0])


def test_constant_prediction_has_zero_corr_not_nan():
    """Why Pearson stays hand-written: scipy.stats.pearsonr gives NaN (and a warning) for a constant side."""
    assert regression_metrics(np.array([1.0, -1.0, 2.0]), np.zeros(3))["corr"] == 0.0


def test_no_non_zero_label_gives_zero_acc2_not_an_error():
    """Why the confusion matrix stays numpy: sklearn refuses empty input, and a split (or a modality's present
    utterances) without a non-zero label leaves acc2 and F1 nothing to count."""
    metrics = regression_metrics(np.zeros(3), np.array([0.5, -1.0, 2.0]))
    assert metrics["acc2"] == 0.0 and metrics["f1"] == 0.0 and metrics["acc2_with_zero"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        confusion_matrix(np.zeros(0, dtype=int), np.zeros(0, dtype=int), labels=[0, 1])


def test_modality_accuracy_counts_present_utterances_only():
    y = np.array([0, 1, 1, 0])
    preds = {"a": np.eye(2)[[0, 1, 0, 0]], "t": np.eye(2)[[1, 1, 1, 1]]}
    available = np.array([[1, 1], [1, 0], [0, 1], [1, 1]], dtype=bool)
    acc = modality_accuracy(y, preds, available, "classification")
    assert acc["a"] == pytest.approx(1.0)  # rows 0,1,3 all right
    assert acc["t"] == pytest.approx(1 / 3)  # rows 0,2,3 -> only row 2 right


def test_accumulator_orders_by_index():
    acc = MetricAccumulator("regression", 1, ["a", "t"])
    acc.update(np.array([1.0]), np.array([2.0]), np.ones((1, 2), bool), np.array([1]))
    acc.update(np.array([-1.0]), np.array([-2.0]), np.ones((1, 2), bool), np.array([0]))
    index, labels, preds, _ = acc.ordered()
    assert index.tolist() == [0, 1] and labels.tolist() == [-1.0, 1.0]
    assert acc.compute()["acc2"] == 1.0


def test_metrics_by_availability_pattern_by_hand():
    acc = MetricAccumulator("regression", 1, ["audio", "text"])
    available = np.array([[1, 1], [1, 0], [1, 0], [0, 1], [1, 1]], bool)
    acc.update(np.array([1.0, 2.0, -1.0, -2.0, 0.5]), np.array([0.5, -1.0, -1.0, -0.5, -0.5]), available, np.arange(5))
    parts = acc.by_pattern()
    assert list(parts) == ["audio+text", "audio", "text"]
    assert [parts[k]["n"] for k in parts] == [2, 2, 1]
    assert parts["audio+text"]["acc2"] == 0.5 and parts["audio"]["acc2"] == 0.5 and parts["text"]["acc2"] == 1.0
    assert parts["audio"]["mae"] == pytest.approx(1.5)


def test_selection_direction():
    assert is_better("acc", 0.8, 0.7) and not is_better("acc", 0.7, 0.7)
    assert is_better("mae", 0.5, 0.7) and not is_better("mae", 0.9, 0.7)


def test_metric_registry_names_every_scalar_a_task_computes():
    rng = np.random.default_rng(0)
    computed = {
        "classification": task_metrics("classification", rng.integers(0, 3, 20), rng.normal(size=(20, 3)), 3),
        "regression": task_metrics("regression", rng.normal(size=20), rng.normal(size=20), 1),
    }
    for task, values in computed.items():
        scalars = tuple(k for k, v in values.items() if isinstance(v, float))
        assert scalars == tuple(m.name for m in METRICS.values() if m.task == task)
        assert set(headline_metrics(task)) <= set(select_metrics(task)) <= set(scalars)
    assert all(m.label and m.task in TASKS for m in METRICS.values())
    assert is_better("mae", 0.5, 0.6) and not is_better("corr", 0.5, 0.6) and metric_label("acc2") == "ACC"
