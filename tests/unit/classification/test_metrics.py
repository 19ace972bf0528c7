"""Streaming classification metrics equal scikit-learn's on fixed examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    hamming_loss,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
)

from tunesmith.metrics.classification import (
    ConfusionMatrix,
    MultiLabelCounts,
    format_report,
    scalar_metrics,
)

NAMES = ["a", "b", "c", "d"]
# class 3 ("d") never occurs: scikit-learn leaves it out of macro averages by default
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2, 0, 1, 2, 0, 0, 1]
Y_PRED = [0, 1, 0, 1, 2, 2, 2, 0, 2, 0, 1, 1, 2, 0, 1]


def _streamed(chunks: int = 3) -> dict:
    cm = ConfusionMatrix(NAMES)
    for part_t, part_p in zip(np.array_split(Y_TRUE, chunks), np.array_split(Y_PRED, chunks)):
        cm.update(torch.tensor(part_p), torch.tensor(part_t))
    return cm.compute()


@pytest.mark.parametrize("average", ["macro", "micro", "weighted"])
def test_single_label_averages_match_sklearn(average: str) -> None:
    report = _streamed()
    p, r, f, _ = precision_recall_fscore_support(Y_TRUE, Y_PRED, average=average,
                                                 zero_division=0)
    assert report[f"{average}_precision"] == pytest.approx(p)
    assert report[f"{average}_recall"] == pytest.approx(r)
    assert report[f"{average}_f1"] == pytest.approx(f)


def test_single_label_accuracy_per_class_and_matrix_match_sklearn() -> None:
    report = _streamed()
    assert report["accuracy"] == pytest.approx(accuracy_score(Y_TRUE, Y_PRED))
    assert report["examples"] == len(Y_TRUE)
    p, r, f, s = precision_recall_fscore_support(Y_TRUE, Y_PRED, labels=[0, 1, 2, 3],
                                                 zero_division=0)
    for i, name in enumerate(NAMES):
        c = report["per_class"][name]
        assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((p[i], r[i], f[i]))
        assert c["support"] == s[i]
    assert report["confusion_matrix"] == confusion_matrix(Y_TRUE, Y_PRED,
                                                          labels=[0, 1, 2, 3]).tolist()
    assert report["micro_f1"] == pytest.approx(report["accuracy"])


def test_streaming_in_chunks_equals_one_update() -> None:
    assert _streamed(1) == _streamed(5)


def test_zero_division_gives_zero_like_sklearn() -> None:
    cm = ConfusionMatrix(["x", "y"])
    cm.update([0, 0, 0], [0, 1, 1])  # never predicts y
    report = cm.compute()
    assert report["per_class"]["y"]["precision"] == 0.0
    assert report["macro_f1"] == pytest.approx(
        f1_score([0, 1, 1], [0, 0, 0], average="macro", zero_division=0))


def test_mismatched_shapes_are_a_bug() -> None:
    with pytest.raises(ValueError):
        ConfusionMatrix(["x", "y"]).update([0, 1], [0])


ML_TRUE = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0]])
ML_PRED = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0]])


@pytest.mark.parametrize("average", ["macro", "micro", "weighted"])
def test_multi_label_averages_match_sklearn(average: str) -> None:
    counts = MultiLabelCounts(["x", "y", "z"])
    counts.update(torch.tensor(ML_PRED[:4]), torch.tensor(ML_TRUE[:4]))
    counts.update(torch.tensor(ML_PRED[4:]), torch.tensor(ML_TRUE[4:]))
    report = counts.compute()
    p, r, f, _ = precision_recall_fscore_support(ML_TRUE, ML_PRED, average=average,
                                                 zero_division=0)
    assert (report[f"{average}_precision"], report[f"{average}_recall"],
            report[f"{average}_f1"]) == pytest.approx((p, r, f))
    assert report["accuracy"] == pytest.approx(accuracy_score(ML_TRUE, ML_PRED))
    assert report["hamming_loss"] == pytest.approx(hamming_loss(ML_TRUE, ML_PRED))
    assert report["confusion_matrix"] == multilabel_confusion_matrix(ML_TRUE, ML_PRED).tolist()


def test_multi_label_never_present_class_counts_in_macro_like_sklearn() -> None:
    t = np.array([[1, 0], [1, 0]])
    p = np.array([[1, 0], [0, 0]])
    counts = MultiLabelCounts(["x", "y"])
    counts.update(torch.tensor(p), torch.tensor(t))
    assert counts.compute()["macro_f1"] == pytest.approx(
        f1_score(t, p, average="macro", zero_division=0))


def test_scalar_metrics_and_report_text() -> None:
    report = _streamed()
    scalars = scalar_metrics(report)
    assert scalars["val_accuracy"] == report["accuracy"]
    assert {"val_macro_f1", "val_micro_f1", "val_weighted_f1"} <= set(scalars)
    text = format_report(report)
    assert "macro avg" in text and "confusion matrix" in text and "d" in text
