"""Entity-level metrics for token classification, streamed sentence by sentence.

Precision, recall and F1 count whole entities: a predicted entity is right only when its
type, first word and last word all equal a gold entity's (strict span matching). Spans are
decoded by ``data.tags.iob2_spans``, which reads IOB2 exactly as ``seqeval`` does with
``mode="strict", scheme=IOB2``; the tests check every figure here against seqeval on the
same predictions. Per-type figures, the micro average (all entities pooled: seqeval's
default ``f1_score``) and the macro average (the mean over the types that occur in the gold
or the predictions: seqeval's ``classification_report`` "macro avg") are reported, with
``zero_division=0``. Token accuracy is the share of words whose tag is right, ``O``
included (it flatters a model on ``O``-heavy text; entity F1 is the figure to watch).

Beyond the scores, :class:`EntityCounts` sorts every error for analysis: a gold entity with
no predicted entity over any of its words is *missed*, a predicted one over no gold word is
*spurious*, same words but another type is a *type confusion* (counted per pair of types),
overlapping with other boundaries is a *boundary* error.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from tunesmith.data.tags import Span, iob2_spans


def _prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0
    return p, r, f


class EntityCounts:
    """``update`` with gold and predicted IOB2 tag sequences of one sentence (or ``add``
    with spans); ``compute`` at the end. Counts merge by addition (``merge``)."""

    def __init__(self) -> None:
        self.tp: Counter[str] = Counter()
        self.pred: Counter[str] = Counter()
        self.gold: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.confusions: Counter[tuple[str, str]] = Counter()
        self.tokens = 0
        self.tokens_right = 0
        self.sentences = 0

    def update(self, gold: Sequence[str], pred: Sequence[str]) -> tuple[list[Span], list[Span]]:
        """Count one sentence; returns its (gold, predicted) spans."""
        if len(gold) != len(pred):
            raise ValueError(f"gold has {len(gold)} tags and the prediction {len(pred)}")
        self.tokens += len(gold)
        self.tokens_right += sum(g == p for g, p in zip(gold, pred))
        g, p = iob2_spans(gold), iob2_spans(pred)
        self.add(g, p)
        return g, p

    def add(self, gold: Sequence[Span], pred: Sequence[Span]) -> None:
        """Count one sentence given as spans."""
        self.sentences += 1
        gold_set, pred_set = set(gold), set(pred)
        for s in gold_set:
            self.gold[s.type] += 1
        for s in pred_set:
            self.pred[s.type] += 1
            if s in gold_set:
                self.tp[s.type] += 1
        for kind, gs, ps in classify_errors(gold_set, pred_set):
            self.errors[kind] += 1
            if kind == "type_confusion":
                self.confusions[(gs.type, ps.type)] += 1  # type: ignore[union-attr]

    def merge(self, other: EntityCounts) -> None:
        for mine, theirs in ((self.tp, other.tp), (self.pred, other.pred),
                             (self.gold, other.gold), (self.errors, other.errors),
                             (self.confusions, other.confusions)):
            mine.update(theirs)  # type: ignore[arg-type]
        self.tokens += other.tokens
        self.tokens_right += other.tokens_right
        self.sentences += other.sentences

    def compute(self) -> dict[str, Any]:
        """Per-type and averaged P/R/F1, token accuracy and the error breakdown."""
        types = sorted(set(self.gold) | set(self.pred))
        per_type = {}
        for t in types:
            p, r, f = _prf(self.tp[t], self.pred[t], self.gold[t])
            per_type[t] = {"precision": p, "recall": r, "f1": f, "support": self.gold[t],
                           "predicted": self.pred[t]}
        tp, n_pred, n_gold = (sum(c.values()) for c in (self.tp, self.pred, self.gold))
        p, r, f = _prf(tp, n_pred, n_gold)
        k = len(types)
        return {
            "entity_precision": p, "entity_recall": r, "entity_f1": f,
            "entity_macro_precision": sum(v["precision"] for v in per_type.values()) / k
            if k else 0.0,
            "entity_macro_recall": sum(v["recall"] for v in per_type.values()) / k if k else 0.0,
            "entity_macro_f1": sum(v["f1"] for v in per_type.values()) / k if k else 0.0,
            "token_accuracy": self.tokens_right / self.tokens if self.tokens else 0.0,
            "entities": n_gold, "predicted_entities": n_pred, "correct_entities": tp,
            "sentences": self.sentences, "tokens": self.tokens, "per_type": per_type,
            "errors": {k: self.errors.get(k, 0) for k in ERROR_KINDS},
            "type_confusions": [{"gold": g, "predicted": p_, "count": c}
                                for (g, p_), c in self.confusions.most_common()]}


ERROR_KINDS = ("missed", "spurious", "type_confusion", "boundary")


def classify_errors(gold: set[Span], pred: set[Span]
                    ) -> list[tuple[str, Span | None, Span | None]]:
    """Every wrong entity of one sentence as (kind, gold span, predicted span).

    A gold entity not predicted exactly is missed (no predicted entity touches its words),
    a type confusion (a prediction over the same words with another type) or a boundary
    error (an overlapping prediction); a wrong prediction touching no gold entity is
    spurious. A wrong prediction that overlaps a gold entity is accounted for by that
    entity's error, not counted again.
    """
    out: list[tuple[str, Span | None, Span | None]] = []

    def overlaps(a: Span, b: Span) -> bool:
        return a.start < b.end and b.start < a.end

    wrong_pred = pred - gold
    for g in sorted(gold - pred, key=lambda s: (s.start, s.end, s.type)):
        touching = [p for p in wrong_pred if overlaps(g, p)]
        same = [p for p in touching if (p.start, p.end) == (g.start, g.end)]
        if same:
            out.append(("type_confusion", g, same[0]))
        elif touching:
            out.append(("boundary", g, min(touching, key=lambda s: (s.start, s.end))))
        else:
            out.append(("missed", g, None))
    for p in sorted(wrong_pred, key=lambda s: (s.start, s.end, s.type)):
        if not any(overlaps(p, g) for g in gold):
            out.append(("spurious", None, p))
    return out


def scalar_metrics(report: dict[str, Any], prefix: str = "val_") -> dict[str, float]:
    """The numbers logged every evaluation (early-stopping metrics among them)."""
    keys = ("entity_f1", "entity_precision", "entity_recall", "entity_macro_f1",
            "token_accuracy")
    return {f"{prefix}{k}": float(report[k]) for k in keys}


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table: P/R/F1/support per entity type, micro and macro averages."""
    names = list(report["per_type"])
    width = max(12, *(len(n) for n in names)) if names else 12
    lines = [f"{'type':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    for name in names:
        c = report["per_type"][name]
        lines.append(f"{name:<{width}} {c['precision']:>9.4f} {c['recall']:>9.4f} "
                     f"{c['f1']:>9.4f} {c['support']:>8d}")
    lines.append(f"{'micro avg':<{width}} {report['entity_precision']:>9.4f} "
                 f"{report['entity_recall']:>9.4f} {report['entity_f1']:>9.4f} "
                 f"{report['entities']:>8d}")
    lines.append(f"{'macro avg':<{width}} {report['entity_macro_precision']:>9.4f} "
                 f"{report['entity_macro_recall']:>9.4f} {report['entity_macro_f1']:>9.4f} "
                 f"{report['entities']:>8d}")
    lines.append(f"{'token acc':<{width}} {report['token_accuracy']:>9.4f}")
    errs = report["errors"]
    lines.append("errors: " + ", ".join(f"{k.replace('_', ' ')} {errs[k]}" for k in errs))
    return "\n".join(lines)
