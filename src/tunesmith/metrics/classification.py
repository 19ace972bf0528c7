"""Classification metrics from counts that stream batch by batch.

Single-label: a confusion matrix (rows = true class, columns = predicted) gives accuracy,
precision / recall / F1 per class and their macro, micro and weighted averages. Multi-label:
per-class true/false positive/negative counts give the same averages plus exact-match
(subset) accuracy and Hamming loss. Definitions follow scikit-learn with
``zero_division=0``: a ratio with a zero denominator is 0. Single-label macro / weighted
averages run over the classes that occur in the targets or the predictions (scikit-learn's
default when ``labels`` is not given); multi-label averages run over every class, as
scikit-learn does for indicator matrices. The tests check every figure against scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def _div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp(min=1e-12), torch.zeros_like(num))


def _prf(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    precision = _div(tp, tp + fp)
    recall = _div(tp, tp + fn)
    f1 = _div(2 * tp, 2 * tp + fp + fn)
    return precision, recall, f1


def _averages(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, present: torch.Tensor
              ) -> dict[str, float]:
    """Macro, micro and weighted P/R/F1 over the classes flagged in ``present``."""
    precision, recall, f1 = _prf(tp, fp, fn)
    support = tp + fn
    out: dict[str, float] = {}
    n = int(present.sum())
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        out[f"macro_{name}"] = float(values[present].sum() / n) if n else 0.0
        total = support[present].sum()
        out[f"weighted_{name}"] = float((values[present] * support[present]).sum() / total) \
            if total > 0 else 0.0
    mp, mr, mf = _prf(tp[present].sum(), fp[present].sum(), fn[present].sum())
    out.update(micro_precision=float(mp), micro_recall=float(mr), micro_f1=float(mf))
    return out


def _per_class(names: Sequence[str], tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor
               ) -> dict[str, dict[str, float]]:
    precision, recall, f1 = _prf(tp, fp, fn)
    return {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(tp[i] + fn[i]),
                   "predicted": int(tp[i] + fp[i])}
            for i, name in enumerate(names)}


class ConfusionMatrix:
    """Single-label counts; ``update`` with predicted and true class ids, ``compute`` at the end."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.k = len(self.names)
        self.matrix = torch.zeros((self.k, self.k), dtype=torch.float64)

    def update(self, preds: torch.Tensor | Sequence[int], targets: torch.Tensor | Sequence[int]
               ) -> None:
        p = torch.as_tensor(preds, dtype=torch.long).reshape(-1).cpu()
        t = torch.as_tensor(targets, dtype=torch.long).reshape(-1).cpu()
        if p.shape != t.shape:
            raise ValueError(f"predictions {tuple(p.shape)} and targets {tuple(t.shape)} differ")
        flat = torch.bincount(t * self.k + p, minlength=self.k * self.k)
        self.matrix += flat.reshape(self.k, self.k).double()

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix

    @property
    def total(self) -> int:
        return int(self.matrix.sum())

    def compute(self) -> dict[str, Any]:
        """Scalar metrics, per-class figures and the matrix (rows true, columns predicted)."""
        m = self.matrix
        tp = m.diag()
        fp = m.sum(0) - tp
        fn = m.sum(1) - tp
        present = (m.sum(0) + m.sum(1)) > 0
        total = float(m.sum())
        out: dict[str, Any] = {"accuracy": float(tp.sum() / total) if total else 0.0,
                               "examples": int(total)}
        out.update(_averages(tp, fp, fn, present))
        out["per_class"] = _per_class(self.names, tp, fp, fn)
        out["confusion_matrix"] = m.long().tolist()
        out["labels"] = self.names
        return out


class MultiLabelCounts:
    """Multi-label counts; ``update`` with 0/1 prediction and target matrices [n, classes]."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.k = len(self.names)
        self.tp = torch.zeros(self.k, dtype=torch.float64)
        self.fp = torch.zeros(self.k, dtype=torch.float64)
        self.fn = torch.zeros(self.k, dtype=torch.float64)
        self.tn = torch.zeros(self.k, dtype=torch.float64)
        self.exact = 0
        self.n = 0

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        p = torch.as_tensor(preds).reshape(-1, self.k).cpu().bool()
        t = torch.as_tensor(targets).reshape(-1, self.k).cpu().bool()
        self.tp += (p & t).sum(0).double()
        self.fp += (p & ~t).sum(0).double()
        self.fn += (~p & t).sum(0).double()
        self.tn += (~p & ~t).sum(0).double()
        self.exact += int((p == t).all(1).sum())
        self.n += int(p.shape[0])

    @property
    def total(self) -> int:
        return self.n

    def compute(self) -> dict[str, Any]:
        # scikit-learn averages over every column of an indicator matrix, present or not
        present = torch.ones(self.k, dtype=torch.bool)
        out: dict[str, Any] = {
            "accuracy": self.exact / self.n if self.n else 0.0,  # exact match (subset)
            "hamming_loss": float((self.fp + self.fn).sum() / (self.n * self.k)) if self.n
            else 0.0,
            "examples": self.n}
        out.update(_averages(self.tp, self.fp, self.fn, present))
        out["per_class"] = _per_class(self.names, self.tp, self.fp, self.fn)
        # scikit-learn's multilabel_confusion_matrix layout: [[tn, fp], [fn, tp]] per class
        out["confusion_matrix"] = [[[int(self.tn[i]), int(self.fp[i])],
                                    [int(self.fn[i]), int(self.tp[i])]] for i in range(self.k)]
        out["labels"] = self.names
        return out


def scalar_metrics(report: dict[str, Any], prefix: str = "val_") -> dict[str, float]:
    """The numbers worth logging every evaluation (early-stopping metrics among them)."""
    keys = ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "macro_precision",
            "macro_recall", "micro_precision", "micro_recall", "hamming_loss")
    return {f"{prefix}{k}": float(report[k]) for k in keys if k in report}


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table: per-class P/R/F1/support, the averages and the confusion matrix."""
    names = report["labels"]
    width = max(12, *(len(n) for n in names)) if names else 12
    lines = [f"{'class':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    for name in names:
        c = report["per_class"][name]
        lines.append(f"{name:<{width}} {c['precision']:>9.4f} {c['recall']:>9.4f} "
                     f"{c['f1']:>9.4f} {c['support']:>8d}")
    for avg in ("macro", "micro", "weighted"):
        lines.append(f"{avg + ' avg':<{width}} {report[avg + '_precision']:>9.4f} "
                     f"{report[avg + '_recall']:>9.4f} {report[avg + '_f1']:>9.4f} "
                     f"{report['examples']:>8d}")
    lines.append(f"{'accuracy':<{width}} {report['accuracy']:>9.4f}")
    matrix = report["confusion_matrix"]
    if matrix and isinstance(matrix[0][0], int):
        lines.append("confusion matrix (rows: true, columns: predicted)")
        cell = max(6, *(len(n) for n in names))
        lines.append(" " * width + " " + " ".join(f"{n[:cell]:>{cell}}" for n in names))
        for name, row in zip(names, matrix):
            lines.append(f"{name:<{width}} " + " ".join(f"{v:>{cell}d}" for v in row))
    return "\n".join(lines)
