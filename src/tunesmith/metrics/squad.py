"""Extractive-QA metrics: exact match and token F1 with the official SQuAD normalisation.

Answers are compared after the official scripts' ``normalize_answer`` — lower case, ASCII
punctuation removed, the articles *a/an/the* removed, whitespace collapsed — and a prediction
scores the best of its gold answers. Figures are percentages (0-100), as the scripts print.

One rule covers both SQuAD versions: F1 is the v2.0 script's ``compute_f1``, which equals
v1.1's ``f1_score`` whenever the gold answer or the prediction has a token after
normalisation, and also scores unanswerable questions (gold ``[]`` or ``[""]``): 1 when the
prediction is empty, else 0. (The only difference from v1.1: both empty after normalisation,
e.g. gold "the" and prediction "a", is 1 here and 0 in v1.1 — v1.1 has no empty answers, so
its figures are unchanged.) The tests check both scripts' figures on constructed predictions.

:class:`SquadCounts` streams (sum of EM, sum of F1, count), split into questions with and
without an answer, and :func:`best_null_threshold` is the v2.0 script's ``find_best_thresh``:
the no-answer score threshold that maximises F1 on validation.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """The official normalisation (both SQuAD scripts)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    pred_toks = normalize_answer(prediction).split()
    gold_toks = normalize_answer(gold).split()
    if not pred_toks or not gold_toks:
        return float(pred_toks == gold_toks)
    common = Counter(pred_toks) & Counter(gold_toks)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def score(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """(exact match, F1) of one prediction: the best over the gold answers; an unanswerable
    question (no gold answer) is right only with an empty prediction."""
    golds = [g for g in golds if normalize_answer(g)] or [""]
    return (max(exact_match(prediction, g) for g in golds),
            max(f1(prediction, g) for g in golds))


class SquadCounts:
    """Running sums for EM/F1 overall and for questions with / without an answer."""

    def __init__(self) -> None:
        self.sums: dict[str, list[float]] = {k: [0.0, 0.0, 0] for k in ("all", "has", "no")}

    def update(self, prediction: str, golds: Sequence[str]) -> tuple[float, float]:
        em, f = score(prediction, golds)
        answerable = any(normalize_answer(g) for g in golds)
        for key in ("all", "has" if answerable else "no"):
            s = self.sums[key]
            s[0] += em
            s[1] += f
            s[2] += 1
        return em, f

    def compute(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, prefix in (("all", ""), ("has", "has_answer_"), ("no", "no_answer_")):
            em, f, n = self.sums[key]
            if key == "all" or n:
                out[f"{prefix}exact_match"] = 100.0 * em / n if n else 0.0
                out[f"{prefix}f1"] = 100.0 * f / n if n else 0.0
                out[f"{prefix}total"] = int(n)
        return out


def best_null_threshold(null_margins: Sequence[float], answerable: Sequence[bool],
                        span_scores: Sequence[float]) -> tuple[float, float]:
    """The threshold on ``null_margin`` (no-answer score minus best-span score) that
    maximises the summed ``span_scores`` (EM or F1 of the best span, per question) when
    questions whose margin is above it are answered "no answer"; returns (threshold, best
    score in percent). The v2.0 script's ``find_best_thresh``, vectorised over sorted
    margins: start from "always no answer" and answer questions in order of margin."""
    n = len(null_margins)
    if n == 0:
        return 0.0, 0.0
    current = float(sum(1 for a in answerable if not a))  # everything predicted empty
    best, best_thresh = current, min(null_margins) - 1.0
    for i in sorted(range(n), key=lambda k: null_margins[k]):
        current += span_scores[i] if answerable[i] else (span_scores[i] - 1.0)
        if current > best:
            best, best_thresh = current, null_margins[i]
    return best_thresh, 100.0 * best / n
