"""The statistics of human judgements: win rates with 95% intervals, a Bradley–Terry ranking
with intervals, and agreement between raters (Cohen's and Fleiss' kappa).

- **Win rate** of A over B: each item scores 1 (A better), 0 (B better) or ½ (tie or both
  bad), averaged over the item's reviewers; the win rate is the mean over items, and its 95%
  interval the Wilson score interval with n = items (exact coverage for one verdict per
  item without ties, conservative with ties, which only lower the variance). Items, not
  ratings, are the unit: two reviewers of one item are not two independent samples.
- **Bradley–Terry**: P(i beats j) = p_i / (p_i + p_j), fitted by maximum likelihood with
  Hunter's MM iteration (ties count half a win each way). ``pseudo`` adds that many virtual
  ties to every pair compared, so a model that won every comparison gets a finite strength
  (0 gives the plain MLE). Strengths are log p, centred on 0; their 95% intervals come from
  the Fisher information (its pseudo-inverse is the covariance under the sum-to-zero
  constraint). For two models this reduces to log(w / l) and var = 1/w + 1/l.
- **Cohen's kappa** (two raters, the items both rated) and **Fleiss' kappa** (any number of
  raters per item, at least two): chance-corrected agreement, 1 perfect, 0 chance level.
  Undefined (NaN) when chance agreement is already 1.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


def wilson(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (``successes`` may be fractional)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class WinRate:
    """A over B on the items where both were shown."""

    a: str
    b: str
    items: int
    wins: int  # items A won (score > ½)
    losses: int
    ties: int
    rate: float
    low: float
    high: float


def win_rate(a: str, b: str, scores: Sequence[float]) -> WinRate:
    """``scores``: one per item, A's mean score in [0, 1] (1 win, ½ tie, 0 loss)."""
    n = len(scores)
    total = float(sum(scores))
    low, high = wilson(total, n)
    return WinRate(a, b, n, sum(s > 0.5 for s in scores), sum(s < 0.5 for s in scores),
                   sum(s == 0.5 for s in scores), total / n if n else float("nan"), low, high)


@dataclass
class Strength:
    name: str
    strength: float  # log p, centred
    low: float
    high: float
    rank: int


def bradley_terry(models: Sequence[str], comparisons: Sequence[tuple[str, str, float]],
                  pseudo: float = 0.5, tol: float = 1e-10, max_iter: int = 10_000
                  ) -> list[Strength]:
    """Rank ``models`` from ``(a, b, score of a)`` comparisons; best first."""
    idx = {m: i for i, m in enumerate(models)}
    k = len(models)
    wins = np.zeros((k, k))  # wins[i, j]: i's (fractional) wins over j
    for a, b, score in comparisons:
        wins[idx[a], idx[b]] += score
        wins[idx[b], idx[a]] += 1.0 - score
    games = wins + wins.T
    if pseudo:
        played = games > 0
        wins = wins + played * pseudo / 2
        games = wins + wins.T
    w = wins.sum(axis=1)
    p = np.ones(k)
    for _ in range(max_iter):
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1)
        new = np.where(denom > 0, w / np.where(denom > 0, denom, 1), p)
        new = np.maximum(new, 1e-300)
        new /= np.exp(np.mean(np.log(new)))
        done = np.max(np.abs(np.log(new) - np.log(p))) < tol
        p = new
        if done:
            break
    theta = np.log(p) - np.mean(np.log(p))
    pi = p[:, None] / (p[:, None] + p[None, :])
    info = -games * pi * pi.T
    np.fill_diagonal(info, 0.0)
    np.fill_diagonal(info, -info.sum(axis=1))
    se = np.sqrt(np.clip(np.diag(np.linalg.pinv(info)), 0.0, None))
    order = sorted(range(k), key=lambda i: -theta[i])
    return [Strength(models[i], float(theta[i]), float(theta[i] - Z95 * se[i]),
                     float(theta[i] + Z95 * se[i]), rank + 1) for rank, i in enumerate(order)]


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two raters' labels on the same items (same order)."""
    if len(a) != len(b) or not a:
        raise ValueError("cohen_kappa needs two equally long, non-empty label lists")
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[c] * cb[c] for c in ca) / (n * n)
    if expected >= 1.0:
        return float("nan")
    return (observed - expected) / (1.0 - expected)


def fleiss_kappa(items: Sequence[Sequence[Hashable]]) -> float:
    """Fleiss' kappa: ``items`` are each item's labels (one per rater, at least two; the
    number of raters may vary between items)."""
    rated = [list(labels) for labels in items if len(labels) >= 2]
    if not rated:
        return float("nan")
    totals: Counter[Hashable] = Counter()
    agreement = []
    for labels in rated:
        counts = Counter(labels)
        n = len(labels)
        totals.update(counts)
        agreement.append(sum(c * (c - 1) for c in counts.values()) / (n * (n - 1)))
    all_n = sum(totals.values())
    expected = sum((c / all_n) ** 2 for c in totals.values())
    if expected >= 1.0:
        return float("nan")
    return (float(np.mean(agreement)) - expected) / (1.0 - expected)


def disagreement(labels: Sequence[Hashable]) -> float:
    """How split one item's verdicts are: 1 − Σ share² (0 when all agree)."""
    n = len(labels)
    return 1.0 - sum((c / n) ** 2 for c in Counter(labels).values()) if n else 0.0


def agreement(items: Sequence[Sequence[tuple[str, Hashable]]]) -> dict[str, object]:
    """Agreement over items judged two or more times: ``items`` are each item's (rater,
    label) pairs. Fleiss' kappa over all of them, Cohen's kappa (and raw agreement) for
    every pair of raters on the items they share. NaN figures come back as None."""
    multi = [sorted(v) for v in items if len(v) >= 2]
    if not multi:
        return {"items": 0, "fleiss": None, "pairs": []}
    pairs: dict[tuple[str, str], tuple[list[Hashable], list[Hashable]]] = {}
    for v in multi:
        for i in range(len(v)):
            for j in range(i + 1, len(v)):
                x, y = pairs.setdefault((v[i][0], v[j][0]), ([], []))
                x.append(v[i][1])
                y.append(v[j][1])
    return {"items": len(multi), "fleiss": _finite(fleiss_kappa([[lab for _, lab in v]
                                                                 for v in multi])),
            "pairs": [{"raters": [a, b], "items": len(x), "cohen": _finite(cohen_kappa(x, y)),
                       "agree": sum(p == q for p, q in zip(x, y)) / len(x)}
                      for (a, b), (x, y) in sorted(pairs.items())]}


def _finite(x: float) -> float | None:
    return None if x != x else float(x)
