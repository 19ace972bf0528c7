"""Class weights, label smoothing, balanced sampling and batching of classification data."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from tunesmith.data.classification import ClsEncoded
from tunesmith.data.collate import collate_cls
from tunesmith.errors import ConfigError
from tunesmith.train.loss import per_example_loss
from tunesmith.train.objectives.classify import balanced_order, class_weight_tensor


def test_balanced_weights_equal_sklearn() -> None:
    y = np.array([0] * 30 + [1] * 6 + [2] * 4)
    w = class_weight_tensor("balanced", [30, 6, 4], False, len(y))
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=y)
    assert w.tolist() == pytest.approx(expected.tolist())


def test_explicit_weights_need_one_per_class() -> None:
    assert class_weight_tensor([1.0, 3.0], [5, 5], False, 10).tolist() == [1.0, 3.0]
    with pytest.raises(ConfigError, match="one weight per class"):
        class_weight_tensor([1.0, 2.0, 3.0], [5, 5], False, 10)
    assert class_weight_tensor("none", [5, 5], False, 10) is None


def test_multi_label_balanced_weights_are_negatives_over_positives() -> None:
    w = class_weight_tensor("balanced", [2, 5], True, 10)
    assert w.tolist() == pytest.approx([4.0, 1.0])


def test_label_smoothing_and_weights_follow_torch() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    got = per_example_loss(logits, y, False, 0.1).mean()
    assert float(got) == pytest.approx(float(F.cross_entropy(logits, y, label_smoothing=0.1)))
    w = torch.tensor([1.0, 2.0, 0.5])
    got = per_example_loss(logits, y, False, 0.0, w)
    assert got.tolist() == pytest.approx(
        F.cross_entropy(logits, y, weight=w, reduction="none").tolist())


def test_multi_label_loss_is_mean_bce_per_example_with_smoothing() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    got = per_example_loss(logits, y, True, 0.2)
    target = y * 0.8 + 0.1
    expected = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(-1)
    assert got.tolist() == pytest.approx(expected.tolist())


def test_balanced_sampling_evens_out_classes_and_is_deterministic() -> None:
    labels = [0] * 90 + [1] * 10
    order = balanced_order(labels, seed=1, epoch=0)
    assert len(order) == 100 and order == balanced_order(labels, seed=1, epoch=0)
    assert order != balanced_order(labels, seed=1, epoch=1)
    many = [labels[i] for e in range(20) for i in balanced_order(labels, 1, e)]
    share = Counter(many)[1] / len(many)
    assert 0.45 < share < 0.55


def test_balanced_sampling_multi_label_favours_rare_labels() -> None:
    labels = [[1, 0]] * 45 + [[0, 1]] * 5
    many = [labels[i][1] for e in range(20) for i in balanced_order(labels, 0, e)]
    assert 0.4 < sum(many) / len(many) < 0.6


def test_collate_pads_to_a_multiple_of_eight_with_labels_per_example() -> None:
    ex = [ClsEncoded([2, 5, 6, 3], 1, "f:1"), ClsEncoded([2, 7, 3], 0, "f:2")]
    batch = collate_cls(ex, pad_id=0, multi_label=False)
    assert batch["input_ids"].shape == (2, 8) and batch["labels"].tolist() == [1, 0]
    assert batch["attention_mask"].sum(1).tolist() == [4, 3]
    assert "token_type_ids" not in batch
    ml = collate_cls([ClsEncoded([2, 3], [1, 0, 1], "f:1", [0, 0])], 0, multi_label=True)
    assert ml["labels"].dtype == torch.float32 and ml["labels"].tolist() == [[1.0, 0.0, 1.0]]
    assert ml["token_type_ids"].shape == (1, 8)
