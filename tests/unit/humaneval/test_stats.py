"""The statistics against hand computations and reference implementations."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from tunesmith.humaneval.stats import (
    Z95,
    bradley_terry,
    cohen_kappa,
    disagreement,
    fleiss_kappa,
    wilson,
    win_rate,
)


def test_wilson_by_hand() -> None:
    # 7 of 10: p = .7, centre = (.7 + z²/20) / (1 + z²/10), half-width by the formula
    z = Z95
    centre = (0.7 + z * z / 20) / (1 + z * z / 10)
    half = z * math.sqrt(0.7 * 0.3 / 10 + z * z / 400) / (1 + z * z / 10)
    lo, hi = wilson(7, 10)
    assert lo == pytest.approx(centre - half) and hi == pytest.approx(centre + half)
    assert (round(lo, 4), round(hi, 4)) == (0.3968, 0.8922)  # the textbook figures
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(20, 20)
    assert hi == 1.0 and lo == pytest.approx(0.8389, abs=1e-4)


def test_win_rate_counts_ties_half() -> None:
    wr = win_rate("tuned", "base", [1, 1, 1, 0, 0.5, 1.0, 0.5, 1])
    assert (wr.items, wr.wins, wr.losses, wr.ties) == (8, 5, 1, 2)
    assert wr.rate == pytest.approx(6 / 8)
    assert (wr.low, wr.high) == pytest.approx(wilson(6, 8))


def test_bradley_terry_two_models_is_the_log_odds() -> None:
    comps = [("a", "b", 1.0)] * 7 + [("a", "b", 0.0)] * 3
    ranked = bradley_terry(["a", "b"], comps, pseudo=0)
    a, b = ranked
    assert a.name == "a" and a.rank == 1 and b.rank == 2
    assert a.strength - b.strength == pytest.approx(math.log(7 / 3), abs=1e-8)
    se_diff = math.sqrt(1 / 7 + 1 / 3)  # var(log w/l) = 1/w + 1/l; each side carries half
    assert a.high - a.strength == pytest.approx(Z95 * se_diff / 2, rel=1e-6)
    # a model that won everything stays finite with the default virtual ties
    ranked = bradley_terry(["a", "b"], [("a", "b", 1.0)] * 10)
    assert ranked[0].strength - ranked[1].strength == pytest.approx(math.log(10.25 / 0.25))


def _neg_loglik(theta: np.ndarray, idx: dict[str, int], comps: list) -> float:
    total = 0.0
    for a, b, s in comps:
        d = theta[idx[a]] - theta[idx[b]]
        total -= s * -np.logaddexp(0, -d) + (1 - s) * -np.logaddexp(0, d)
    return total


def test_bradley_terry_is_the_maximum_likelihood_fit() -> None:
    from scipy.optimize import minimize

    rng = random.Random(0)
    true = {"a": 1.0, "b": 0.3, "c": -0.2, "d": -1.1}
    models = list(true)
    comps = []
    for _ in range(400):
        x, y = rng.sample(models, 2)
        p = 1 / (1 + math.exp(true[y] - true[x]))
        r = rng.random()
        comps.append((x, y, 1.0 if r < p * 0.9 else 0.5 if r < p * 0.9 + 0.1 else 0.0))
    ranked = bradley_terry(models, comps, pseudo=0)
    idx = {m: i for i, m in enumerate(models)}
    ref = minimize(_neg_loglik, np.zeros(4), args=(idx, comps), method="BFGS").x
    ref -= ref.mean()
    got = {s.name: s.strength for s in ranked}
    for m in models:
        assert got[m] == pytest.approx(ref[idx[m]], abs=1e-4)
    assert [s.name for s in ranked] == ["a", "b", "c", "d"]
    assert all(s.low < s.strength < s.high for s in ranked)


def test_cohen_kappa_equals_scikit_learn() -> None:
    from sklearn.metrics import cohen_kappa_score

    rng = random.Random(1)
    for _ in range(20):
        cats = ["left", "right", "tie", "both_bad"][:rng.randint(2, 4)]
        a = [rng.choice(cats) for _ in range(rng.randint(5, 40))]
        b = [x if rng.random() < 0.6 else rng.choice(cats) for x in a]
        if len(set(a)) == 1 and len(set(b)) == 1:
            continue
        assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    # by hand: 20 items, agree on 15; rater 1 says yes 10 times, rater 2 11 times
    a = ["y"] * 10 + ["n"] * 10
    b = ["y"] * 8 + ["n"] * 2 + ["y"] * 3 + ["n"] * 7
    po, pe = 15 / 20, (10 * 11 + 10 * 9) / 400
    assert cohen_kappa(a, b) == pytest.approx((po - pe) / (1 - pe))
    assert math.isnan(cohen_kappa(["x", "x"], ["x", "x"]))


def test_fleiss_kappa_by_hand() -> None:
    # Fleiss (1971) as worked in the Wikipedia article: 10 items, 14 raters, 5 categories
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0],
             [2, 2, 8, 1, 1], [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2],
             [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    items = [[c for c, n in enumerate(row) for _ in range(n)] for row in table]
    assert fleiss_kappa(items) == pytest.approx(0.20993, abs=1e-5)
    # two raters: Fleiss' kappa is Scott's pi (pooled marginals)
    a, b = ["x", "x", "y", "y", "x"], ["x", "y", "y", "y", "x"]
    pooled = (3 + 2) / 10
    pe = pooled ** 2 + (1 - pooled) ** 2
    assert fleiss_kappa(list(zip(a, b))) == pytest.approx((4 / 5 - pe) / (1 - pe))
    assert math.isnan(fleiss_kappa([["x"], ["y"]]))  # no item rated twice


def test_disagreement() -> None:
    assert disagreement(["left", "left"]) == 0
    assert disagreement(["left", "right"]) == pytest.approx(0.5)
    assert disagreement([]) == 0
